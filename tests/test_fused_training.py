"""The fused head path as a user meets it: training steps equal the per-layer and torch paths in both phases,
a step is one forward launch and at most two backward launches whatever the depth, the ``fused=`` rule, the
validation memo and ``torch.compile``. Without CUDA the kernels run under Triton's interpreter (conftest)."""

import collections
import copy

import pytest
import torch
import torch.nn.functional as F

from glai.nn import GLAIMLP
from glai_kernels import glai_mlp

fl = pytest.importorskip("glai_kernels.fused_launch", reason="the fused kernels need Triton")
from glai_kernels import dispatch, fused_table, per_layer_ops  # noqa: E402
from glai_kernels.signature import Verdicts  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
FUSED_KERNELS = ("fused_forward_kernel", "fused_grad_data_kernel", "fused_grad_weights_kernel")
PER_LAYER_KERNELS = ("gate_kernel", "masked_matmul_kernel", "weight_grad_kernel")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    yield
    torch._dynamo.reset()


class _Counting:
    """Stands in for a JIT function: counts each ``kernel[grid](...)`` launch, then launches."""

    def __init__(self, kernel, name, counts):
        self.kernel, self.name, self.counts = kernel, name, counts

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.counts[self.name] += 1
            return self.kernel[grid](*args, **kwargs)

        return run


@pytest.fixture
def launches(monkeypatch):
    counts = collections.Counter()
    for module, names in ((fl, FUSED_KERNELS), (per_layer_ops, PER_LAYER_KERNELS)):
        for name in names:
            monkeypatch.setattr(module, name, _Counting(getattr(module, name), name, counts))
    return counts


def _trio(hidden, r, bias, seed, phase):
    """The same model on the torch backend, the per-layer Triton path and the fused path."""
    torch.manual_seed(seed)
    base = GLAIMLP(13, hidden, 5, reduction=r, bias=bias, backend="torch").to(DEVICE)
    if phase != "structural":
        base.freeze()
    per_layer, fused_ = copy.deepcopy(base), copy.deepcopy(base)
    per_layer.backend, per_layer.fused = "triton", False
    fused_.backend, fused_.fused = "triton", True
    return base, per_layer, fused_


def _close(a, b, what):
    torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-6, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize(
    "phase,hidden,r,bias,batch,x_grad",
    [
        ("structural", [33, 17], 1, True, 33, True),
        ("structural", [100, 36], 2, False, 40, False),
        ("structure", [100], 4, True, 1, True),
        ("cache", [36, 36, 36], 2, True, 33, False),
        ("frozen-first", [33, 17], 1, True, 33, False),
    ],
)
def test_training_steps_agree_across_paths(phase, hidden, r, bias, batch, x_grad):
    """Three SGD-with-momentum steps: losses, input gradients and parameters agree on the torch backend, the
    per-layer kernels and the fused path. ``structure``: patterns from the frozen structure in the same launch;
    ``cache``: given patterns; ``frozen-first``: a first layer without gradient stops the data chain."""
    models = _trio(hidden, r, bias, seed=len(hidden) * 10 + r, phase=phase)
    if phase == "frozen-first":
        for m in models:
            m.layers[0].requires_grad_(False)
    opts = [
        torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.05, momentum=0.9) for m in models
    ]
    gen = torch.Generator().manual_seed(r)
    for step in range(3):
        x = torch.randn(batch, 13, generator=gen).to(DEVICE)
        target = torch.randn(batch, 5, generator=gen).to(DEVICE)
        patterns = models[0].patterns(x) if phase == "cache" else None
        results = []
        for m, opt in zip(models, opts):
            xi = x.clone().requires_grad_(x_grad)
            opt.zero_grad()
            loss = F.mse_loss(m(xi) if patterns is None else m(xi, patterns), target)
            loss.backward()
            opt.step()
            results.append((loss.detach(), xi.grad))
        for (loss, xg), name in zip(results[1:], ("per-layer", "fused")):
            _close(loss, results[0][0], f"{name} loss at step {step}")
            if x_grad:
                _close(xg, results[0][1], f"{name} input gradient at step {step}")
    for (name, p), q, s in zip(models[0].named_parameters(), models[1].parameters(), models[2].parameters()):
        _close(q, p, f"per-layer {name}")
        _close(s, p, f"fused {name}")


@pytest.mark.parametrize(
    "phase,hidden",
    [
        ("structural", [17]),
        ("structure", [17, 33, 36, 20]),
        ("cache", [33, 17, 20]),
        ("frozen-first", [17, 20]),
    ],
)
def test_a_step_is_three_launches_whatever_the_depth(launches, phase, hidden):
    """Forward: one launch. Backward: the data chain and the grouped weight gradient (only the latter when no
    layer below the output one wants a gradient). No per-layer kernel runs."""
    model = GLAIMLP(7, hidden, 10, reduction=1, backend="triton").to(DEVICE)
    if phase != "structural":
        model.freeze()
    if phase == "frozen-first":
        for layer in model.layers[:-1]:
            layer.requires_grad_(False)
    x = torch.randn(33, 7, device=DEVICE)
    patterns = model.patterns(x) if phase == "cache" else None
    launches.clear()
    y = model(x) if patterns is None else model(x, patterns)
    assert dict(launches) == {"fused_forward_kernel": 1}
    y.square().sum().backward()
    expected = {"fused_forward_kernel": 1, "fused_grad_weights_kernel": 1}
    if phase != "frozen-first":
        expected["fused_grad_data_kernel"] = 1
    assert dict(launches) == expected


def test_auto_rule(launches, monkeypatch):
    """fused=None: the fused path on the triton backend when the widths fit the device's limit, the per-layer
    kernels when a width is over it, and the torch reference (no launch) on the torch backend. (The limit is
    lowered to 32 here, which keeps the interpreter's work small; the rule is the same at 512.)"""
    monkeypatch.setattr(
        dispatch, "_fused_width", lambda device, dtype, precision, mode: (32, "the test's case")
    )
    monkeypatch.setattr(dispatch, "_PLANS", Verdicts())
    x = torch.randn(5, 7, device=DEVICE)
    for hidden, backend, expect in (
        ([32, 17], "triton", "fused"),
        ([17, 33], "triton", "per-layer"),
        ([17], "torch", "none"),
    ):
        model = GLAIMLP(7, hidden, 3, backend=backend).to(DEVICE).freeze()
        launches.clear()
        model(x).sum().backward()
        used = {name for name in launches}
        assert bool(used & set(FUSED_KERNELS)) == (expect == "fused"), (hidden, backend, dict(launches))
        assert bool(used & set(PER_LAYER_KERNELS)) == (expect == "per-layer"), (
            hidden,
            backend,
            dict(launches),
        )


def test_forcing_the_fused_path_names_the_limit():
    too_wide = fused_table.MAX_WIDTH + 44
    with pytest.raises(ValueError, match=f"up to {fused_table.MAX_WIDTH}, got hidden width {too_wide}"):
        GLAIMLP(7, [17, too_wide], 3, fused=True)
    with pytest.raises(TypeError, match="fused must be None"):
        GLAIMLP(7, [17], 3, fused="yes")
    x = torch.randn(5, 7, device=DEVICE)
    with pytest.raises(ValueError, match="fused=True: the fused path runs on the 'triton' backend"):
        GLAIMLP(7, [17], 3, backend="torch", fused=True)(x)
    w = [torch.randn(17, 7, device=DEVICE), torch.randn(3, 17, device=DEVICE)]
    p = [torch.zeros(5, 1, dtype=torch.int32, device=DEVICE)]
    with pytest.raises(ValueError, match="float32, float16 or bfloat16 operands, got torch.float64"):
        glai_mlp(x.double(), [t.double() for t in w], None, p, backend="triton", fused=True)
    with pytest.raises(ValueError, match="at least one hidden layer"):
        glai_mlp(x, w[:1], None, [], backend="triton", fused=True)
    # Auto leaves float64 to the per-layer path, which computes it exactly.
    y = glai_mlp(x.double(), [t.double() for t in w], None, p, backend="triton")
    torch.testing.assert_close(y, glai_mlp(x.double(), [t.double() for t in w], None, p, backend="torch"))


def test_validation_runs_once_per_signature(monkeypatch):
    calls = []
    validate = dispatch._validate
    monkeypatch.setattr(dispatch, "_validate", lambda *a: calls.append(1) or validate(*a))
    dispatch._PLANS.clear()
    model = GLAIMLP(7, [17], 3, backend="triton").to(DEVICE)
    x = torch.randn(9, 7, device=DEVICE)
    for _ in range(3):
        model(x)
    assert len(calls) == 1
    model(torch.randn(10, 7, device=DEVICE))  # another batch size: another signature
    model(torch.randn(7, 9, device=DEVICE).t())  # other strides
    assert len(calls) == 3
    # A bad input still gets the per-layer path's error, from the same checks.
    with pytest.raises(ValueError, match=r"patterns\[0\] must have shape"):
        model.freeze()(x, [torch.zeros(9, 2, dtype=torch.int32, device=DEVICE)])


def test_compile_sees_one_custom_op_per_launch():
    """Under torch.compile the forward graph holds one fused_forward node and the backward graph one
    fused_grad_data and one fused_grad_weights node; the compiled step matches eager. (Inductor codegen runs on
    a GPU only: the interpreter cannot give fake tensors a data pointer.)"""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    graphs = []

    def keep(gm, _):
        graphs.append(gm)
        return make_boxed_func(gm)

    model = GLAIMLP(13, [33, 17], 5, backend="triton").to(DEVICE).freeze()
    x = torch.randn(33, 13, device=DEVICE)
    compiled = torch.compile(model, backend=aot_autograd(fw_compiler=keep, bw_compiler=keep), fullgraph=True)
    results = []
    for m in (model, compiled):
        model.zero_grad(set_to_none=True)
        y = m(x)
        y.square().sum().backward()
        results.append((y.detach(), [p.grad.clone() for p in model.parameters()]))
    for a, b in zip([results[0][0], *results[0][1]], [results[1][0], *results[1][1]]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    targets = [[str(n.target) for n in g.graph.nodes if n.op == "call_function"] for g in graphs]
    fused_nodes = [[t for t in ts if "glai.fused" in t] for ts in targets]
    assert fused_nodes == [
        ["glai.fused_forward.default"],
        ["glai.fused_grad_data.default", "glai.fused_grad_weights.default"],
    ]


def test_autocast_and_leading_dims():
    """Under bf16 autocast the fused stack runs in bf16 and fp32 master weights get fp32 gradients; inputs of
    shape (*, in) keep their leading dimensions."""
    base, _, twin = _trio([33, 17], 1, True, seed=3, phase="structure")
    x = torch.randn(3, 11, 13, device=DEVICE)
    outs, grads = [], []
    for m in (base, twin):
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            y = m(x)
        y.float().square().mean().backward()
        outs.append(y)
        grads.append([p.grad for p in m.parameters()])
    assert outs[1].dtype == torch.bfloat16 and outs[1].shape == (3, 11, 5)
    torch.testing.assert_close(outs[1].float(), outs[0].float(), rtol=2e-2, atol=2e-2)
    for g_ref, g in zip(*grads):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, g_ref, rtol=5e-2, atol=5e-2)


def test_glai_mlp_with_given_patterns_and_leading_dims():
    torch.manual_seed(8)
    dims = (13, 36, 20, 5)
    ws = [torch.randn(b, a, device=DEVICE) / a**0.5 for a, b in zip(dims[:-1], dims[1:])]
    bs = [torch.randn(b, device=DEVICE) for b in dims[1:]]
    x = torch.randn(2, 5, 13, device=DEVICE)
    patterns = [
        torch.randint(-(2**31), 2**31 - 1, (2, 5, 1), dtype=torch.int32, device=DEVICE) for _ in range(2)
    ]
    outs = [
        glai_mlp(x, ws, bs, patterns, reduction=2, backend=b, fused=f)
        for b, f in (("torch", None), ("triton", True))
    ]
    assert outs[1].shape == (2, 5, 5)
    torch.testing.assert_close(outs[1], outs[0], rtol=2e-5, atol=2e-6)


def test_empty_batch():
    model = GLAIMLP(7, [17], 3, backend="triton", fused=True).to(DEVICE)
    y = model(torch.randn(0, 7, device=DEVICE))
    assert y.shape == (0, 3)
    y.sum().backward()
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
