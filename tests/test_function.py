"""The stack autograd Function against a plain float64 autograd of the formula of docs/design.md section 1."""

import pytest
import torch

from glai_kernels import GLAIStackFunction, glai_mlp, pack_patterns, structural_patterns, unit_mask


def make_stack(widths, r, batch=(7,), seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*batch, widths[0], generator=g, dtype=dtype, requires_grad=True)
    weights = [
        (torch.randn(o, i, generator=g, dtype=dtype) / i**0.5).requires_grad_()
        for i, o in zip(widths[:-1], widths[1:])
    ]
    biases = [torch.randn(o, generator=g, dtype=dtype).requires_grad_() for o in widths[1:]]
    patterns = [pack_patterns(torch.rand(*batch, n // r, generator=g) > 0.5) for n in widths[1:-1]]
    return x, weights, biases, patterns


def formula(x, weights, biases, patterns, r):
    """docs/design.md section 1 written out with float masks, for autograd to differentiate."""
    h = x
    for i, (w, b) in enumerate(zip(weights, biases)):
        h = h @ w.t() + (0 if b is None else b)
        if i < len(patterns):
            h = h * unit_mask(patterns[i], w.shape[0], r).to(h.dtype)
    return h


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("r", [1, 2, 4])
def test_gradcheck_and_formula(depth, r):
    widths = [13] + [36, 44, 20][:depth] + [5]  # hidden widths divisible by 4, none a multiple of 32
    x, weights, biases, patterns = make_stack(widths, r, seed=depth * 10 + r)

    def f(x, *params):
        return glai_mlp(
            x, params[: len(weights)], params[len(weights) :], patterns, reduction=r, backend="torch"
        )

    assert torch.autograd.gradcheck(f, (x, *weights, *biases))
    out = f(x, *weights, *biases)
    ref = formula(x, weights, biases, patterns, r)
    torch.testing.assert_close(out, ref)
    grads = torch.autograd.grad(out.square().sum(), (x, *weights, *biases))
    refs = torch.autograd.grad(ref.square().sum(), (x, *weights, *biases))
    for a, b in zip(grads, refs):
        torch.testing.assert_close(a, b)


def test_no_input_grad_unless_asked_and_never_to_patterns():
    x, weights, biases, patterns = make_stack([6, 10, 3], 1)
    x = x.detach()
    y = glai_mlp(x, weights, biases, patterns, backend="torch")
    y.sum().backward()
    assert x.grad is None
    assert all(w.grad is not None for w in weights) and all(b.grad is not None for b in biases)
    assert not patterns[0].requires_grad


def through_function(x, weights, biases, patterns, r=1):
    """The stack autograd Function over the per-op reference (the "torch" backend of glai_mlp runs
    reference.stack instead; the Triton backend runs this Function)."""
    n = len(weights)
    return GLAIStackFunction.apply(x, "torch", r, n, *weights, *biases, *patterns)[0]  # (y, *hidden)


@pytest.mark.parametrize("r", [1, 2])
def test_torch_backend_equals_the_function_bit_for_bit(r):
    x, weights, biases, patterns = make_stack([13, 36, 44, 5], r, batch=(37,), dtype=torch.float32)
    x.data[3, 4] = float("nan")  # row 3 turns NaN in both, whatever the gates
    outs, grads = [], []
    for f in (through_function, lambda *a: glai_mlp(*a[:4], reduction=r, backend="torch")):
        y = f(x, weights, biases, patterns, r)
        outs.append(y)
        grads.append(torch.autograd.grad(y[torch.arange(37) != 3].square().sum(), (x, *weights, *biases)))
    assert torch.equal(outs[0].nan_to_num(), outs[1].nan_to_num())
    assert torch.isnan(outs[1][3]).all() and torch.isfinite(outs[1][:3]).all()
    for a, b in zip(*grads):
        assert torch.equal(a.nan_to_num(), b.nan_to_num()) and torch.equal(a.isnan(), b.isnan())


def test_function_saves_packed_patterns_not_float_masks():
    x, weights, biases, patterns = make_stack([6, 40, 3], 1, batch=(50,))
    y = through_function(x, weights, biases, patterns)
    saved = y.grad_fn.saved_tensors
    assert any(t.dtype == torch.int32 for t in saved)
    # Only the layer inputs are float: x [50, 6] and h_1 [50, 40]; weights [40, 6], [3, 40].
    floats = sorted(tuple(t.shape) for t in saved if t.is_floating_point())
    assert floats == sorted([(50, 6), (50, 40), (40, 6), (3, 40)])


def test_leading_dimensions_and_no_bias():
    x, weights, _, patterns = make_stack([5, 9, 4], 1, batch=(2, 3))
    y = glai_mlp(x, weights, None, patterns, backend="torch")
    assert y.shape == (2, 3, 4)
    ref = formula(x.reshape(6, 5), weights, [None, None], [p.reshape(6, -1) for p in patterns], 1)
    torch.testing.assert_close(y.reshape(6, 4), ref)


def test_structural_patterns_match_relu_firing():
    x, weights, biases, _ = make_stack([8, 33, 17, 2], 1, batch=(11,))
    pats = structural_patterns(x, weights[:2], biases[:2], backend="torch")
    a = x
    for p, w, b in zip(pats, weights, biases):
        z = a @ w.t() + b
        assert torch.equal(p, pack_patterns(z > 0))
        a = torch.relu(z)


def test_autocast_runs_in_low_precision_and_keeps_fp32_grads():
    x, weights, biases, patterns = make_stack([8, 16, 3], 1, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = glai_mlp(x, weights, biases, patterns, backend="torch")
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert weights[0].grad.dtype == torch.float32
    ref = formula(x, weights, biases, patterns, 1)
    assert ((y.float() - ref).norm() / ref.norm()).item() < 2e-2


def test_argument_errors_name_expected_and_got():
    x, weights, biases, patterns = make_stack([6, 10, 3], 1)
    with pytest.raises(ValueError, match="expected patterns for 1 hidden layers, got 0"):
        glai_mlp(x, weights, biases, [])
    with pytest.raises(ValueError, match=r"patterns\[0\] must have shape \(7, 1\)"):
        glai_mlp(x, weights, biases, [patterns[0][:3]])
    with pytest.raises(TypeError, match="int32"):
        glai_mlp(x, weights, biases, [patterns[0].long()])
    with pytest.raises(TypeError, match="dtype"):
        glai_mlp(x.float(), weights, biases, patterns)
    with pytest.raises(ValueError, match="backend must be one of"):
        glai_mlp(x, weights, biases, patterns, backend="cuda")
    with pytest.raises(ValueError, match=r"weights\[1\] must take 10 inputs"):
        glai_mlp(x, [weights[0], weights[1].t()], None, patterns)
    with pytest.raises(ValueError, match="reduction=3 must divide"):
        glai_mlp(x, weights, biases, patterns, reduction=3)


def test_backward_stops_where_no_layer_below_needs_a_gradient(monkeypatch):
    """With the first layers frozen and no input gradient, the data gradient is not carried below the lowest
    trainable layer: one backward_data call (into layer 2) for a 3-layer stack whose layer 0 is frozen."""
    from glai_kernels import reference

    x, weights, biases, patterns = make_stack([6, 8, 12, 3], 1)
    x = x.detach()
    weights[0].requires_grad_(False)
    biases[0].requires_grad_(False)
    calls = []
    real = reference.backward_data
    monkeypatch.setattr(reference, "backward_data", lambda *a: calls.append(a[1].shape) or real(*a))
    y = through_function(x, weights, biases, patterns)
    y.square().sum().backward()
    assert calls == [weights[2].shape]  # g_1 = (g_2 W_2) * p_1 only; nothing below reaches layer 0
    assert weights[0].grad is None and weights[1].grad is not None
    refs = torch.autograd.grad(
        formula(x, weights, biases, patterns, 1).square().sum(), weights[1:] + biases[1:]
    )
    for got, want in zip(weights[1:] + biases[1:], refs):
        torch.testing.assert_close(got.grad, want)
