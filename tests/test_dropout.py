"""``GLAIMLP(dropout=...)``: the API, and the ``"torch"`` backend against ``nn.Dropout`` after each ReLU.

The Triton paths (per-layer and fused), whose masks are drawn in the kernels, are tested in
``tests/test_dropout_kernels.py``.
"""

import pytest
import torch
from torch import nn

from glai import GLAIMLP
from glai_kernels import glai_mlp, unpack_patterns


def _mlp_like(model: GLAIMLP, rates) -> nn.Sequential:
    """``nn.Sequential(Linear, ReLU, Dropout(p), ..., Linear)`` sharing ``model``'s Parameters."""
    parts = []
    for layer, p in zip(model.layers[:-1], rates):
        parts += [layer, nn.ReLU(), nn.Dropout(p)]
    return nn.Sequential(*parts, model.layers[-1])


def _gated_like(model: GLAIMLP, rates):
    """The quantitative phase by hand: ``h_l = F.dropout(p_l * (W_l h + b_l))`` with the frozen patterns, which
    the structural net makes without dropout (so from layer 2 on they differ from a ReLU after dropout)."""

    def run(x):
        h = x
        for layer, words, p in zip(model.layers[:-1], model.patterns(x), rates):
            gates = unpack_patterns(words, layer.out_features).to(x.dtype)
            h = nn.functional.dropout(gates * layer(h), p, True)
        return model.layers[-1](h)

    return run


@pytest.mark.parametrize("bad, error, words", [
    (1.0, ValueError, "in [0, 1)"), (-0.1, ValueError, "got -0.1 at layer 0"), (float("nan"), ValueError, "nan"),
    ([0.1], ValueError, "one per hidden layer (2), got 1"), ("0.1", TypeError, "got str"),
    ([0.1, True], TypeError, "dropout[1] must be a float, got bool"), (None, TypeError, "got NoneType"),
])  # fmt: skip
def test_bad_rates_are_refused_with_what_came(bad, error, words):
    with pytest.raises(error, match=None) as info:
        GLAIMLP(7, [9, 5], 3, dropout=bad)
    assert words in str(info.value)


def test_rates_repr_and_state_dict():
    one = GLAIMLP(7, [9, 5], 3, dropout=0.25)
    per_layer = GLAIMLP(7, [9, 5], 3, dropout=(0.1, 0.0))
    assert one.dropout == (0.25, 0.25) and per_layer.dropout == (0.1, 0.0)
    assert "dropout=0.25" in repr(one) and "dropout=[0.1, 0.0]" in repr(per_layer)
    assert "dropout" not in repr(GLAIMLP(7, [9, 5], 3))
    plain = GLAIMLP(7, [9, 5], 3)
    assert one.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(one.state_dict())  # a checkpoint does not depend on the rate
    one.dropout = 0.5  # assignment validates too
    assert one.dropout == (0.5, 0.5)
    with pytest.raises(ValueError, match="in \\[0, 1\\)"):
        one.dropout = 1


@pytest.mark.parametrize("phase", ["structural", "quantitative"])
@pytest.mark.parametrize("rates", [0.3, (0.0, 0.45)])
def test_torch_backend_is_nn_dropout_after_each_relu_bit_for_bit(phase, rates):
    """The same generator state gives the same masks as ``nn.Sequential(Linear, ReLU, Dropout)`` in the
    structural phase, and as the gated layers followed by ``F.dropout`` in the quantitative one: outputs and
    every gradient."""
    torch.manual_seed(3)
    model = GLAIMLP(11, [37, 23], 5, dropout=rates, backend="torch")
    if phase == "quantitative":
        model.freeze()
    mlp = _mlp_like(model, model.dropout) if phase == "structural" else _gated_like(model, model.dropout)
    x = torch.randn(41, 11, requires_grad=True)
    outs = []
    for net in (model, mlp):
        torch.manual_seed(17)
        y = net(x)
        gx, *gw = torch.autograd.grad(y.square().sum(), [x, *model.parameters()])
        outs.append((y, gx, gw))
    (y, gx, gw), (y_ref, gx_ref, gw_ref) = outs
    assert not torch.equal(y, model.eval()(x))  # something was dropped
    torch.testing.assert_close(y, y_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(gw, gw_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_eval_turns_it_off_and_patterns_ignore_it():
    torch.manual_seed(4)
    model = GLAIMLP(11, [37, 23], 5, dropout=0.4, backend="torch")
    x = torch.randn(30, 11)
    twin = GLAIMLP(11, [37, 23], 5, backend="torch")
    twin.load_state_dict(model.state_dict())
    model.eval()
    assert torch.equal(model(x), twin(x))
    model.train()
    # Patterns are the pre-dropout signs: the same as without dropout, in both phases, whatever is drawn.
    for phase in ("structural", "quantitative"):
        if phase == "quantitative":
            model.freeze(), twin.freeze()
        model(x)
        for a, b in zip(model.patterns(x), twin.patterns(x)):
            assert torch.equal(a, b)


def test_rate_zero_draws_nothing():
    """``dropout=0`` runs the code without dropout: the generator is not touched."""
    model = GLAIMLP(11, [37, 23], 5, dropout=0.0, backend="torch")
    x = torch.randn(30, 11)
    for phase in ("structural", "quantitative"):
        model.freeze() if phase == "quantitative" else None
        state = torch.get_rng_state()
        model(x)
        assert torch.equal(torch.get_rng_state(), state)


def test_glai_mlp_takes_rates_and_checks_them():
    torch.manual_seed(5)
    w = [torch.randn(9, 6), torch.randn(4, 9)]
    x = torch.randn(12, 6)
    patterns = [torch.full((12, 1), -1, dtype=torch.int32)]  # every unit open
    torch.manual_seed(0)
    y = glai_mlp(x, w, None, patterns, backend="torch", dropout=0.5)
    torch.manual_seed(0)
    keep = torch.nn.functional.dropout(torch.ones(12, 9), 0.5, True)
    torch.testing.assert_close(y, (x @ w[0].t() * keep) @ w[1].t())
    with pytest.raises(ValueError, match="one per hidden layer \\(1\\), got 2 rates"):
        glai_mlp(x, w, None, patterns, backend="torch", dropout=[0.1, 0.2])
