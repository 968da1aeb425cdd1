"""Checks remembered per call signature (``glai_kernels.signature``): a changed signature is checked again in
full, a wrong call raises the same error after any number of good ones, and the memos stay bounded.

Every path that remembers a verdict runs here: the torch backend, the per-layer Triton kernels and the fused
path (Triton's interpreter without CUDA), each with PyTorch's tensor guard and with the Python key."""

import pytest
import torch

from glai import resize
from glai.nn import GLAIMLP
from glai_kernels import dispatch, glai_mlp, pack_patterns, signature

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
PATHS = [("torch", None), ("triton", False), ("triton", True)]  # backend, fused
PATH_IDS = ["torch", "per-layer", "fused"]
KEYS = [True, False] if signature.TensorGuards is not None else [False]


@pytest.fixture(params=KEYS, ids=lambda g: "tensor-guard" if g else "python-key")
def memo(request, monkeypatch):
    verdicts = signature.Verdicts(guards=request.param)
    monkeypatch.setattr(dispatch, "_PLANS", verdicts)
    return verdicts


@pytest.fixture
def validations(monkeypatch):
    calls = []
    validate = dispatch._validate
    monkeypatch.setattr(dispatch, "_validate", lambda *a: calls.append(1) or validate(*a))
    return calls


def _stack(batch=5, dims=(7, 7, 7), seed=0):
    """A stack whose weights all have one shape, so that they can also be stacked into one tensor."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dims[0], generator=g).to(DEVICE)
    ws = [(torch.randn(b, a, generator=g) / a**0.5).to(DEVICE) for a, b in zip(dims[:-1], dims[1:])]
    bs = [torch.randn(b, generator=g).to(DEVICE) for b in dims[1:]]
    ps = [pack_patterns(torch.rand(batch, n, generator=g) > 0.5).to(DEVICE) for n in dims[1:-1]]
    return x, ws, bs, ps


def _error(call) -> tuple:
    with pytest.raises(Exception) as info:
        call()
    return info.type, str(info.value)


BAD = {  # what replaces the good call's arguments
    "input of another width": lambda x, ws, bs, ps: dict(x=torch.randn(5, 8, device=DEVICE)),
    "input of another dtype": lambda x, ws, bs, ps: dict(x=x.double()),
    "weight of another dtype": lambda x, ws, bs, ps: dict(ws=[ws[0], ws[1].double()]),
    "bias of another shape": lambda x, ws, bs, ps: dict(bs=[bs[0], bs[1][:3]]),
    "patterns of another batch": lambda x, ws, bs, ps: dict(ps=[p[:4] for p in ps]),
    "patterns of another dtype": lambda x, ws, bs, ps: dict(ps=[p.long() for p in ps]),
    # Iterating these gives tensors of the good call's shapes: no signature may be read off them.
    "weights stacked into one tensor": lambda x, ws, bs, ps: dict(ws=torch.stack(ws)),
    "patterns stacked into one tensor": lambda x, ws, bs, ps: dict(ps=torch.stack(ps)),
    "patterns on another device": lambda x, ws, bs, ps: dict(ps=[p.to("meta") for p in ps]),
}


@pytest.mark.parametrize("backend, fused_", PATHS, ids=PATH_IDS)
def test_a_wrong_call_after_good_ones_raises_the_error_of_a_first_call(memo, backend, fused_):
    x, ws, bs, ps = _stack()

    def call(x=x, ws=ws, bs=bs, ps=ps):
        return glai_mlp(x, ws, bs, ps, backend=backend, fused=fused_)

    expected = {}
    for name, bad in BAD.items():
        memo.clear()
        expected[name] = _error(lambda: call(**bad(x, ws, bs, ps)))
    y = call()
    for name, bad in BAD.items():
        for _ in range(2):  # nothing is remembered of a wrong call either
            assert _error(lambda: call(**bad(x, ws, bs, ps))) == expected[name], name
        torch.testing.assert_close(call(), y)  # and the good one still runs
    # Other strides are another signature: the same values give the same output.
    x_t = x.t().contiguous().t()
    assert x_t.stride() != x.stride()
    torch.testing.assert_close(call(x=x_t), y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend, fused_", PATHS, ids=PATH_IDS)
def test_parameters_resized_in_place_by_freeze_are_checked_again(memo, backend, fused_):
    """freeze() with reduction 2 resizes the trainable Parameters in place (the same objects): a call with
    them and the structural phase's patterns was right before and is wrong after (66 units need 3 words a row,
    the 33 structural ones 2), and the right call after it computes with the new shapes."""
    torch.manual_seed(1)
    model = GLAIMLP(7, [66], 3, reduction=2, backend=backend, fused=fused_).to(DEVICE)
    x = torch.randn(5, 7, device=DEVICE)
    weights, biases = [m.weight for m in model.layers], [m.bias for m in model.layers]
    structural = model.patterns(x)
    assert structural[0].shape == (5, 2)
    glai_mlp(x, weights, biases, structural, backend=backend, fused=fused_)
    model.freeze()
    assert weights[0] is model.layers[0].weight and weights[0].shape == (66, 7)
    with pytest.raises(ValueError, match=r"patterns\[0\] must have shape \(5, 3\)"):
        glai_mlp(x, weights, biases, structural, backend=backend, fused=fused_)
    y = glai_mlp(x, weights, biases, model.patterns(x), reduction=2, backend=backend, fused=fused_)
    expected = glai_mlp(x, weights, biases, model.patterns(x), reduction=2, backend="torch")
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-6)
    # One weight resized alone: its bias and the next layer no longer match it.
    resize.resize_(weights[0], torch.randn(64, 7, device=DEVICE))
    with pytest.raises(ValueError, match=r"biases\[0\] must have shape \(64,\), got shape \(66,\)"):
        glai_mlp(x, weights, biases, model.patterns(x), reduction=2, backend=backend, fused=fused_)


@pytest.mark.parametrize("backend, fused_", PATHS, ids=PATH_IDS)
def test_a_dtype_change_is_checked_again(memo, backend, fused_):
    x, ws, bs, ps = _stack()
    glai_mlp(x, ws, bs, ps, backend=backend, fused=fused_)
    with pytest.raises(TypeError, match="weights\\[0\\] must have the input's dtype torch.float64"):
        glai_mlp(x.double(), ws, bs, ps, backend=backend, fused=fused_)
    args = (x.double(), [w.double() for w in ws], [b.double() for b in bs], ps)
    if fused_:
        with pytest.raises(ValueError, match="float32, float16 or bfloat16 operands, got torch.float64"):
            glai_mlp(*args, backend=backend, fused=fused_)
        return
    y = glai_mlp(*args, backend=backend, fused=fused_)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, glai_mlp(*args, backend="torch"))


@pytest.mark.parametrize("backend, fused_", PATHS, ids=PATH_IDS)
def test_autocast_switched_on_and_off_is_another_signature(memo, validations, backend, fused_):
    x, ws, bs, ps = _stack(dims=(7, 33, 5))
    params = [t.clone().requires_grad_() for t in ws + bs]
    ws, bs = params[:2], params[2:]
    outs = []
    for on in (False, False, True, True, False):
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=on):
            y = glai_mlp(x, ws, bs, ps, backend=backend, fused=fused_)
        y.float().sum().backward()
        assert y.dtype == (torch.bfloat16 if on else torch.float32)
        assert all(p.grad.dtype == torch.float32 for p in params)
        outs.append(y.float())
    assert len(validations) == 2  # once without autocast, once with it
    torch.testing.assert_close(outs[4], outs[0])
    torch.testing.assert_close(outs[2], outs[0], rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("guards", KEYS, ids=lambda g: "tensor-guard" if g else "python-key")
def test_the_memo_is_bounded_in_a_loop_over_batch_sizes(monkeypatch, validations, guards):
    """At most ``size`` layouts and ``per_layout`` signatures under each (the tensor guard), or ``size``
    signatures (the Python key): the most recent are remembered, an older one is checked again."""
    memo = signature.Verdicts(size=4, per_layout=4, guards=guards)
    monkeypatch.setattr(dispatch, "_PLANS", memo)
    x, ws, bs, ps = _stack(batch=60)
    for batch in range(1, 61):
        glai_mlp(x[:batch], ws, bs, [p[:batch] for p in ps], backend="torch")
    assert len(validations) == 60 and len(memo) == 4
    glai_mlp(x[:60], ws, bs, [p[:60] for p in ps], backend="torch")
    assert len(validations) == 60
    glai_mlp(x[:1], ws, bs, [p[:1] for p in ps], backend="torch")
    assert len(validations) == 61 and len(memo) == 4
    # Another layout (no biases) is another entry; past `size` of them the oldest goes.
    for depth in range(2, 8):
        dims = (7,) * (depth + 1)
        xd, wd, _, pd = _stack(dims=dims)
        glai_mlp(xd, wd, None, pd, backend="torch")
    assert len(memo) <= 4 * 4 and len(memo._memo) == 4


def test_the_fused_launch_memos_are_bounded_in_a_loop_over_batch_sizes(monkeypatch):
    """The launches' shape memo keeps at most MEMO_SIZE entries, and no launch keeps a workspace: the weight
    gradient's split-combine workspace lives for one launch. (Launches are stubbed: only the host side runs.)"""
    fl = pytest.importorskip("glai_kernels.fused_launch", reason="the fused kernels need Triton")
    monkeypatch.setattr(fl, "launch_fused", lambda *args, **kwargs: None)
    monkeypatch.setattr(fl, "_STATIC", {})
    monkeypatch.setattr(dispatch, "_PLANS", signature.Verdicts())
    config = fl.resolved_config(DEVICE, None)
    monkeypatch.setitem(fl._CONFIGS, DEVICE, {**config, "weights": {**config["weights"], "SPLITS": 2}})
    model = GLAIMLP(7, [17], 3, backend="triton", fused=True).to(DEVICE)
    x = torch.randn(signature.MEMO_SIZE + 40, 7, device=DEVICE)
    first = config["weights"]["BLOCK_K"] + 1  # from here on two batch splits
    for batch in range(first, x.shape[0] + 1):
        model(x[:batch]).sum().backward()
    assert len(fl._STATIC) <= signature.MEMO_SIZE
    assert all(st["ws_floats"] > 0 for k, st in fl._STATIC.items() if k[0] == "grad_weights")
    splits = {st["constexprs"]["SPLITS"] for k, st in fl._STATIC.items() if k[0] == "grad_weights"}
    assert splits == {2}


def test_the_per_layer_launch_plans_are_bounded_in_a_loop_over_batch_sizes(monkeypatch):
    """The per-layer kernels' plans (one per call signature) keep at most MEMO_SIZE entries. (Launches are
    stubbed: only the host side runs.)"""
    tl = pytest.importorskip("glai_kernels.per_layer_launch", reason="the per-layer kernels need Triton")
    monkeypatch.setattr(tl, "launch_plan", lambda *args, **kwargs: None)
    monkeypatch.setattr(tl, "LAUNCH_PLANS", {})
    from glai_kernels import per_layer_ops

    w = torch.randn(16, 7, device=DEVICE)
    x = torch.randn(signature.MEMO_SIZE + 40, 7, device=DEVICE)
    for batch in range(1, x.shape[0] + 1):
        per_layer_ops.masked_forward(x[:batch], w, None, None, 1)
    assert len(tl.LAUNCH_PLANS) == signature.MEMO_SIZE


@pytest.mark.parametrize("backend, fused_", [PATHS[0], PATHS[2]], ids=["torch", "fused"])
def test_the_model_reads_its_parameters_at_every_call(backend, fused_):
    """Nothing is cached in GLAIMLP: a new Parameter, functional_call's tensors and a parametrized layer are
    what the next call computes with."""
    torch.manual_seed(2)
    model = GLAIMLP(7, [17], 3, backend=backend, fused=fused_).to(DEVICE).freeze()
    x = torch.randn(5, 7, device=DEVICE)
    patterns = model.patterns(x)
    model(x, patterns)

    def expected(w_last):
        w = [m.weight for m in model.layers[:-1]] + [w_last]
        b = [m.bias for m in model.layers]
        return glai_mlp(x, w, b, patterns, backend="torch")

    new = torch.nn.Parameter(torch.randn(3, 17, device=DEVICE))
    model.layers[-1].weight = new
    torch.testing.assert_close(model(x, patterns), expected(new))
    swapped = torch.randn(3, 17, device=DEVICE)
    y = torch.func.functional_call(model, {"layers.1.weight": swapped}, (x, patterns))
    torch.testing.assert_close(y, expected(swapped))
    torch.testing.assert_close(model(x, patterns), expected(new))

    class Double(torch.nn.Module):
        def forward(self, w):
            return 2 * w

    torch.nn.utils.parametrize.register_parametrization(model.layers[-1], "weight", Double())
    torch.testing.assert_close(model(x, patterns), expected(2 * new))
