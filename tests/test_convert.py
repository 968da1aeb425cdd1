"""Conversion of ReLU MLPs to GLAIMLP and back: same Parameters, dtype, device and function.

torchvision is not installed beside this torch, so its ``torchvision.ops.MLP`` is emulated by ``VisionStyleMLP``
below: an ``nn.Sequential`` subclass holding the same layers torchvision's builds for ``activation_layer=ReLU``,
``norm_layer=None``, ``dropout=0.0`` (``Linear, ReLU, Dropout(0.0)`` per hidden layer, then ``Linear,
Dropout(0.0)``). The refusals are in ``test_bad_input.py``.
"""

import pytest
import torch
from torch import nn

import glai
from glai import GLAIMLP, PhaseError
from glai.train import plain_mlp


class VisionStyleMLP(nn.Sequential):
    def __init__(self, in_channels, hidden_channels, inplace=None, bias=True, dropout=0.0):
        params = {} if inplace is None else {"inplace": inplace}
        layers, in_dim = [], in_channels
        for hidden_dim in hidden_channels[:-1]:
            layers += [
                nn.Linear(in_dim, hidden_dim, bias=bias),
                nn.ReLU(**params),
                nn.Dropout(dropout, **params),
            ]
            in_dim = hidden_dim
        layers += [nn.Linear(in_dim, hidden_channels[-1], bias=bias), nn.Dropout(dropout, **params)]
        super().__init__(*layers)


def linears(seq):
    return [m for m in seq.modules() if isinstance(m, nn.Linear)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_from_mlp_takes_the_parameters_and_computes_the_same(dtype):
    torch.manual_seed(0)
    mlp = plain_mlp(7, [33, 12], 4).to(dtype).eval()
    rng = torch.get_rng_state()
    model = GLAIMLP.from_mlp(mlp)
    assert torch.equal(torch.get_rng_state(), rng)  # nothing initialised, nothing drawn
    assert model.phase == "structural" and model.hidden_features == (33, 12) and not model.training
    for ours, theirs in zip(model.layers, linears(mlp)):
        assert ours.weight is theirs.weight and ours.bias is theirs.bias
    assert {p.dtype for p in model.parameters()} == {dtype}
    x = torch.randn(2, 9, 7, dtype=dtype)
    torch.testing.assert_close(model(x), mlp(x), rtol=0, atol=0)


@pytest.mark.parametrize("bias", [True, False])
def test_vision_style_mlp_subclass_with_inplace_relu_and_zero_dropout(bias):
    torch.manual_seed(1)
    mlp = VisionStyleMLP(6, [20, 17, 3], inplace=True, bias=bias)
    model = GLAIMLP.from_mlp(mlp, backend="torch")
    assert model.bias is bias and model.backend == "torch" and model.training
    x = torch.randn(11, 6)
    torch.testing.assert_close(model(x), mlp(x), rtol=0, atol=0)
    # Still the MLP's function through the freeze (reduction 1): the same Parameters keep training.
    model.freeze()
    torch.testing.assert_close(model(x), mlp(x), rtol=1.3e-6, atol=1e-6)


def test_nested_sequentials_are_read_through():
    torch.manual_seed(2)
    mlp = nn.Sequential(
        nn.Sequential(nn.Linear(5, 9), nn.ReLU()), nn.Identity(), nn.Sequential(nn.Linear(9, 2))
    )
    x = torch.randn(4, 5)
    torch.testing.assert_close(GLAIMLP.from_mlp(mlp)(x), mlp(x), rtol=0, atol=0)


def test_reduction_makes_the_mlp_the_structural_network():
    torch.manual_seed(3)
    mlp = plain_mlp(5, [8, 6], 2)
    model = GLAIMLP.from_mlp(mlp, reduction=2)
    assert model.hidden_features == (16, 12) and model.structural_widths == (8, 6)
    x = torch.randn(10, 5)
    torch.testing.assert_close(model(x), mlp(x), rtol=0, atol=0)
    assert [p.shape[-1] for p in model.patterns(x)] == [1, 1]
    model.freeze()
    assert [m.out_features for m in model.layers[:-1]] == [16, 12]
    assert model(x).shape == (10, 2)


def test_to_mlp_round_trip():
    torch.manual_seed(4)
    model = GLAIMLP(6, [10, 7], 3, bias=False)
    mlp = model.to_mlp()
    assert [type(m) for m in mlp] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert all(a.weight is b.weight and b.bias is None for a, b in zip(model.layers, linears(mlp)))
    x = torch.randn(5, 6)
    torch.testing.assert_close(mlp(x), model(x), rtol=0, atol=0)
    back = GLAIMLP.from_mlp(mlp)
    assert [p is q for p, q in zip(back.parameters(), model.parameters())] == [True] * 3
    model.freeze()
    with pytest.raises(PhaseError, match="to_mlp\\(\\) needs the structural phase"):
        model.to_mlp()


class TwoHeads(nn.Module):
    """A backbone (not an MLP), two MLP heads, and a block that must stay (a GELU)."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.ReLU())
        self.heads = nn.ModuleDict(
            {
                "cls": plain_mlp(16, [32], 5),
                "reg": nn.Sequential(nn.Linear(16, 24), nn.ReLU(inplace=True), nn.Linear(24, 1)),
            }
        )
        self.aux = nn.Sequential(nn.Linear(16, 4), nn.GELU(), nn.Linear(4, 2))

    def forward(self, x):
        z = self.backbone(x)
        return self.heads["cls"](z), self.heads["reg"](z)


def test_convert_two_heads_in_place_and_back():
    torch.manual_seed(5)
    model = TwoHeads()
    x = torch.randn(9, 8)
    before = model(x)
    params = list(model.parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    assert glai.convert(model) == ["heads.cls", "heads.reg"]
    assert isinstance(model.heads["cls"], GLAIMLP) and isinstance(model.heads["reg"], GLAIMLP)
    assert type(model.backbone) is nn.Sequential and type(model.aux) is nn.Sequential
    assert [id(p) for p in model.parameters()] == [id(p) for p in params]
    for a, b in zip(model(x), before):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # The optimizer built before the conversion trains the heads: one step moves them.
    w = model.heads["reg"].layers[0].weight.detach().clone()
    sum(y.square().sum() for y in model(x)).backward()
    optimizer.step()
    assert not torch.equal(model.heads["reg"].layers[0].weight, w)
    after = model(x)
    for name in ("cls", "reg"):
        model.heads[name] = model.heads[name].to_mlp()
    for a, b in zip(model(x), after):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [id(p) for p in model.parameters()] == [id(p) for p in params]


def test_convert_with_a_predicate_and_options():
    torch.manual_seed(6)
    model = TwoHeads()
    names = glai.convert(model, predicate=lambda name, m: name.endswith("reg"), reduction=2, backend="torch")
    assert names == ["heads.reg"] and isinstance(model.heads["cls"], nn.Sequential)
    assert model.heads["reg"].reduction == 2 and model.heads["reg"].backend == "torch"
    assert glai.convert(model) == ["heads.cls"]  # converted blocks are left alone
    assert glai.convert(model) == []


def test_a_block_held_twice_becomes_one_glaimlp():
    head = plain_mlp(4, [6], 2)
    model = nn.ModuleList([head, nn.Linear(4, 4), head])
    assert glai.convert(model) == ["0", "2"]
    assert model[0] is model[2] and isinstance(model[0], GLAIMLP)
