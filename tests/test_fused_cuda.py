"""What only a GPU can show about the fused head path (skipped without CUDA): a training step makes no host
synchronisation, captures in a CUDA graph by hand and through ``torch.compile(mode="reduce-overhead")``,
and its weight gradients are bit-identical run to run when many programs race to finish their batch splits;
bf16 at head sizes against float64."""

import copy

import pytest
import torch

from glai.nn import GLAIMLP

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICE = torch.device("cuda")


def _model(width=128, depth=2, in_f=512, out_f=10, dtype=torch.bfloat16, phase="structure", seed=0):
    torch.manual_seed(seed)
    model = GLAIMLP(in_f, [width] * depth, out_f, fused=True, device=DEVICE, dtype=dtype)
    return model if phase == "structural" else model.freeze()


def _step(model, opt, x, dy, patterns=None):
    opt.zero_grad(set_to_none=True)
    y = model(x) if patterns is None else model(x, patterns)
    y.backward(dy)
    opt.step()


@pytest.mark.parametrize("phase", ["structural", "structure", "cache"])
def test_a_step_makes_no_host_synchronisation(phase):
    model = _model(phase=phase)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(16384, 512, device=DEVICE, dtype=torch.bfloat16)
    dy = torch.randn(16384, 10, device=DEVICE, dtype=torch.bfloat16)
    patterns = model.patterns(x) if phase == "cache" else None
    _step(model, opt, x, dy, patterns)  # first call: validation, compilation, workspaces
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _step(model, opt, x, dy, patterns)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_a_step_captures_in_a_cuda_graph_by_hand():
    from bench.gpu.fused import graph_matches_eager

    x = torch.randn(4096, 512, device=DEVICE, dtype=torch.bfloat16)
    dy = torch.randn(4096, 10, device=DEVICE, dtype=torch.bfloat16)
    assert graph_matches_eager(_model(), x, dy)


def test_compile_reduce_overhead_matches_eager():
    model = _model()
    twin = copy.deepcopy(model)
    compiled = torch.compile(twin, mode="reduce-overhead", fullgraph=True)
    x = torch.randn(4096, 512, device=DEVICE, dtype=torch.bfloat16)
    for _ in range(4):
        for m in (model, twin):
            m.zero_grad(set_to_none=True)
        model(x).float().square().mean().backward()
        compiled(x).float().square().mean().backward()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-2, atol=1e-3)


def test_weight_gradients_are_bit_identical_run_to_run():
    """At batch 131072 the weight gradient splits the batch over many programs whose finishing order varies;
    the last one of each tile adds the partials in split order, so the bits never change."""
    from glai_kernels import fused_launch

    model = _model(width=128, depth=3)
    x = torch.randn(131072, 512, device=DEVICE, dtype=torch.bfloat16)
    dy = torch.randn(131072, 10, device=DEVICE, dtype=torch.bfloat16)
    grads = []
    for _ in range(3):
        model.zero_grad(set_to_none=True)
        model(x).backward(dy)
        grads.append([p.grad.clone() for p in model.parameters()])
    splits = [st["constexprs"]["SPLITS"] for k, st in fused_launch._STATIC.items() if k[0] == "grad_weights"]
    assert max(splits) > 1, "the weight gradient should split the batch here"
    for later in grads[1:]:
        for a, b in zip(grads[0], later):
            assert torch.equal(a, b)


@pytest.mark.parametrize("phase", ["structural", "structure", "cache"])
def test_bf16_head_against_float64(phase):
    """Outputs in every phase; gradients with given patterns, so that both sides gate alike (patterns computed
    in bf16 and in float64 differ where a pre-activation is within rounding of 0)."""
    model = _model(
        width=100, depth=3, in_f=300, out_f=130, phase="structural" if phase == "structural" else "q", seed=1
    )
    ref = copy.deepcopy(model).double()
    ref.fused, ref.backend = False, "torch"
    x = torch.randn(3000, 300, device=DEVICE)
    dy = torch.randn(3000, 130, device=DEVICE)
    patterns = model.patterns(x.bfloat16()) if phase == "cache" else None
    y = model(x.bfloat16(), patterns) if patterns else model(x.bfloat16())
    y_ref = ref(x.double(), patterns) if patterns else ref(x.double())

    def rel(a, b):
        return ((a.double() - b).norm() / b.norm()).item()

    assert rel(y, y_ref) < 1e-2
    if phase == "cache":
        y.backward(dy.bfloat16())
        y_ref.backward(dy.double())
        for p, q in zip(model.parameters(), ref.parameters()):
            assert rel(p.grad, q.grad) < 1e-2


def test_split_weight_gradients_on_two_streams_at_once():
    """Weight-gradient launches that split the batch, queued on two streams with nothing ordering one against
    the other, give the bits each gives alone: every launch has its own partials and counters."""
    fl = pytest.importorskip("glai_kernels.fused_launch")
    cfg = {"weights": dict(fl.resolved_config(DEVICE, None)["weights"], SPLITS=8)}
    gen = torch.Generator(device=DEVICE).manual_seed(5)
    dims, M = (300, 100, 100, 130), 65536

    def operands():
        grads = [torch.randn(M, n, device=DEVICE, generator=gen) * M**-0.5 for n in dims[1:]]
        inputs = [torch.randn(M, k, device=DEVICE, generator=gen) for k in dims[:-1]]
        return grads, inputs

    cases = [operands(), operands()]
    alone = [fl.grad_weights(g, a, [True] * 3, 0, config=cfg) for g, a in cases]
    torch.cuda.synchronize()
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    for s in streams:
        s.wait_stream(torch.cuda.current_stream())
    results = [[], []]
    for _ in range(10):
        for i, s in enumerate(streams):
            with torch.cuda.stream(s):
                results[i].append(fl.grad_weights(*cases[i], [True] * 3, 0, config=cfg))
    torch.cuda.synchronize()
    for i in range(2):
        for dws, dbs in results[i]:
            for got, want in zip(dws + dbs, alone[i][0] + alone[i][1]):
                assert torch.equal(got, want), f"stream {i}: a launch differs from the same launch alone"
