"""Attribute-style MLP blocks (a forward that chains the module's own layers), the conversion report, folding.

timm does not install beside this torch, so its ``timm.layers.Mlp`` is emulated by ``TimmStyleMlp``
(``_convert_models.py``); tests that use it say "emulated" in their names. Real classes from ``transformers`` are in
``test_convert_hf.py``.
"""

import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from _convert_models import Encoder, TimmStyleMlp
from torch import nn

import glai
from glai import GLAIMLP, PhaseError
from glai.convert_chain import CLOSENESS


class Chained(nn.Module):
    """A hand-written head: ``relu`` given as a function (``F.relu``, ``torch.relu`` or the method)."""

    def __init__(self, relu, act=None, norm=None):
        super().__init__()
        self.lin1, self.lin2, self.out = nn.Linear(12, 19), nn.Linear(19, 7), nn.Linear(7, 3)
        self.relu, self.act, self.norm = relu, act, norm

    def forward(self, x):
        h = self.lin1(x)
        if self.norm is not None:
            h = self.norm(h)
        h = self.act(h) if self.act is not None else self.relu(h)
        return self.out(self.relu(self.lin2(h)))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 12)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(x)))


class Branchy(Residual):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return self.fc2(self.act(self.fc1(x)))
        return x


def test_emulated_timm_mlp_becomes_a_glaimlp_and_comes_back_as_itself():
    torch.manual_seed(0)
    model = Encoder(TimmStyleMlp(12, 33, 4))
    params = list(model.parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(9, 5)
    before = model(x)
    report = glai.convert(model)
    assert report == ["mlp"] and isinstance(model.mlp, GLAIMLP)
    assert [c.name for c in report.candidates] == ["mlp"] and report.candidates[0].replaced
    assert model.mlp.hidden_features == (33,) and model.mlp.to_mlp_class is TimmStyleMlp
    assert [id(p) for p in model.parameters()] == [id(p) for p in params]
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    w = model.mlp.layers[0].weight.detach().clone()
    model(x).square().sum().backward()
    optimizer.step()  # the optimizer built before the conversion moves the block's weights
    assert not torch.equal(model.mlp.layers[0].weight, w)
    after = model(x)
    back = model.mlp.to_mlp()
    assert type(back) is TimmStyleMlp and back.fc1.weight is model.mlp.layers[0].weight
    assert back.fc2.bias is model.mlp.layers[1].bias and isinstance(back.norm, nn.Identity)
    model.mlp = back
    torch.testing.assert_close(model(x), after, rtol=0, atol=0)
    with pytest.raises(PhaseError, match="to_mlp\\(\\) needs the structural phase"):
        GLAIMLP.from_mlp(TimmStyleMlp(3, 4, 2)).freeze().to_mlp()


@pytest.mark.parametrize(
    "relu", [F.relu, torch.relu, lambda h: h.relu()], ids=["F.relu", "torch.relu", "method"]
)
def test_functional_relu_in_a_hand_written_head(relu):
    torch.manual_seed(1)
    head = Chained(relu)
    x = torch.randn(6, 12)
    model = GLAIMLP.from_mlp(head, reduction=2)
    assert model.hidden_features == (38, 14) and model.structural_widths == (19, 7)
    torch.testing.assert_close(model(x), head(x), rtol=0, atol=0)
    assert model.to_mlp_class is Chained and type(model.to_mlp()) is Chained


REFUSED = [
    (Chained(F.relu, act=nn.GELU()), "activation", "layer \\[act\\] GELU.*only activation is ReLU, got GELU"),
    (Chained(F.silu), "activation", "calls silu \\(silu\\): a GLAIMLP's only activation is ReLU"),
    (Chained(F.relu, norm=nn.LayerNorm(19)), "norm", "layer \\[norm\\] LayerNorm.*no normalisation layers"),
    (
        Residual(),
        "chain",
        "runs fc1 -> act -> fc2 inside a larger computation \\(.* x goes to \\['fc1', 'add'\\].* no chain of calls",
    ),
    (Branchy(), "chain", "could not be traced by torch.fx \\(TraceError: symbolically traced variables"),
]


@pytest.mark.parametrize(
    "block, kind, reason", REFUSED, ids=["GELU", "F.silu", "LayerNorm", "residual", "trace"]
)
def test_refused_blocks_are_reported_with_their_reason(block, kind, reason):
    model = Encoder(block)
    with pytest.warns(UserWarning) as record:
        report = glai.convert(model)
    assert report == [] and model.mlp is block and len(record) == 1
    (candidate,) = report.candidates
    assert candidate.name == "mlp" and not candidate.replaced and candidate.type == type(block).__name__
    assert re.search(reason, candidate.reason), candidate.reason
    assert candidate.closeness == CLOSENESS[kind]
    assert f"closest candidate, mlp ({type(block).__name__}), was left: " in str(record[0].message)
    with pytest.raises(ValueError, match="the predicate selected mlp, which cannot be converted: "):
        glai.convert(model, predicate=lambda name, m: name == "mlp")


def test_report_lists_every_candidate_and_warns_once_naming_the_closest(capsys):
    head = TimmStyleMlp(12, 8, 3)
    head.fc1.register_forward_hook(lambda *a: None)
    model = nn.ModuleDict(
        {
            "single": nn.Sequential(nn.Dropout(0.1), nn.Linear(12, 3)),  # a lone Linear: further off
            "hooked": head,
            "attn": Residual(),
        }
    )
    with pytest.warns(
        UserWarning, match="closest candidate, hooked \\(TimmStyleMlp\\), was left: layer \\[fc1\\]"
    ):
        report = glai.convert(model, verbose=True)
    reasons = {c.name: c.reason for c in report.candidates}
    assert list(reasons) == ["single", "hooked", "attn"]
    assert reasons["single"].startswith("a single Linear: an MLP with at least one hidden layer")
    assert "has hooks registered, which a GLAIMLP would drop" in reasons["hooked"]
    assert report.closest.name == "hooked"
    out = capsys.readouterr().out
    assert out.startswith("glai.convert: replaced 0 of 3 candidates\n")
    assert (
        "  left      attn (Residual): " in out and "  left      single (Sequential): a single Linear" in out
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second call that replaces something warns nothing
        head.fc1._forward_hooks.clear()
        assert glai.convert(model) == ["hooked"]
        assert glai.convert(model) == []  # only GLAIMLPs left to find: no warning either


def test_a_shared_linear_is_refused_a_block_held_twice_is_not():
    shared = nn.Linear(12, 8)
    model = nn.ModuleDict(
        {"a": nn.Sequential(shared, nn.ReLU(), nn.Linear(8, 2)), "b": nn.Sequential(shared)}
    )
    with pytest.warns(
        UserWarning, match="the weight of layer \\[0\\] is also held outside the block, as b.0.weight"
    ):
        assert glai.convert(model) == []
    block = TimmStyleMlp(4, 6, 2)
    twice = nn.ModuleList([block, nn.Linear(2, 2), block])
    report = glai.convert(twice)
    assert (
        report == ["0", "2"] and twice[0] is twice[2] and report.candidates[1].reason == "the same block as 0"
    )


def _random_batchnorm(n, dtype, affine=True):
    bn = nn.BatchNorm1d(n, affine=affine, dtype=dtype)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        if affine:
            bn.weight.normal_()
            bn.bias.normal_()
    return bn.eval()


@pytest.mark.parametrize("bias, affine", [(True, True), (False, False)])
def test_fold_batchnorm_keeps_the_function_in_eval_mode(bias, affine):
    torch.manual_seed(2)
    d = torch.float64
    head = nn.Sequential(
        nn.Linear(10, 24, bias=bias, dtype=d), _random_batchnorm(24, d, affine), nn.ReLU(),
        nn.Linear(24, 3, bias=bias, dtype=d), _random_batchnorm(3, d, affine),
    )  # fmt: skip
    model = nn.ModuleDict({"head": head}).eval()
    x = torch.randn(13, 10, dtype=d)
    before = head(x)
    weight = head[0].weight
    report = glai.convert(model, fold_batchnorm=True)
    assert report == ["head"] and "2 BatchNorm1d folded" in report.candidates[0].reason
    glaimlp = model["head"]
    assert glaimlp.layers[0].weight is weight and glaimlp.bias and glaimlp.to_mlp_class is nn.Sequential
    torch.testing.assert_close(glaimlp(x), before, rtol=1e-12, atol=1e-12)


def test_fold_batchnorm_refusals():
    def head(bn):
        return nn.Sequential(nn.Linear(4, 6), bn, nn.ReLU(), nn.Linear(6, 2))

    cases = [
        (head(nn.BatchNorm1d(6)), "needs the BatchNorm1d in eval mode \\(call model.eval\\(\\) first\\)"),
        (head(nn.BatchNorm1d(6, track_running_stats=False).eval()), "with track_running_stats=False"),
        (
            nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.BatchNorm1d(6).eval(), nn.Linear(6, 2)),
            "right before it",
        ),
    ]
    for mlp, message in cases:
        with pytest.raises(ValueError, match=message):
            GLAIMLP.from_mlp(mlp, fold_batchnorm=True)
        weight = mlp[0].weight.detach().clone()
        with pytest.warns(UserWarning, match=message):
            glai.convert(nn.ModuleList([mlp]), fold_batchnorm=True)
        assert torch.equal(mlp[0].weight, weight)  # nothing folded before the refusal


def test_what_cannot_be_replaced_in_place_or_is_no_mlp():
    with pytest.raises(
        ValueError, match="the model is itself a convertible MLP .* use GLAIMLP.from_mlp\\(model\\)"
    ):
        glai.convert(TimmStyleMlp(4, 6, 2))
    head = nn.Sequential(nn.Dropout(0.1), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    with pytest.raises(ValueError, match="itself a convertible MLP .* hold it in a parent module"):
        glai.convert(head)
    assert glai.convert(nn.ModuleDict({"head": head})) == ["head"]
    with pytest.raises(
        ValueError,
        match="^a single Linear: an MLP with at least one hidden layer \\(two Linear layers\\) is needed, got 1",
    ):
        GLAIMLP.from_mlp(nn.Linear(4, 2))
