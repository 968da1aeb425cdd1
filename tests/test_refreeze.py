"""``GLAIMLP.refreeze()``: the structure follows the quantitative weights, and the function does not jump."""

import pytest
import torch

from glai import GLAIMLP, PatternCache, PhaseError


def _trained_after_freeze(seed=0):
    torch.manual_seed(seed)
    model = GLAIMLP(7, [37, 19], 3, backend="torch").freeze()
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    x, y = torch.randn(64, 7), torch.randint(0, 3, (64,))
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, x


def test_refreeze_copies_quantitative_weights_and_keeps_the_function():
    model, x = _trained_after_freeze()
    old = [p.clone() for p in model.patterns(x)]
    digest = model.structure_digest()
    # The relu network of the current weights is what the refreshed model must compute.
    h = x
    for layer in model.layers[:-1]:
        h = torch.relu(layer(h))
    expected = model.layers[-1](h)
    model.refreeze()
    assert model.phase == "quantitative"
    for w, layer in zip(model.structure.weights, model.layers[:-1]):
        assert torch.equal(w, layer.weight)
    assert model.structure_digest() != digest
    assert any(not torch.equal(a, b) for a, b in zip(old, model.patterns(x)))
    # fp32 rounding at most, as at freeze()
    torch.testing.assert_close(model(x), expected, rtol=1.3e-6, atol=1e-6)


def test_refreeze_invalidates_a_cache():
    model, x = _trained_after_freeze(1)
    cache = PatternCache.build(model, x)
    model.refreeze()
    with pytest.raises(ValueError, match="rebuild the cache"):
        cache.check(model)


def test_refreeze_errors():
    with pytest.raises(PhaseError, match="freeze"):
        GLAIMLP(4, 8, 2).refreeze()
    with pytest.raises(PhaseError, match="reduction 1"):
        GLAIMLP(4, 8, 2, reduction=2).freeze().refreeze()


def test_training_with_refresh_refuses_a_reduced_model_up_front():
    from glai.data import Split
    from glai.train import FreezePolicy, train_classifier

    x, y = torch.randn(40, 4), torch.randint(0, 2, (40,))
    model = GLAIMLP(4, 8, 2, reduction=2)
    with pytest.raises(ValueError, match="needs reduction 1, got a model with reduction=2"):
        train_classifier(model, Split(x, y, x, y), name="g", epochs=3, policy=FreezePolicy(refresh_every=1))
