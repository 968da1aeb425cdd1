"""torch.func over the quantitative phase: grad, vmap and jacrev against the ReLU MLP the block equals at the
freeze (reduction 1: the patterns are the MLP's own firing), and double backward against float64 numerics."""

import pytest
import torch
from torch.func import functional_call, grad, jacrev, vmap

from glai import GLAIMLP
from glai.train import plain_mlp
from glai_kernels import glai_mlp, pack_patterns, triton_available, unit_mask

DT = torch.float64


def frozen_pair(seed=0, hidden=(13, 9)):
    """A frozen GLAIMLP (torch backend) and the ReLU MLP with the same weights: equal functions."""
    torch.manual_seed(seed)
    model = GLAIMLP(5, list(hidden), 3, backend="torch", dtype=DT).freeze()
    mlp = plain_mlp(5, hidden, 3).to(DT)
    linears = [m for m in mlp if isinstance(m, torch.nn.Linear)]
    for ours, theirs in zip(model.layers, linears):
        theirs.load_state_dict(ours.state_dict())
    return model, mlp


def relu_params(model):
    """The frozen model's parameters under the ReLU MLP's names (layers 0, 2, 4, ...)."""
    return {
        f"{2 * i}.{kind}": getattr(layer, kind)
        for i, layer in enumerate(model.layers)
        for kind in ("weight", "bias")
    }


def formula(x, weights, biases, patterns):
    """docs/design.md section 1 with float masks, for autograd to differentiate."""
    h = x
    for i, (w, b) in enumerate(zip(weights, biases)):
        h = h @ w.t() + b
        if i < len(patterns):
            h = h * unit_mask(patterns[i], w.shape[0]).to(h.dtype)
    return h


def test_grad_matches_the_relu_mlp_at_the_freeze():
    model, mlp = frozen_pair()
    x = torch.randn(11, 5, dtype=DT)
    params = dict(model.named_parameters())

    def loss(p, x):
        return functional_call(model, p, (x,)).square().sum()

    def loss_mlp(p, x):
        return functional_call(mlp, p, (x,)).square().sum()

    ours = grad(loss)(params, x)
    theirs = grad(loss_mlp)(relu_params(model), x)
    for name, g in ours.items():
        i, kind = name.split(".")[1:]
        torch.testing.assert_close(g, theirs[f"{2 * int(i)}.{kind}"])
    torch.testing.assert_close(
        grad(loss, argnums=1)(params, x), grad(loss_mlp, argnums=1)(relu_params(model), x)
    )


def test_vmap_per_sample_grads_over_a_batch_of_inputs():
    model, mlp = frozen_pair(1)
    xs = torch.randn(6, 5, dtype=DT)
    params = dict(model.named_parameters())

    def loss(p, x):  # one sample: x of shape (5,)
        return functional_call(model, p, (x,)).square().sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0))(params, xs)
    for k in range(xs.shape[0]):
        one = grad(lambda p: functional_call(mlp, p, (xs[k],)).square().sum())(relu_params(model))
        for name, g in per_sample.items():
            i, kind = name.split(".")[1:]
            torch.testing.assert_close(g[k], one[f"{2 * int(i)}.{kind}"])


def test_vmap_over_patterns_and_over_weights():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(7, 5, dtype=DT, generator=g)
    weights = [torch.randn(o, i, dtype=DT, generator=g) for i, o in ((5, 12), (12, 8), (8, 3))]
    biases = [torch.randn(o, dtype=DT, generator=g) for o in (12, 8, 3)]
    # Four pattern sets for the same inputs, vmapped at dimension 1 of the packed words.
    sets = [pack_patterns(torch.rand(7, 4, n, generator=g) > 0.5) for n in (12, 8)]
    out = vmap(lambda p, q: glai_mlp(x, weights, biases, [p, q], backend="torch"), in_dims=1)(*sets)
    assert out.shape == (4, 7, 3)
    for k in range(4):
        torch.testing.assert_close(out[k], formula(x, weights, biases, [s[:, k] for s in sets]))
    # An ensemble of three weight sets, the same patterns.
    patterns = [s[:, 0] for s in sets]
    stacked = [torch.randn(3, *w.shape, dtype=DT, generator=g) for w in weights]
    out = vmap(lambda *ws: glai_mlp(x, ws, biases, patterns, backend="torch"))(*stacked)
    for k in range(3):
        torch.testing.assert_close(out[k], formula(x, [w[k] for w in stacked], biases, patterns))


def test_jacrev_matches_the_relu_mlp():
    model, mlp = frozen_pair(3)
    x = torch.randn(4, 5, dtype=DT)
    ours = jacrev(model)(x)
    assert ours.shape == (4, 3, 4, 5)
    torch.testing.assert_close(ours, jacrev(mlp)(x))
    # Against the weights too: the Jacobian of the outputs with respect to the first layer's weight.
    params = dict(model.named_parameters())
    ours = jacrev(lambda p: functional_call(model, p, (x,)))(params)["layers.0.weight"]
    theirs = jacrev(lambda p: functional_call(mlp, p, (x,)))(relu_params(model))["0.weight"]
    torch.testing.assert_close(ours, theirs)


def test_double_backward_on_the_torch_backend():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, 4, dtype=DT, generator=g, requires_grad=True)
    weights = [torch.randn(o, i, dtype=DT, generator=g).requires_grad_() for i, o in ((4, 9), (9, 7), (7, 2))]
    biases = [torch.randn(o, dtype=DT, generator=g).requires_grad_() for o in (9, 7, 2)]
    patterns = [pack_patterns(torch.rand(6, n, generator=g) > 0.5) for n in (9, 7)]

    def f(x, *p):
        return glai_mlp(x, p[:3], p[3:], patterns, backend="torch")

    # Second derivatives cross layers through the saved hidden outputs: all of them are checked.
    assert torch.autograd.gradgradcheck(f, (x, *weights, *biases))

    # The full Hessian of a loss nonlinear in y: its cross-layer blocks need the gradient reaching y and
    # the hidden outputs in the same backward call.
    def loss(ws, f):
        return f(x.detach(), *ws, *biases).square().sum()

    hessian = jacrev(jacrev(loss))([w.detach() for w in weights], f)
    reference = jacrev(jacrev(loss))(
        [w.detach() for w in weights], lambda x, *p: formula(x, p[:3], p[3:], patterns)
    )
    for row, ref_row in zip(hessian, reference):
        for block, ref_block in zip(row, ref_row):
            torch.testing.assert_close(block, ref_block)


@pytest.mark.skipif(not triton_available(), reason="Triton kernels unavailable")
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "per-layer"])
def test_double_backward_on_the_triton_backend_says_it_is_unsupported(fused):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(7, 5, generator=g)
    weights = [
        torch.randn(12, 5, generator=g).requires_grad_(),
        torch.randn(3, 12, generator=g).requires_grad_(),
    ]
    patterns = [pack_patterns(torch.rand(7, 12, generator=g) > 0.5)]
    y = glai_mlp(x, weights, None, patterns, backend="triton", fused=fused)
    (dw,) = torch.autograd.grad(y.square().sum(), weights[0], create_graph=True)
    ref = formula(x, weights, [0, 0], patterns)
    (dw_ref,) = torch.autograd.grad(ref.square().sum(), weights[0])
    torch.testing.assert_close(dw.detach(), dw_ref, rtol=1e-4, atol=1e-4)  # first order stays right
    with pytest.raises(
        RuntimeError, match="double backward through the GLAI stack is supported on the .torch. backend only"
    ):
        dw.square().sum().backward()
