"""Dropout on the Triton paths: the in-kernel mask (rate, independence), every kernel that applies it against a
float64 reference fed the same masks (``keep_mask``), the model's steps on the per-layer and fused paths, their
repeatability, and the fused step's launch count. Under Triton's interpreter without CUDA (conftest)."""

import math

import pytest
import torch

from glai.nn import GLAIMLP
from glai_kernels import glai_mlp, reference, unit_mask

fl = pytest.importorskip("glai_kernels.fused_launch", reason="the dropout kernels need Triton")
from test_fused_training import launches  # noqa: E402, F401  (the launch-counting fixture)

from glai_kernels import per_layer_ops  # noqa: E402
from glai_kernels.dropout import draw_seed  # noqa: E402
from glai_kernels.dropout_launch import keep_mask  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TOL = {torch.float32: 2e-6, torch.float16: 2e-3}
RATES = (0.3, 0.1)


def _seed(value: int) -> torch.Tensor:
    torch.manual_seed(value)
    return draw_seed(DEVICE)


def _rel(out, ref) -> float:
    return ((out.double() - ref).norm() / ref.norm()).item()


def _within_5_sigma(hits: int, n: int, q: float) -> None:
    sigma = math.sqrt(n * q * (1 - q))
    assert abs(hits - n * q) <= 5 * sigma, f"{hits} of {n} where {n * q:.0f} +- {5 * sigma:.0f} was expected"


@pytest.mark.parametrize("p, rows, cols", [(0.1, 317, 331), (0.5, 101, 103)])  # 104,927 and 10,403 draws
def test_the_mask_keeps_1_minus_p_and_differs_across_layers_seeds_and_rows(p, rows, cols):
    seed = _seed(1)
    m0 = keep_mask(seed, 0, rows, cols, p)
    assert m0.unique().tolist() == pytest.approx([0.0, 1 / (1 - p)])
    kept = m0 > 0
    _within_5_sigma(int(kept.sum()), rows * cols, 1 - p)
    # Independent draws agree with probability p^2 + (1-p)^2: another layer, another seed, the next row.
    rows, cols = 101, 103
    kept = kept[:rows, :cols]
    same = p * p + (1 - p) ** 2
    other_layer = keep_mask(seed, 1, rows, cols, p) > 0
    _within_5_sigma(int((other_layer == kept).sum()), rows * cols, same)
    other_seed = keep_mask(_seed(2), 0, rows, cols, p) > 0
    _within_5_sigma(int((other_seed == kept).sum()), rows * cols, same)
    _within_5_sigma(int((kept[1:] == kept[:-1]).sum()), (rows - 1) * cols, same)
    # A function of (seed, layer, row, col) alone: any block of rows and columns sees the same bits.
    assert torch.equal(keep_mask(seed, 0, 50, 40, p), m0[:50, :40])
    assert torch.equal(keep_mask(seed, 0, rows, cols, 0.0), torch.ones(rows, cols, device=DEVICE))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_per_layer_kernels_apply_the_mask_after_the_gate(dtype):
    """``masked_forward`` and ``backward_data`` with dropout, outputs poisoned with NaN, against float64."""
    torch.manual_seed(0)
    M, K, N, r = 37, 45, 66, 3
    seed = _seed(3)
    h, w, b = (torch.randn(*s, device=DEVICE) for s in ((M, K), (N, K), (N,)))
    words = torch.randint(-(2**31), 2**31 - 1, (M, 1), dtype=torch.int32, device=DEVICE)
    gates = unit_mask(words, N, r).double()
    mask = keep_mask(seed, 1, M, N, 0.3).double()
    out = torch.full((M, N), float("nan"), dtype=dtype, device=DEVICE)
    per_layer_ops.masked_forward(h.to(dtype), w.to(dtype), b.to(dtype), words, r, (seed, 1, 0.3), out=out)
    ref = (h.double() @ w.double().t() + b.double()) * gates * mask
    assert _rel(out, ref) < TOL[dtype]
    g = torch.randn(M, N, device=DEVICE)
    out = torch.full((M, K), float("nan"), dtype=dtype, device=DEVICE)
    prev_words = words[:, :1]
    prev_gates = unit_mask(prev_words, K, 3).double()
    prev_mask = keep_mask(seed, 0, M, K, 0.1).double()
    per_layer_ops.backward_data(g.to(dtype), w.to(dtype), prev_words, 3, (seed, 0, 0.1), out=out)
    assert _rel(out, (g.double() @ w.double()) * prev_gates * prev_mask) < TOL[dtype]


def test_fused_kernels_apply_the_mask_forward_and_in_the_data_chain():
    """The fused forward (mode 1: patterns made pre-dropout) and data-chain launches, outputs poisoned with
    NaN, against float64 with the masks of ``keep_mask``."""
    torch.manual_seed(1)
    M, dims = 29, (13, 45, 29, 5)
    seed = _seed(4)
    x = torch.randn(M, dims[0], device=DEVICE)
    ws = [torch.randn(b, a, device=DEVICE) / a**0.5 for a, b in zip(dims[:-1], dims[1:])]
    bs = [torch.randn(n, device=DEVICE) for n in dims[1:]]
    masks = [keep_mask(seed, i, M, n, p).double() for i, (n, p) in enumerate(zip(dims[1:-1], RATES))]
    nan = lambda *s, dt=torch.float32: torch.full(s, float("nan") if dt.is_floating_point else -7, dtype=dt)  # noqa: E731
    out = (
        nan(M, dims[-1]),
        [nan(M, n) for n in dims[1:-1]],
        [nan(M, 2, dt=torch.int32), nan(M, 1, dt=torch.int32)],
    )
    y, hidden, words = fl.forward(x, ws, bs, fl.STRUCTURAL, out=out, dropout=RATES, seed=seed)
    h, ref_hidden, ref_gates = x.double(), [], []
    for w, b, m in zip(ws[:-1], bs[:-1], masks):
        z = h @ w.double().t() + b.double()
        ref_gates.append((z > 0).double())
        h = torch.relu(z) * m  # the pattern is z > 0, before the dropout
        ref_hidden.append(h)
    assert _rel(y, h @ ws[-1].double().t() + bs[-1].double()) < 2e-6
    for got, ref, n, gate in zip(hidden, ref_hidden, dims[1:-1], ref_gates):
        assert _rel(got, ref) < 2e-6
    for got, n, gate in zip(words, dims[1:-1], ref_gates):
        assert torch.equal(unit_mask(got, n, 1).double(), gate)
    dy = torch.randn(M, dims[-1])
    grads, dx = fl.grad_data(dy, ws, words, 1, 0, True, out=([nan(M, n) for n in dims[1:-1]], nan(M, dims[0])),
                             dropout=RATES, seed=seed)  # fmt: skip
    g1 = (dy.double() @ ws[2].double()) * ref_gates[1] * masks[1]
    g0 = (g1 @ ws[1].double()) * ref_gates[0] * masks[0]
    for got, ref in zip((*grads, dx), (g0, g1, g0 @ ws[0].double())):
        assert _rel(got, ref) < 2e-6


def _model(phase: str, fused: bool) -> GLAIMLP:
    torch.manual_seed(5)
    model = GLAIMLP(13, [45, 29], 5, dropout=RATES, backend="triton", fused=fused).to(DEVICE)
    return model.freeze() if phase == "quantitative" else model


@pytest.mark.parametrize(
    "phase,fused", [("structural", True), ("quantitative", True), ("quantitative", False)]
)  # fmt: skip
def test_model_steps_match_the_float64_reference_with_the_kernels_masks(phase, fused):
    """Output and every gradient of a training step, against the stack in float64 fed the patterns (made
    without dropout in the quantitative phase) and the masks drawn from the same generator state."""
    model = _model(phase, fused)
    x = torch.randn(37, 13, device=DEVICE, requires_grad=True)
    seed = _seed(11)  # what the step will draw: the generator is reset to the same state
    torch.manual_seed(11)
    y = model(x)
    grads = torch.autograd.grad(y.square().sum(), [x, *model.parameters()])
    d = lambda t: t.detach().double().requires_grad_()  # noqa: E731
    xd, ps = d(x), [d(p) for p in model.parameters()]
    ws, bs = ps[0::2], ps[1::2]
    masks = [keep_mask(seed, i, 37, n, p).double() for i, (n, p) in enumerate(zip((45, 29), RATES))]
    if phase == "structural":
        h = xd
        for w, b, m in zip(ws[:-1], bs[:-1], masks):
            h = torch.relu(h @ w.t() + b) * m
        ref = h @ ws[-1].t() + bs[-1]
    else:
        ref = reference.stack(xd, ws, bs, model.patterns(x.detach()), 1, masks)
    ref_grads = torch.autograd.grad(ref.square().sum(), [xd, *ps])
    assert _rel(y, ref) < 2e-6
    for got, want in zip(grads, ref_grads):
        assert _rel(got, want) < 5e-6


@pytest.mark.parametrize("fused", [True, False])
def test_same_generator_state_same_bits_and_a_new_step_new_bits(fused):
    model = _model("quantitative", fused)
    x = torch.randn(23, 13, device=DEVICE)
    runs = []
    for s in (7, 7):
        torch.manual_seed(s)
        y = model(x)
        runs.append((y, torch.autograd.grad(y.sum(), model.layers[0].weight)[0]))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    with torch.no_grad():
        assert not torch.equal(model(x), runs[0][0])  # the generator moved on: the next step, new masks
    model.eval()  # off in eval: nothing is drawn, the function is the undropped one
    state = torch.get_rng_state()
    assert torch.equal(model(x), model(x)) and torch.equal(torch.get_rng_state(), state)


def test_a_fused_step_with_dropout_is_still_three_launches(launches):  # noqa: F811  (the fixture)
    model = _model("quantitative", None)
    model(torch.randn(33, 13, device=DEVICE)).square().sum().backward()
    assert dict(launches) == {
        "fused_forward_kernel": 1, "fused_grad_data_kernel": 1, "fused_grad_weights_kernel": 1
    }  # fmt: skip


def test_dropout_on_the_triton_kernels_is_refused_under_torch_compile(monkeypatch):
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    w = [torch.randn(9, 6, device=DEVICE), torch.randn(4, 9, device=DEVICE)]
    x = torch.randn(12, 6, device=DEVICE)
    patterns = [torch.full((12, 1), -1, dtype=torch.int32, device=DEVICE)]
    for fused in (True, False):
        with pytest.raises(NotImplementedError, match="not supported under torch.compile"):
            glai_mlp(x, w, None, patterns, backend="triton", fused=fused, dropout=0.2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the seed lives on the device")
def test_cuda_step_with_dropout_makes_no_sync_and_a_graph_replay_draws_new_masks():
    model = GLAIMLP(64, [128, 128], 10, dropout=0.1, backend="triton").cuda().freeze()
    x = torch.randn(512, 64, device="cuda")
    static_y = None
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up: launches built, kernels compiled
            model(x).sum().backward()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.set_sync_debug_mode("error")
    try:
        model(x).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = model(x)
    outs = []
    for _ in range(2):
        graph.replay()
        outs.append(static_y.clone())
    assert not torch.equal(outs[0], outs[1])  # each replay draws a new seed from the device generator
