"""The Triton kernels against the float64 PyTorch reference.

On a machine without CUDA these run under Triton's interpreter (conftest sets ``TRITON_INTERPRET=1`` before
anything imports the kernels), so shapes stay small and odd: batch {1, 33, 77}, widths {1, 31, 33, 100}, none
a multiple of a tile or of a pattern word. Outputs are preallocated and filled with NaN (int32 words with a
garbage pattern) before each launch, so an element a kernel forgets to write fails the comparison.
"""

import pytest
import torch
from _kernel_checks import (
    CUDA,
    DEVICE,
    DTYPES,
    OTHER_CONFIG,
    WORST,
    assert_close_rel,
    f64,
    gen,
    poison,
    rand_words,
    randn,
)  # fmt: skip

from glai_kernels import reference as ref
from glai_kernels.layout import PATTERN_DTYPE, unpack_patterns, words_for

per_layer_ops = pytest.importorskip("glai_kernels.per_layer_ops", reason="the Triton kernels need Triton")


def tuning_config(kernel: str, M: int, N: int, K: int) -> dict:
    """The configuration the ops pick by default for a GEMM of output ``M x N``, reduction ``K``."""
    from glai_kernels.launch_configs import config_for

    return config_for(kernel, M, N, K, torch.float32)


@pytest.fixture(scope="module", autouse=True)
def _report_worst():
    yield
    if WORST:
        print("\nlargest relative error vs float64: " + ", ".join(f"{k}: {v:.2e}" for k, v in WORST.items()))


# ----------------------------------------------------------------------------- gate
GATE_CASES = [  # (batch, in, out)
    (1, 31, 100),
    (33, 100, 33),
    (77, 33, 31),
    (33, 1, 100),
    (77, 31, 1),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("M,K,N", GATE_CASES)
def test_gate(M, K, N, dtype):
    g = gen(M * 10007 + K * 101 + N)
    a, w, b = randn(M, K, dtype=dtype, g=g), randn(N, K, dtype=dtype, g=g), randn(N, dtype=dtype, g=g)
    out = (poison(M, N, dtype=dtype), poison(M, words_for(N), dtype=PATTERN_DTYPE))
    relu, words = per_layer_ops.gate(a, w, b, out=out)
    assert relu is out[0] and words is out[1]
    r_relu, r_words = ref.gate(f64(a), f64(w), f64(b))
    assert_close_rel(relu, r_relu, dtype, "gate relu")
    # Bits may differ only where the pre-activation is within rounding of 0 (fp32 accumulation vs float64).
    z = torch.nn.functional.linear(f64(a), f64(w), f64(b))
    near_zero = z.abs() <= 1e-4 * z.abs().max()

    bits, r_bits = unpack_patterns(words, N), unpack_patterns(r_words, N)
    assert torch.equal(bits | near_zero, r_bits | near_zero), "gate pattern bits differ from the reference"
    # Padding bits past N are zero, and with no unit near 0 the words match exactly.
    if not near_zero.any():
        assert torch.equal(words, r_words)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_gate_keeps_nan_and_inf():
    """relu as torch.relu: NaN stays NaN (its bit is 0, since NaN > 0 is false), +inf stays, -inf becomes
    0."""
    M, K, N = 33, 31, 33
    g = gen(5)
    a, w, b = (
        randn(M, K, dtype=torch.float32, g=g),
        randn(N, K, dtype=torch.float32, g=g),
        randn(N, dtype=torch.float32, g=g),
    )
    a[3, 0] = float("nan")
    b[7], b[9] = float("inf"), -float("inf")
    out = (poison(M, N, dtype=torch.float32), poison(M, words_for(N), dtype=PATTERN_DTYPE))
    relu, words = per_layer_ops.gate(a, w, b, out=out)
    r_relu, r_words = ref.gate(f64(a), f64(w), f64(b))
    torch.testing.assert_close(relu.double(), r_relu, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert relu[3].isnan().all() and torch.equal(words, r_words)


@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided"])
def test_gate_no_bias_and_strides(strided):
    M, K, N = 33, 33, 100
    g = gen(7 + strided)
    a, w = (
        randn(M, K, dtype=torch.float32, g=g, strided=strided),
        randn(N, K, dtype=torch.float32, g=g, strided=strided),
    )
    out = (poison(M, N, dtype=torch.float32), poison(M, words_for(N), dtype=PATTERN_DTYPE))
    relu, words = per_layer_ops.gate(a, w, None, out=out)
    r_relu, r_words = ref.gate(f64(a), f64(w), None)
    assert_close_rel(relu, r_relu, torch.float32, "gate relu")
    assert torch.equal(words, r_words)


# ----------------------------------------------------------------------------- masked forward
MASKED_CASES = [  # (batch, in, out, reduction, gated, bias)
    (1, 33, 100, 4, True, True),
    (33, 31, 100, 2, True, True),
    (77, 100, 33, 1, True, True),
    (33, 100, 31, 1, True, False),
    (77, 31, 1, 1, True, True),
    (33, 1, 100, 1, False, True),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("M,K,N,r,gated,has_bias", MASKED_CASES)
def test_masked_forward(M, K, N, r, gated, has_bias, dtype):
    g = gen(M * 10007 + K * 101 + N * 7 + r)
    h, w = randn(M, K, dtype=dtype, g=g), randn(N, K, dtype=dtype, g=g)
    b = randn(N, dtype=dtype, g=g) if has_bias else None
    words = rand_words(M, N // r, g) if gated else None
    out = per_layer_ops.masked_forward(h, w, b, words, r, out=poison(M, N, dtype=dtype))
    assert_close_rel(out, ref.masked_forward(f64(h), f64(w), f64(b), words, r), dtype, "masked_forward")


def test_masked_forward_strided_operands():
    M, K, N, r = 77, 33, 100, 2
    g = gen(11)
    h = randn(M, K, dtype=torch.float32, g=g, strided=True)
    w = randn(N, K, dtype=torch.float32, g=g, strided=True)
    b = randn(2 * N, dtype=torch.float32, g=g)[::2]
    words = rand_words(M, N // r, g, strided=True)
    out = poison(M, 2 * N, dtype=torch.float32)[:, ::2]  # a strided output is written in place, too
    res = per_layer_ops.masked_forward(h, w, b, words, r, out=out)
    assert res is out
    assert_close_rel(out, ref.masked_forward(f64(h), f64(w), f64(b), words, r), torch.float32, "strided")


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_masked_forward_gate_multiplies():
    """A NaN or inf reaching a closed unit propagates (0 * inf = NaN), as in the formula; an open unit with
    inf keeps it."""
    M, K, N = 33, 31, 33
    g = gen(3)
    h, w, b = (
        randn(M, K, dtype=torch.float32, g=g),
        randn(N, K, dtype=torch.float32, g=g),
        randn(N, dtype=torch.float32, g=g),
    )
    words = rand_words(M, N, g)
    b[5] = float("inf")
    h[2, 3] = float("nan")
    out = per_layer_ops.masked_forward(h, w, b, words, 1, out=poison(M, N, dtype=torch.float32))
    expected = ref.masked_forward(f64(h), f64(w), f64(b), words, 1)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert out[:, 5].isnan().any() and out[2].isnan().all()


@pytest.mark.parametrize(
    "block_n,r,units",
    [(16, 1, 100), (16, 3, 33), (32, 1, 100), (64, 2, 100), (64, 4, 100), (128, 4, 100)],
    ids=["in-word-r1", "gather-r3", "words-r1", "words-r2", "in-word-r4", "words-r4"],
)
def test_gate_reading_per_tile_shape(block_n, r, units):
    """The epilogue reads the pattern three ways, by how a tile of BLOCK_N units meets the 32 * r units of a
    word: whole words per tile, a tile inside one word, or a per-element gather (r not a power of two). Both
    kernels that read patterns are checked in each way, with widths that end inside a word and inside a
    tile."""
    M, K = 33, 31
    g = gen(block_n * 10 + r)
    cfg = dict(OTHER_CONFIG, BLOCK_N=block_n)
    h, w, b = (
        randn(M, K, dtype=torch.float32, g=g),
        randn(units, K, dtype=torch.float32, g=g),
        randn(units, dtype=torch.float32, g=g),
    )
    words = rand_words(M, units // r, g)
    out = per_layer_ops.masked_forward(
        h, w, b, words, r, config=cfg, out=poison(M, units, dtype=torch.float32)
    )
    assert_close_rel(
        out, ref.masked_forward(f64(h), f64(w), f64(b), words, r), torch.float32, "masked_forward"
    )
    grad, w2 = randn(M, K, dtype=torch.float32, g=g), randn(K, units, dtype=torch.float32, g=g)
    out = per_layer_ops.backward_data(
        grad, w2, words, r, config=cfg, out=poison(M, units, dtype=torch.float32)
    )
    assert_close_rel(out, ref.backward_data(f64(grad), f64(w2), words, r), torch.float32, "backward_data")


# ----------------------------------------------------------------------------- backward data
DATA_CASES = [  # (batch, layer in = gated width, layer out, reduction, gated)
    (1, 100, 33, 2, True),
    (33, 100, 31, 4, True),
    (77, 33, 100, 1, True),
    (33, 31, 1, 1, True),
    (77, 1, 33, 1, False),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("M,K,N,r,gated", DATA_CASES)
def test_backward_data(M, K, N, r, gated, dtype):
    g_ = gen(M * 10007 + K * 101 + N * 7 + r)
    grad, w = randn(M, N, dtype=dtype, g=g_), randn(N, K, dtype=dtype, g=g_)
    words = rand_words(M, K // r, g_) if gated else None
    out = per_layer_ops.backward_data(grad, w, words, r, out=poison(M, K, dtype=dtype))
    assert_close_rel(out, ref.backward_data(f64(grad), f64(w), words, r), dtype, "backward_data")


def test_backward_data_strided_operands():
    M, K, N, r = 33, 100, 33, 4
    g_ = gen(13)
    grad = randn(M, N, dtype=torch.float32, g=g_, strided=True)
    w = randn(N, K, dtype=torch.float32, g=g_, strided=True)
    words = rand_words(M, K // r, g_, strided=True)
    out = per_layer_ops.backward_data(grad, w, words, r, out=poison(M, K, dtype=torch.float32))
    assert_close_rel(out, ref.backward_data(f64(grad), f64(w), words, r), torch.float32, "strided")


# ----------------------------------------------------------------------------- backward weights
WEIGHT_CASES = [  # (batch, in, out, bias)
    (1, 100, 33, True),
    (33, 31, 100, False),
    (77, 33, 31, True),
    (77, 1, 33, True),  # one column tile: db must come from it
    (33, 100, 1, True),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("M,K,N,has_bias", WEIGHT_CASES)
def test_backward_weights(M, K, N, has_bias, dtype):
    g_ = gen(M * 10007 + K * 101 + N)
    grad, h = randn(M, N, dtype=dtype, g=g_), randn(M, K, dtype=dtype, g=g_)
    out = (poison(N, K, dtype=dtype), poison(N, dtype=dtype) if has_bias else None)
    dw, db = per_layer_ops.backward_weights(grad, h, has_bias, out=out)
    r_dw, r_db = ref.backward_weights(f64(grad), f64(h), has_bias)
    assert_close_rel(dw, r_dw, dtype, "dW")
    if has_bias:
        assert_close_rel(db, r_db, dtype, "db")
    else:
        assert db is None


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("splits,has_bias", [(2, True), (3, False), (5, True), (9, True)])
def test_backward_weights_split_batch(splits, has_bias, dtype):
    """The batch cut into ranges whose fp32 partials are added afterwards (narrow layers on a big GPU); more
    splits asked than there are BLOCK_K steps gives one split per step. Deterministic too."""
    M, K, N = 77, 33, 31
    g_ = gen(splits * 2 + has_bias)
    grad, h = randn(M, N, dtype=dtype, g=g_), randn(M, K, dtype=dtype, g=g_)
    cfg = dict(tuning_config("backward_weights", N, K, M), SPLIT_K=splits)
    results = []
    for _ in range(2):
        out = (poison(N, K, dtype=dtype), poison(N, dtype=dtype) if has_bias else None)
        results.append(per_layer_ops.backward_weights(grad, h, has_bias, config=cfg, out=out))
    r_dw, r_db = ref.backward_weights(f64(grad), f64(h), has_bias)
    assert_close_rel(results[0][0], r_dw, dtype, "dW")
    assert torch.equal(results[0][0], results[1][0])
    if has_bias:
        assert_close_rel(results[0][1], r_db, dtype, "db")
        assert torch.equal(results[0][1], results[1][1])


def test_backward_weights_strided_operands():
    M, K, N = 77, 31, 33
    g_ = gen(17)
    grad, h = (
        randn(M, N, dtype=torch.float32, g=g_, strided=True),
        randn(M, K, dtype=torch.float32, g=g_, strided=True),
    )
    dw, db = per_layer_ops.backward_weights(
        grad, h, True, out=(poison(N, K, dtype=torch.float32), poison(N, dtype=torch.float32))
    )
    r_dw, r_db = ref.backward_weights(f64(grad), f64(h), True)
    assert_close_rel(dw, r_dw, torch.float32, "dW")
    assert_close_rel(db, r_db, torch.float32, "db")


# ----------------------------------------------------------------------------- all ops together
def _run_all(seed, dtype=torch.float32, config=None, use_out=True):
    """Every op once on fresh inputs, with NaN-filled outputs unless ``use_out=False`` (the registered
    ops)."""
    M, K, N, r = 33, 31, 100, 2
    g_ = gen(seed)
    x, w, b = randn(M, K, dtype=dtype, g=g_), randn(N, K, dtype=dtype, g=g_), randn(N, dtype=dtype, g=g_)
    words = rand_words(M, N // r, g_)
    grad = randn(M, N, dtype=dtype, g=g_)
    wd = rand_words(M, K, g_)
    kw = (lambda out: {"config": config, "out": out}) if use_out else (lambda out: {"config": config})
    res = {
        "gate": per_layer_ops.gate(
            x, w, b, **kw((poison(M, N, dtype=dtype), poison(M, words_for(N), dtype=PATTERN_DTYPE)))
        ),
        "masked_forward": per_layer_ops.masked_forward(x, w, b, words, r, **kw(poison(M, N, dtype=dtype))),
        "backward_data": per_layer_ops.backward_data(grad, w, wd, 1, **kw(poison(M, K, dtype=dtype))),
        "backward_weights": per_layer_ops.backward_weights(
            grad, x, True, **kw((poison(N, K, dtype=dtype), poison(N, dtype=dtype)))
        ),
    }
    expected = {
        "gate": ref.gate(f64(x), f64(w), f64(b)),
        "masked_forward": ref.masked_forward(f64(x), f64(w), f64(b), words, r),
        "backward_data": ref.backward_data(f64(grad), f64(w), wd, 1),
        "backward_weights": ref.backward_weights(f64(grad), f64(x), True),
    }
    return res, expected


def _flat(res):
    return [t for v in res.values() for t in (v if isinstance(v, tuple) else (v,))]


def test_deterministic():
    """Two runs on the same inputs are bit-identical (no atomics, one summation order per element)."""
    first, _ = _run_all(seed=21)
    second, _ = _run_all(seed=21)
    for a, b in zip(_flat(first), _flat(second)):
        assert torch.equal(a, b)


def test_registered_ops_match_out_path():
    """Without ``config``/``out`` the ops go through ``torch.ops.glai.*``; same kernels, same bits."""
    direct, _ = _run_all(seed=23)
    registered, _ = _run_all(seed=23, use_out=False)
    for a, b in zip(_flat(direct), _flat(registered)):
        assert torch.equal(a, b)


def test_forced_config():
    res, expected = _run_all(seed=29, config=OTHER_CONFIG)
    for name in res:
        got, exp = res[name], expected[name]
        assert_close_rel(
            got[0] if isinstance(got, tuple) else got,
            exp[0] if isinstance(exp, tuple) else exp,
            torch.float32,
            name,
        )
    assert torch.equal(res["gate"][1], expected["gate"][1])


def test_ops_ask_config_for_with_their_dot_precision(monkeypatch):
    """fp32 under TF32 has tuned tiles of its own (the dtype key "tf32"): every op asks ``launch_config`` with
    the precision it launches its dots with."""
    from glai_kernels import launch_configs, per_layer_launch, runtime

    asked = []
    real = launch_configs.launch_config

    def spy(kernel, M, N, K, dtype, precision=None, device=None):
        asked.append((kernel, precision))
        return real(kernel, M, N, K, dtype, precision, device)

    monkeypatch.setattr(launch_configs, "launch_config", spy)
    monkeypatch.setattr(runtime, "launch_precision", lambda dtype: "tf32")
    per_layer_launch.LAUNCH_PLANS.clear()  # plans made before are memoised with their own precision
    _run_all(seed=41)
    assert sorted(asked) == [
        (k, "tf32") for k in ("backward_data", "backward_weights", "gate", "masked_forward")
    ]
    per_layer_launch.LAUNCH_PLANS.clear()


def test_empty_batch():
    w, b = torch.randn(33, 31, device=DEVICE), torch.randn(33, device=DEVICE)
    x = torch.randn(0, 31, device=DEVICE)
    relu, words = per_layer_ops.gate(x, w, b)
    assert relu.shape == (0, 33) and words.shape == (0, 2) and words.dtype == PATTERN_DTYPE
    assert per_layer_ops.masked_forward(
        x, w, b, torch.zeros(0, 2, dtype=PATTERN_DTYPE, device=DEVICE), 1
    ).shape == (0, 33)
    assert per_layer_ops.backward_data(torch.randn(0, 33, device=DEVICE), w, None, 1).shape == (0, 31)
    # The weight gradient of an empty batch is a sum of nothing: zeros, written by the kernel over NaN.
    dw, db = per_layer_ops.backward_weights(
        torch.randn(0, 33, device=DEVICE),
        x,
        True,
        out=(poison(33, 31, dtype=torch.float32), poison(33, dtype=torch.float32)),
    )
    assert torch.equal(dw, torch.zeros_like(dw)) and torch.equal(db, torch.zeros_like(db))


def test_float64_goes_to_reference():
    g_ = gen(31)
    h, w = (
        torch.randn(5, 7, generator=g_, dtype=torch.float64),
        torch.randn(6, 7, generator=g_, dtype=torch.float64),
    )
    h, w = h.to(DEVICE), w.to(DEVICE)
    words = rand_words(5, 3, g_)
    assert torch.equal(
        per_layer_ops.masked_forward(h, w, None, words, 2), ref.masked_forward(h, w, None, words, 2)
    )
    # `out` is checked on this path as on the others: no silent cast into a float32 buffer.
    with pytest.raises(TypeError, match="out must be torch.float64"):
        per_layer_ops.masked_forward(h, w, None, words, 2, out=torch.empty(5, 6, device=DEVICE))
    with pytest.raises(ValueError, match=r"out must have shape \(5, 7\)"):
        per_layer_ops.backward_data(
            h[:, :6], w, None, 1, out=torch.empty(5, 6, dtype=torch.float64, device=DEVICE)
        )


def test_opcheck_registered_ops():
    """Schemas, fake (meta) implementations and dispatch of the custom ops, as torch.compile relies on
    them."""
    g_ = gen(37)
    x, w, b = (
        randn(5, 7, dtype=torch.float32, g=g_),
        randn(6, 7, dtype=torch.float32, g=g_),
        randn(6, dtype=torch.float32, g=g_),
    )
    grad = randn(5, 6, dtype=torch.float32, g=g_)
    tests = ("test_schema", "test_faketensor")
    torch.library.opcheck(torch.ops.glai.gate, (x, w, b), test_utils=tests)
    torch.library.opcheck(torch.ops.glai.masked_forward, (x, w, b, rand_words(5, 3, g_), 2), test_utils=tests)
    torch.library.opcheck(torch.ops.glai.backward_data, (grad, w, rand_words(5, 7, g_), 1), test_utils=tests)
    torch.library.opcheck(torch.ops.glai.backward_weights, (grad, x, True), test_utils=tests)
    torch.library.opcheck(torch.ops.glai.backward_weights, (grad, x, False), test_utils=tests)


# ----------------------------------------------------------------------------- argument errors
def test_bad_arguments_are_named():
    x, w = torch.randn(5, 7, device=DEVICE), torch.randn(6, 7, device=DEVICE)
    with pytest.raises(ValueError, match="words must have shape"):
        per_layer_ops.masked_forward(x, w, None, torch.zeros(5, 2, dtype=PATTERN_DTYPE, device=DEVICE), 1)
    with pytest.raises(TypeError, match="int32"):
        per_layer_ops.masked_forward(x, w, None, torch.zeros(5, 1, device=DEVICE), 1)
    with pytest.raises(ValueError, match="must divide"):
        per_layer_ops.masked_forward(x, w, None, torch.zeros(5, 1, dtype=PATTERN_DTYPE, device=DEVICE), 4)
    with pytest.raises(TypeError, match="dtype"):
        per_layer_ops.masked_forward(x, w.half(), None, None, 1)
    with pytest.raises(ValueError, match="weight must have shape"):
        per_layer_ops.backward_data(torch.randn(5, 5, device=DEVICE), w, None, 1)
    with pytest.raises(ValueError, match="multiple of 32"):
        per_layer_ops.gate(x, w, None, config=dict(OTHER_CONFIG, BLOCK_N=16))
    with pytest.raises(ValueError, match="keys"):
        per_layer_ops.masked_forward(x, w, None, None, 1, config={"BLOCK_M": 32})
    with pytest.raises(ValueError, match="power of two"):
        per_layer_ops.masked_forward(x, w, None, None, 1, config=dict(OTHER_CONFIG, BLOCK_K=48))
    with pytest.raises(ValueError, match="out must have shape"):
        per_layer_ops.masked_forward(x, w, None, None, 1, out=torch.empty(5, 7, device=DEVICE))
    with pytest.raises(TypeError, match=r"gate: out must be a pair \(relu"):
        per_layer_ops.gate(x, w, None, out=torch.empty(5, 6, device=DEVICE))
    with pytest.raises(TypeError, match=r"backward_weights: out must be a pair \(dW .*got 1 items"):
        per_layer_ops.backward_weights(torch.randn(5, 6, device=DEVICE), x, True, out=(torch.empty(6, 7),))


@pytest.mark.skipif(CUDA, reason="about CPU tensors on a machine without CUDA")
def test_triton_backend_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    from glai_kernels import glai_mlp
    from glai_kernels.backend import resolve_backend

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        resolve_backend("triton", torch.device("cpu"))
    x, w = torch.randn(4, 3), [torch.randn(5, 3), torch.randn(2, 5)]
    pattern = [torch.zeros(4, 1, dtype=PATTERN_DTYPE)]
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        glai_mlp(x, w, None, pattern, backend="triton")
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
