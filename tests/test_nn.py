import copy
import io

import pytest
import torch
from torch import nn

from glai import GLAIMLP, PhaseError
from glai.train import FreezePolicy, make_head, plain_mlp
from glai_kernels import pack_patterns


@pytest.mark.parametrize("hidden", [[33], [33, 65], [17, 40, 9]])
def test_parameter_count_and_function_equal_the_mlp(hidden):
    torch.manual_seed(0)
    model = GLAIMLP(13, hidden, 5)
    mlp = plain_mlp(13, hidden, 5)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in mlp.parameters())
    linears = [m for m in mlp if isinstance(m, nn.Linear)]
    for ours, theirs in zip(model.layers, linears):
        theirs.load_state_dict(ours.state_dict())
    x = torch.randn(21, 13)
    torch.testing.assert_close(model(x), mlp(x), rtol=0, atol=0)


def test_make_head_pairs_the_mlp_and_glai_with_the_same_initial_weights():
    mlp_and_glai = []
    for policy in (None, FreezePolicy()):
        torch.manual_seed(7)
        mlp_and_glai.append(make_head(13, (33, 65), 5, policy))
    mlp, model = mlp_and_glai
    assert isinstance(model, GLAIMLP) and model.hidden_features == (33, 65)
    linears = [m for m in mlp if isinstance(m, nn.Linear)]
    assert len(linears) == len(model.layers)
    for ours, theirs in zip(model.layers, linears):
        assert torch.equal(ours.weight, theirs.weight) and torch.equal(ours.bias, theirs.bias)


@pytest.mark.parametrize("hidden", [[33], [33, 65], [17, 40, 9]])
def test_exact_continuity_at_freeze(hidden):
    torch.manual_seed(1)
    model = GLAIMLP(13, hidden, 5)
    x = torch.randn(4, 19, 13)
    before = model(x)
    model.freeze()
    after = model(x)
    torch.testing.assert_close(after, before, rtol=1.3e-6, atol=1e-6)  # fp32 rounding at most
    assert model.phase == "quantitative"


def test_freeze_keeps_parameters_for_reduction_one_and_gradients_reach_them():
    model = GLAIMLP(8, [16, 16], 3)
    params = list(model.parameters())
    model.freeze()
    assert [id(p) for p in model.parameters()] == [id(p) for p in params]
    model(torch.randn(5, 8)).sum().backward()
    assert all(p.grad is not None for p in params)
    assert all(not b.requires_grad for b in model.structure.buffers())


@pytest.mark.parametrize("r", [2, 4])
def test_with_reduction_unit_j_follows_structural_bit_j_div_r(r):
    torch.manual_seed(r)
    model = GLAIMLP(7, [12, 20], 3, reduction=r)
    assert [m.out_features for m in model.layers[:-1]] == [12 // r, 20 // r]
    model.freeze()
    assert [m.out_features for m in model.layers[:-1]] == [12, 20]
    x = torch.randn(30, 7)
    pats = model.patterns(x)
    assert [p.shape[-1] for p in pats] == [1, 1]
    # Open one structural unit k at a time: only the rows j of dW_1 with j // r == k get a gradient.
    for k in range(12 // r):
        only_k = pack_patterns(torch.nn.functional.one_hot(torch.full((30,), k), 12 // r).bool())
        model.zero_grad()
        model(x, patterns=[only_k, ~pats[1]]).square().sum().backward()
        rows = model.layers[0].weight.grad.abs().sum(dim=1).nonzero().flatten().tolist()
        assert rows == list(range(k * r, k * r + r))


def test_inputs_with_leading_dims_like_linear():
    model = GLAIMLP(6, 10, 4, depth=2)
    for shape in [(6,), (3, 6), (2, 3, 6)]:
        x = torch.randn(*shape)
        assert model(x).shape == shape[:-1] + (4,)
        model_q = copy.deepcopy(model).freeze()
        assert model_q(x).shape == shape[:-1] + (4,)
        assert [p.shape for p in model_q.patterns(x)] == [shape[:-1] + (1,)] * 2


def test_patterns_passed_explicitly_are_used():
    torch.manual_seed(3)
    model = GLAIMLP(6, [40], 2).freeze()
    x = torch.randn(9, 6)
    own = model.patterns(x)
    flipped = [~p for p in own]
    assert torch.equal(model(x, patterns=own), model(x))
    assert not torch.allclose(model(x, patterns=flipped), model(x))


def test_empty_batch_returns_empty_output():
    model = GLAIMLP(6, [10], 4)
    assert model(torch.randn(0, 6)).shape == (0, 4)
    model.freeze()
    y = model(torch.randn(0, 6))
    assert y.shape == (0, 4)
    y.sum().backward()


def test_nan_propagates_like_linear():
    torch.manual_seed(4)
    model = GLAIMLP(5, [33], 3)
    x = torch.randn(4, 5)
    x[1, 2] = float("nan")
    for _ in range(2):
        y = model(x)
        assert torch.isnan(y[1]).all()
        assert torch.isfinite(y[[0, 2, 3]]).all()
        if model.phase == "structural":
            model.freeze()


def _train(model, opt, xs, ys):
    for x, y in zip(xs, ys):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("r", [1, 2])
def test_state_dict_round_trip_both_phases_and_resume(r):
    torch.manual_seed(5)
    xs, ys = torch.randn(6, 16, 10), torch.randint(0, 3, (6, 16))
    model = GLAIMLP(10, [12, 8], 3, reduction=r)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    _train(model, opt, xs[:2], ys[:2])

    restored = GLAIMLP(10, [12, 8], 3, reduction=r)
    restored.load_state_dict(model.state_dict())
    assert restored.phase == "structural"
    torch.testing.assert_close(restored(xs[0]), model(xs[0]), rtol=0, atol=0)

    model.freeze()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    _train(model, opt, xs[2:4], ys[2:4])
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)

    buffer.seek(0)
    ckpt = torch.load(buffer, weights_only=True)
    resumed = GLAIMLP(10, [12, 8], 3, reduction=r)
    resumed.load_state_dict(ckpt["model"])
    assert resumed.phase == "quantitative"
    assert resumed.structure_digest() == model.structure_digest()
    resumed_opt = torch.optim.Adam(resumed.parameters(), lr=1e-2)
    resumed_opt.load_state_dict(ckpt["opt"])

    _train(model, opt, xs[4:], ys[4:])
    _train(resumed, resumed_opt, xs[4:], ys[4:])
    assert model.state_dict().keys() == resumed.state_dict().keys()
    for a, b in zip(model.state_dict().values(), resumed.state_dict().values()):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)

    # A structural checkpoint loaded into a frozen model takes it back to the structural phase.
    fresh = GLAIMLP(10, [12, 8], 3, reduction=r)
    resumed.load_state_dict(fresh.state_dict())
    assert resumed.phase == "structural" and resumed.structure is None
    torch.testing.assert_close(resumed(xs[0]), fresh(xs[0]), rtol=0, atol=0)


def test_extra_repr_is_readable():
    text = repr(GLAIMLP(4, [8, 8], 2, reduction=2, backend="torch"))
    assert "in_features=4, hidden_features=[8, 8], out_features=2, reduction=2" in text
    assert "phase=structural, backend=torch" in text


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"hidden_features": 0}, ValueError, "hidden_features must be at least 1, got 0"),
        ({"hidden_features": [8, 0]}, ValueError, r"hidden_features\[1\] must be at least 1, got 0"),
        ({"hidden_features": 8, "depth": 0}, ValueError, "depth must be at least 1, got 0"),
        ({"hidden_features": []}, ValueError, "at least one hidden layer"),
        (
            {"hidden_features": [8, 12], "reduction": 8},
            ValueError,
            "reduction=8 must divide every hidden width, got width 12",
        ),
        ({"hidden_features": 8, "reduction": 0}, ValueError, "reduction must be a positive int"),
        ({"hidden_features": 8, "backend": "cuda"}, ValueError, "backend must be one of"),
        ({"hidden_features": 8.5}, TypeError, "hidden_features must be an int, got float"),
        ({"hidden_features": [8, 8], "depth": 3}, ValueError, "depth=3 disagrees"),
    ],
)
def test_constructor_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        GLAIMLP(4, out_features=2, **kwargs)


def test_forward_errors_name_expected_and_got():
    model = GLAIMLP(6, [10, 12], 3)
    with pytest.raises(ValueError, match=r"expected 6 features in the last dimension, got shape \(4, 5\)"):
        model(torch.randn(4, 5))
    with pytest.raises(ValueError, match="0-d tensor"):
        model(torch.tensor(1.0))
    with pytest.raises(TypeError, match="floating-point.*got torch.int64"):
        model(torch.ones(4, 6, dtype=torch.long))
    with pytest.raises(TypeError, match="floating-point.*got torch.bool"):
        model(torch.ones(4, 6, dtype=torch.bool))
    with pytest.raises(TypeError, match="must have the input's dtype torch.float64"):
        model(torch.randn(4, 6, dtype=torch.float64))
    x = torch.randn(4, 6)
    with pytest.raises(PhaseError, match="only be passed in the quantitative phase"):
        model(x, patterns=model.patterns(x))
    model.freeze()
    with pytest.raises(PhaseError, match="already called"):
        model.freeze()
    pats = model.patterns(x)
    with pytest.raises(ValueError, match="expected patterns for 2 hidden layers, got 1"):
        model(x, patterns=pats[:1])
    with pytest.raises(ValueError, match=r"patterns\[1\] must have shape \(4, 1\).*got \(4, 2\)"):
        model(x, patterns=[pats[0], torch.zeros(4, 2, dtype=torch.int32)])
    with pytest.raises(ValueError, match=r"patterns\[0\] must have shape \(4, 1\).*got \(3, 1\)"):
        model(x, patterns=[pats[0][:3], pats[1]])
    assert issubclass(PhaseError, ValueError) and issubclass(PhaseError, RuntimeError)


def test_autocast_in_both_phases_keeps_fp32_parameters():
    torch.manual_seed(6)
    model = GLAIMLP(6, [40, 33], 3)
    x = torch.randn(8, 6)
    for _ in range(2):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = model(x)
        assert y.dtype == torch.bfloat16
        model.zero_grad()
        y.float().sum().backward()
        assert all(p.grad.dtype == torch.float32 for p in model.parameters())
        if model.phase == "structural":
            model.freeze()
