"""``glai.convert`` on the real classes of ``transformers`` (skipped where it is not installed, as in CI).

Tiny configurations built in the test, no weights downloaded (``HF_HUB_OFFLINE=1``). T5's ReLU feed-forward
(``T5DenseActDense``: ``wi, act, dropout, wo``) is a module of its own and converts; OPT keeps ``fc1``,
``activation_fn`` and ``fc2`` inside its decoder layer's forward, between attention, LayerNorms and residual adds,
so there is no MLP module to swap, and the report must say so.
"""

import os

import pytest
import torch

import glai
from glai import GLAIMLP


@pytest.fixture(scope="module")
def hf():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    from transformers.models.t5.modeling_t5 import T5DenseActDense

    return transformers, T5DenseActDense


def test_t5_relu_feed_forward_converts_and_comes_back(hf):
    transformers, T5DenseActDense = hf
    torch.manual_seed(0)
    config = transformers.T5Config(d_model=12, d_ff=40, dense_act_fn="relu", dropout_rate=0.0)
    layer = transformers.models.t5.modeling_t5.T5LayerFF(config).eval()
    x = torch.randn(2, 5, 12)
    before = layer(x)
    weights = [layer.DenseReluDense.wi.weight, layer.DenseReluDense.wo.weight]
    report = glai.convert(layer)
    assert report == ["DenseReluDense"] and isinstance(layer.DenseReluDense, GLAIMLP)
    block = layer.DenseReluDense
    assert [m.weight for m in block.layers] == weights and not block.bias
    torch.testing.assert_close(layer(x), before, rtol=0, atol=0)
    assert block.to_mlp_class is T5DenseActDense
    back = block.to_mlp()
    assert type(back) is T5DenseActDense and back.wi.weight is weights[0] and back.wo.weight is weights[1]
    torch.testing.assert_close(back(x), block(x), rtol=0, atol=0)


def test_opt_classifier_is_refused_with_the_reason(hf):
    transformers, _ = hf
    config = transformers.OPTConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=2, ffn_dim=32, num_attention_heads=2,
        max_position_embeddings=32, word_embed_proj_dim=16, activation_function="relu", num_labels=3,
        pad_token_id=1,
    )  # fmt: skip
    model = transformers.OPTForSequenceClassification(config)
    with pytest.warns(UserWarning, match="closest candidate, model.decoder.layers.0 \\(OPTDecoderLayer\\)"):
        report = glai.convert(model)
    assert report == [] and not any(isinstance(m, GLAIMLP) for m in model.modules())
    layers = {c.name: c.reason for c in report.candidates if c.type == "OPTDecoderLayer"}
    assert list(layers) == ["model.decoder.layers.0", "model.decoder.layers.1"]
    for reason in layers.values():
        assert "it holds Linear layers fc1, fc2 and a ReLU (activation_fn)" in reason, reason
        assert "not in a module of its own, so there is nothing to swap" in reason
