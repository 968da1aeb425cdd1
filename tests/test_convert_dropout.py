"""Conversion of heads with dropout: hidden-layer dropout becomes the GLAIMLP's rate, dropout on the block's input
or output stays outside it; the same function in eval mode and the same random function in training.

timm's ``Mlp`` is emulated (``TimmStyleMlp`` in ``_convert_models.py``: timm does not install here).
"""

import pytest
import torch
from _convert_models import Encoder, TimmStyleMlp
from torch import nn

import glai
from glai import GLAIMLP


class Classifier(nn.Module):
    """The usual head on a frozen encoder: ``Dropout, Linear, ReLU, Dropout, Linear``."""

    def __init__(self, p_in=0.1, p_hidden=0.1):
        super().__init__()
        self.encoder = nn.Linear(6, 32).requires_grad_(False)
        self.head = nn.Sequential(
            nn.Dropout(p_in), nn.Linear(32, 64), nn.ReLU(), nn.Dropout(p_hidden), nn.Linear(64, 3)
        )

    def forward(self, x):
        return self.head(self.encoder(x))


def _moments(model, x, draws):
    """Mean and variance over ``draws`` training-mode passes of each output (one pass over ``draws`` copies)."""
    y = model(x.repeat(draws, 1)).detach().view(draws, *x.shape[:-1], -1)
    return y.mean(0), y.var(0)


def test_classification_head_with_dropout_keeps_the_input_dropout_outside():
    torch.manual_seed(0)
    model = Classifier()
    dropout, params = model.head[0], list(model.parameters())
    x = torch.randn(5, 6)
    torch.manual_seed(1)
    mean, var = _moments(model, x, 20000)
    model.eval()
    before = model(x)
    report = glai.convert(model.train())
    assert report == ["head"]
    assert (
        "kept outside: head is now Sequential(Dropout(p=0.1, inplace=False), GLAIMLP)"
        in report.candidates[0].reason
    )
    assert (
        type(model.head) is nn.Sequential and model.head[0] is dropout and isinstance(model.head[1], GLAIMLP)
    )
    assert model.head[1].dropout == (0.1,) and model.head[1].training
    assert [id(p) for p in model.parameters()] == [id(p) for p in params]
    torch.testing.assert_close(model.eval()(x), before, rtol=0, atol=0)  # eval: the same function
    # Training: the same random function. Both moments of every output over 20 000 draws agree within five
    # standard errors (mean) and 10% (variance; hidden dropout p=0 instead of 0.1 would cut it by half or more).
    torch.manual_seed(2)
    model.train()
    assert not torch.equal(model(x), model(x))
    mean2, var2 = _moments(model, x, 20000)
    torch.testing.assert_close(mean2, mean, rtol=0, atol=5 * (2 * var.max() / 20000) ** 0.5)
    torch.testing.assert_close(var2, var, rtol=0.1, atol=0)


def test_emulated_timm_mlp_with_dropout_keeps_the_output_dropout_outside():
    torch.manual_seed(3)
    model = Encoder(TimmStyleMlp(12, 20, 4, drop=(0.2, 0.1)))
    drop2 = model.mlp.drop2
    x = torch.randn(7, 5)
    before = model.eval()(x)
    assert glai.convert(model) == ["mlp"]
    assert type(model.mlp) is nn.Sequential and model.mlp[1] is drop2 and model.mlp[0].dropout == (0.2,)
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    assert model.mlp[0].to_mlp_class is nn.Sequential  # the output dropout is no longer in the block
    back = model.mlp[0].to_mlp()
    assert [type(m) for m in back] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear] and back[2].p == 0.2


def test_dropout_before_the_relu_is_the_same_rate():
    torch.manual_seed(4)
    mlp = nn.Sequential(
        nn.Linear(5, 9), nn.Dropout(0.3), nn.ReLU(), nn.Linear(9, 6), nn.ReLU(), nn.Linear(6, 2)
    )
    model = GLAIMLP.from_mlp(mlp)
    assert model.dropout == (0.3, 0.0)
    x = torch.randn(4, 5)
    torch.testing.assert_close(model.eval()(x), mlp.eval()(x), rtol=0, atol=0)


def test_to_mlp_carries_the_rates_and_follows_a_changed_rate():
    model = GLAIMLP(6, [10, 7], 3, dropout=[0.1, 0.0])
    mlp = model.to_mlp()
    assert [type(m) for m in mlp] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU, nn.Linear]
    assert mlp[2].p == 0.1 and GLAIMLP.from_mlp(mlp).dropout == (0.1, 0.0)
    block = GLAIMLP.from_mlp(TimmStyleMlp(4, 8, 2, drop=(0.2, 0.0)))
    assert block.dropout == (0.2,) and block.to_mlp_class is TimmStyleMlp
    assert block.to_mlp().drop1.p == 0.2
    block.dropout = 0.3  # the original class no longer holds the block's function
    assert block.to_mlp_class is nn.Sequential and block.to_mlp()[2].p == 0.3


@pytest.mark.parametrize("fold", [False, True])
def test_tabular_head_with_batchnorm_and_dropout(fold):
    torch.manual_seed(5)
    head = nn.Sequential(nn.Linear(12, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 3))
    model = nn.ModuleDict({"head": head})
    head(torch.randn(64, 12) * 3 + 1)  # training mode: running statistics away from 0 and 1
    x = torch.randn(9, 12)
    before = head.eval()(x)
    if not fold:
        with pytest.warns(UserWarning, match="layer \\[1\\] BatchNorm1d.*pass fold_batchnorm=True"):
            assert glai.convert(model) == []
        return
    assert glai.convert(model, fold_batchnorm=True) == ["head"]
    assert model["head"].dropout == (0.1,)
    torch.testing.assert_close(model["head"](x), before, rtol=1e-5, atol=1e-6)
