"""The Triton kernels against the float64 PyTorch reference.

On a machine without CUDA these run under Triton's interpreter (conftest sets ``TRITON_INTERPRET=1`` before
anything imports the kernels), so shapes stay small and odd: batch {1, 33, 77}, widths {1, 31, 33, 100}, none
a multiple of a tile or of a pattern word. Outputs are preallocated and filled with NaN (int32 words with a
garbage pattern) before each launch, so an element a kernel forgets to write fails the comparison.
"""

import pytest
import torch

from glai_kernels import reference as ref
from glai_kernels.layout import PATTERN_DTYPE, unpack_patterns, words_for

triton_ops = pytest.importorskip("glai_kernels.triton_ops", reason="the Triton kernels need Triton")

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
# The interpreter's bf16 dot is wrong: bf16 runs on a GPU only (there the kernels see real bf16 operands).
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])
TOL = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 1e-2}
# A configuration that differs from the default one in every tile size, to show `config=` is honoured.
OTHER_CONFIG = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 2, "num_warps": 2, "num_stages": 2}
WORD_POISON = 0x5A5A5A5A


def tuning_config(kernel: str, M: int, N: int, K: int) -> dict:
    """The configuration the ops pick by default for a GEMM of output ``M x N``, reduction ``K``."""
    from glai_kernels.launch_configs import config_for

    return config_for(kernel, M, N, K, torch.float32)


# The largest relative error seen per dtype, printed after this module's tests (visible with `pytest -s`).
WORST: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _report_worst():
    yield
    if WORST:
        print("\nlargest relative error vs float64: " + ", ".join(f"{k}: {v:.2e}" for k, v in WORST.items()))


def rel_err(out: torch.Tensor, expected: torch.Tensor) -> float:
    """``||out - ref|| / ||ref||`` in float64; a NaN anywhere in ``out`` makes it NaN (and fails ``<=``)."""
    diff = (out.double() - expected.double()).norm().item()
    return diff / max(expected.double().norm().item(), 1e-300)


def assert_close_rel(out, expected, dtype, what=""):
    assert out.dtype == dtype, f"{what}: output dtype {out.dtype}, expected {dtype}"
    err = rel_err(out, expected)
    key = str(dtype).replace("torch.", "")
    if err == err:
        WORST[key] = max(WORST.get(key, 0.0), err)
    assert err <= TOL[dtype], f"{what}: relative error {err:.3e} > {TOL[dtype]:.0e} ({dtype})"


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, dtype, g, strided=False):
    """Fresh normal values (never zeros). ``strided``: a non-contiguous view of a larger tensor (every other
    column of a transposed buffer), so both strides differ from the contiguous ones."""
    if not strided:
        return torch.randn(*shape, generator=g).to(DEVICE, dtype)
    m, n = shape
    big = torch.randn(2 * n + 1, m + 3, generator=g).to(DEVICE, dtype)
    view = big.t()[1 : m + 1, 1 : 2 * n + 1 : 2]
    assert view.shape == (m, n) and not view.is_contiguous()
    return view


def rand_words(batch: int, units: int, g, strided=False):
    """Random packed patterns, padding bits included (consumers must ignore bits past ``units``)."""
    w = words_for(units)
    words = torch.randint(-(2**31), 2**31, (batch, w + (3 if strided else 0)), generator=g, dtype=torch.int64)
    words = words.to(torch.int32).to(DEVICE)
    return words[:, 1 : w + 1] if strided else words


def poison(*shape, dtype):
    if dtype == PATTERN_DTYPE:
        return torch.full(shape, WORD_POISON, dtype=dtype, device=DEVICE)
    return torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)


def f64(t):
    return None if t is None else t.double()


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
    relu, words = triton_ops.gate(a, w, b, out=out)
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
    relu, words = triton_ops.gate(a, w, b, out=out)
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
    relu, words = triton_ops.gate(a, w, None, out=out)
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
    out = triton_ops.masked_forward(h, w, b, words, r, out=poison(M, N, dtype=dtype))
    assert_close_rel(out, ref.masked_forward(f64(h), f64(w), f64(b), words, r), dtype, "masked_forward")


def test_masked_forward_strided_operands():
    M, K, N, r = 77, 33, 100, 2
    g = gen(11)
    h = randn(M, K, dtype=torch.float32, g=g, strided=True)
    w = randn(N, K, dtype=torch.float32, g=g, strided=True)
    b = randn(2 * N, dtype=torch.float32, g=g)[::2]
    words = rand_words(M, N // r, g, strided=True)
    out = poison(M, 2 * N, dtype=torch.float32)[:, ::2]  # a strided output is written in place, too
    res = triton_ops.masked_forward(h, w, b, words, r, out=out)
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
    out = triton_ops.masked_forward(h, w, b, words, 1, out=poison(M, N, dtype=torch.float32))
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
    out = triton_ops.masked_forward(h, w, b, words, r, config=cfg, out=poison(M, units, dtype=torch.float32))
    assert_close_rel(
        out, ref.masked_forward(f64(h), f64(w), f64(b), words, r), torch.float32, "masked_forward"
    )
    grad, w2 = randn(M, K, dtype=torch.float32, g=g), randn(K, units, dtype=torch.float32, g=g)
    out = triton_ops.backward_data(grad, w2, words, r, config=cfg, out=poison(M, units, dtype=torch.float32))
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
    out = triton_ops.backward_data(grad, w, words, r, out=poison(M, K, dtype=dtype))
    assert_close_rel(out, ref.backward_data(f64(grad), f64(w), words, r), dtype, "backward_data")


def test_backward_data_strided_operands():
    M, K, N, r = 33, 100, 33, 4
    g_ = gen(13)
    grad = randn(M, N, dtype=torch.float32, g=g_, strided=True)
    w = randn(N, K, dtype=torch.float32, g=g_, strided=True)
    words = rand_words(M, K // r, g_, strided=True)
    out = triton_ops.backward_data(grad, w, words, r, out=poison(M, K, dtype=torch.float32))
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
    dw, db = triton_ops.backward_weights(grad, h, has_bias, out=out)
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
        results.append(triton_ops.backward_weights(grad, h, has_bias, config=cfg, out=out))
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
    dw, db = triton_ops.backward_weights(
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
        "gate": triton_ops.gate(
            x, w, b, **kw((poison(M, N, dtype=dtype), poison(M, words_for(N), dtype=PATTERN_DTYPE)))
        ),
        "masked_forward": triton_ops.masked_forward(x, w, b, words, r, **kw(poison(M, N, dtype=dtype))),
        "backward_data": triton_ops.backward_data(grad, w, wd, 1, **kw(poison(M, K, dtype=dtype))),
        "backward_weights": triton_ops.backward_weights(
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
    from glai_kernels import launch_configs, triton_launch

    asked = []
    real = launch_configs.launch_config

    def spy(kernel, M, N, K, dtype, precision=None, device=None):
        asked.append((kernel, precision))
        return real(kernel, M, N, K, dtype, precision, device)

    monkeypatch.setattr(launch_configs, "launch_config", spy)
    monkeypatch.setattr(triton_launch, "dot_precision", lambda dtype: "tf32")
    triton_launch.PLANS.clear()  # plans made before are memoised with their own precision
    _run_all(seed=41)
    assert sorted(asked) == [
        (k, "tf32") for k in ("backward_data", "backward_weights", "gate", "masked_forward")
    ]
    triton_launch.PLANS.clear()


def test_empty_batch():
    w, b = torch.randn(33, 31, device=DEVICE), torch.randn(33, device=DEVICE)
    x = torch.randn(0, 31, device=DEVICE)
    relu, words = triton_ops.gate(x, w, b)
    assert relu.shape == (0, 33) and words.shape == (0, 2) and words.dtype == PATTERN_DTYPE
    assert triton_ops.masked_forward(
        x, w, b, torch.zeros(0, 2, dtype=PATTERN_DTYPE, device=DEVICE), 1
    ).shape == (0, 33)
    assert triton_ops.backward_data(torch.randn(0, 33, device=DEVICE), w, None, 1).shape == (0, 31)
    # The weight gradient of an empty batch is a sum of nothing: zeros, written by the kernel over NaN.
    dw, db = triton_ops.backward_weights(
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
        triton_ops.masked_forward(h, w, None, words, 2), ref.masked_forward(h, w, None, words, 2)
    )
    # `out` is checked on this path as on the others: no silent cast into a float32 buffer.
    with pytest.raises(TypeError, match="out must be torch.float64"):
        triton_ops.masked_forward(h, w, None, words, 2, out=torch.empty(5, 6, device=DEVICE))
    with pytest.raises(ValueError, match=r"out must have shape \(5, 7\)"):
        triton_ops.backward_data(
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
        triton_ops.masked_forward(x, w, None, torch.zeros(5, 2, dtype=PATTERN_DTYPE, device=DEVICE), 1)
    with pytest.raises(TypeError, match="int32"):
        triton_ops.masked_forward(x, w, None, torch.zeros(5, 1, device=DEVICE), 1)
    with pytest.raises(ValueError, match="must divide"):
        triton_ops.masked_forward(x, w, None, torch.zeros(5, 1, dtype=PATTERN_DTYPE, device=DEVICE), 4)
    with pytest.raises(TypeError, match="dtype"):
        triton_ops.masked_forward(x, w.half(), None, None, 1)
    with pytest.raises(ValueError, match="weight must have shape"):
        triton_ops.backward_data(torch.randn(5, 5, device=DEVICE), w, None, 1)
    with pytest.raises(ValueError, match="multiple of 32"):
        triton_ops.gate(x, w, None, config=dict(OTHER_CONFIG, BLOCK_N=16))
    with pytest.raises(ValueError, match="keys"):
        triton_ops.masked_forward(x, w, None, None, 1, config={"BLOCK_M": 32})
    with pytest.raises(ValueError, match="power of two"):
        triton_ops.masked_forward(x, w, None, None, 1, config=dict(OTHER_CONFIG, BLOCK_K=48))
    with pytest.raises(ValueError, match="out must have shape"):
        triton_ops.masked_forward(x, w, None, None, 1, out=torch.empty(5, 7, device=DEVICE))
    with pytest.raises(TypeError, match=r"gate: out must be a pair \(relu"):
        triton_ops.gate(x, w, None, out=torch.empty(5, 6, device=DEVICE))
    with pytest.raises(TypeError, match=r"backward_weights: out must be a pair \(dW .*got 1 items"):
        triton_ops.backward_weights(torch.randn(5, 6, device=DEVICE), x, True, out=(torch.empty(6, 7),))


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


# ----------------------------------------------------------------------------- persistent TMA loop, K-major copies
# Tensor descriptors need rows on 16-byte boundaries: these shapes are odd multiples of 8 (fp16 rows of 16
# bytes), none a multiple of a tile, so edge tiles and the K tail still come from the copy engine's zero fill.
TMA_CONFIG = dict(OTHER_CONFIG, BLOCK_K=16, TMA=1)


@pytest.fixture
def descriptors(monkeypatch):
    """Counts the tensor descriptors the launches build (0: the pointer loop ran)."""
    from glai_kernels import triton_launch

    if triton_launch.TensorDescriptor is None:
        pytest.skip("this Triton has no host tensor descriptors")
    made = []
    real = triton_launch.descriptor

    def spy(t, block):
        d = real(t, block)
        made.append(d is not None)
        return d

    monkeypatch.setattr(triton_launch, "descriptor", spy)
    return made


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("k_major", [0, 1], ids=["in-place", "k-major"])
def test_tma_loop_matches_the_reference(descriptors, dtype, k_major):
    """Every kernel through the persistent loop with tensor descriptors (3 programs walking every tile under
    the interpreter), with operands read in place or as K-major copies, split batch included."""
    M, K, N, r = 88, 40, 104, 2
    g_ = gen(53 + k_major)
    cfg = dict(TMA_CONFIG, K_MAJOR=k_major)
    x, w, b = randn(M, K, dtype=dtype, g=g_), randn(N, K, dtype=dtype, g=g_), randn(N, dtype=dtype, g=g_)
    words, wd, grad = rand_words(M, N // r, g_), rand_words(M, K, g_), randn(M, N, dtype=dtype, g=g_)

    def described(before):  # the op just called built its two operand descriptors
        assert len(descriptors) == before + 2 and all(descriptors), descriptors
        return len(descriptors)

    n = len(descriptors)
    out = triton_ops.masked_forward(x, w, b, words, r, config=cfg, out=poison(M, N, dtype=dtype))
    assert_close_rel(out, ref.masked_forward(f64(x), f64(w), f64(b), words, r), dtype, "masked_forward tma")
    n = described(n)
    out = triton_ops.backward_data(grad, w, wd, 1, config=cfg, out=poison(M, K, dtype=dtype))
    assert_close_rel(out, ref.backward_data(f64(grad), f64(w), wd, 1), dtype, "backward_data tma")
    n = described(n)
    relu, bits = triton_ops.gate(
        x, w, b, config=cfg, out=(poison(M, N, dtype=dtype), poison(M, words_for(N), dtype=PATTERN_DTYPE))
    )
    r_relu, r_bits = ref.gate(f64(x), f64(w), f64(b))
    assert_close_rel(relu, r_relu, dtype, "gate tma")
    assert (bits != r_bits).sum() <= 2  # a unit within rounding of 0 may flip
    n = described(n)
    for splits in (1, 3):
        dw, db = triton_ops.backward_weights(
            grad,
            x,
            True,
            config=dict(cfg, SPLIT_K=splits),
            out=(poison(N, K, dtype=dtype), poison(N, dtype=dtype)),
        )
        r_dw, r_db = ref.backward_weights(f64(grad), f64(x), True)
        assert_close_rel(dw, r_dw, dtype, f"dW tma, {splits} splits")
        assert_close_rel(db, r_db, dtype, f"db tma, {splits} splits")
        n = described(n)


def test_tma_falls_back_to_pointers_for_misaligned_operands(descriptors):
    """Rows that do not start on 16 bytes (K = 31 fp32) or a transposed activation cannot be described to the
    copy engine: the same configuration runs the pointer loop, with the same result."""
    M, K, N = 33, 31, 100
    g_ = gen(59)
    h, w, b = randn(M, K, dtype=torch.float32, g=g_), randn(N, K, dtype=torch.float32, g=g_), None
    out = triton_ops.masked_forward(
        h, w, b, None, 1, config=TMA_CONFIG, out=poison(M, N, dtype=torch.float32)
    )
    assert_close_rel(out, ref.masked_forward(f64(h), f64(w), None, None, 1), torch.float32, "misaligned")
    h2 = randn(M, 40, dtype=torch.float32, g=g_, strided=True)  # column-major-ish view: strides (1, ...)
    w2 = randn(N, 40, dtype=torch.float32, g=g_)
    out = triton_ops.masked_forward(
        h2, w2, b, None, 1, config=TMA_CONFIG, out=poison(M, N, dtype=torch.float32)
    )
    assert_close_rel(out, ref.masked_forward(f64(h2), f64(w2), None, None, 1), torch.float32, "strided")
    assert descriptors == []


# ----------------------------------------------------------------------------- gate without its ReLU output
def test_gate_without_relu_output(monkeypatch):
    """The last structural layer feeds no gate: only its pattern is written; the ReLU output is None."""
    M, K, N = 33, 31, 100
    g_ = gen(61)
    a, w = randn(M, K, dtype=torch.float32, g=g_), randn(N, K, dtype=torch.float32, g=g_)
    b = randn(N, dtype=torch.float32, g=g_)
    expected = ref.gate(f64(a), f64(w), f64(b))[1]
    out = (None, poison(M, words_for(N), dtype=PATTERN_DTYPE))
    relu, words = triton_ops.gate(a, w, b, relu_out=False, out=out)
    assert relu is None and words is out[1] and torch.equal(words, expected)
    relu, words = triton_ops.gate(a, w, b, relu_out=False)  # eager, allocating
    assert relu is None and torch.equal(words, expected)
    assert torch.equal(torch.ops.glai.gate(a, w, b, False)[1], expected)  # the custom op takes the flag too
    assert ref.gate(a, w, b, relu_out=False)[0] is None
    # structural_patterns asks for the ReLU output of every layer but the last.
    from glai_kernels import structural_patterns

    asked = []
    real = triton_ops.gate

    def spy(a, weight, bias, relu_out=True, **kw):
        asked.append(relu_out)
        return real(a, weight, bias, relu_out=relu_out, **kw)

    monkeypatch.setattr(triton_ops, "gate", spy)
    w2 = randn(7, N, dtype=torch.float32, g=g_)
    pats = structural_patterns(a, [w, w2], [b, None], backend="triton")
    assert asked == [True, False] and [p.shape for p in pats] == [(M, 4), (M, 1)]
    assert torch.equal(pats[0], expected)


@pytest.mark.parametrize("block_n,r", [(64, 5), (128, 3), (128, 6), (32, 3)])
def test_non_power_of_two_reduction(block_n, r):
    """A reduction that is not a power of two reads the few words each tile spans, without a per-element
    gather; unit j reads structural bit j // r across word and tile edges (41 structural units: the last word
    and the last tile are partial)."""
    M, K, units = 33, 31, 41 * r
    g_ = gen(block_n + r)
    cfg = dict(OTHER_CONFIG, BLOCK_N=block_n)
    h, w = randn(M, K, dtype=torch.float32, g=g_), randn(units, K, dtype=torch.float32, g=g_)
    b = randn(units, dtype=torch.float32, g=g_)
    words = rand_words(M, units // r, g_)
    out = triton_ops.masked_forward(h, w, b, words, r, config=cfg, out=poison(M, units, dtype=torch.float32))
    assert_close_rel(out, ref.masked_forward(f64(h), f64(w), f64(b), words, r), torch.float32, f"r={r}")
    grad, w2 = randn(M, K, dtype=torch.float32, g=g_), randn(K, units, dtype=torch.float32, g=g_)
    out = triton_ops.backward_data(grad, w2, words, r, config=cfg, out=poison(M, units, dtype=torch.float32))
    assert_close_rel(out, ref.backward_data(f64(grad), f64(w2), words, r), torch.float32, f"r={r} data")


# ----------------------------------------------------------------------------- host path
def test_out_must_not_overlap_the_inputs():
    M, K, N = 5, 8, 8
    x, w = torch.randn(M, K, device=DEVICE), torch.randn(N, K, device=DEVICE)
    with pytest.raises(ValueError, match="masked_forward: out is the input h"):
        triton_ops.masked_forward(x, w, None, None, 1, out=x)
    buf = torch.randn(M + N, K, device=DEVICE)
    with pytest.raises(ValueError, match="out overlaps the memory of the input weight"):
        triton_ops.masked_forward(x, buf[M - 2 : M - 2 + N], None, None, 1, out=buf[:M])
    g, h = torch.randn(M, N, device=DEVICE), torch.randn(M, K, device=DEVICE)
    with pytest.raises(ValueError, match=r"backward_weights: out\[0\] overlaps the memory of the input g"):
        triton_ops.backward_weights(g, h, False, out=(torch.as_strided(g, (N, K), (1, 1)), None))
    with pytest.raises(ValueError, match=r"gate: out\[1\] overlaps the memory of the input a"):
        triton_ops.gate(x, w, None, out=(torch.empty(M, N, device=DEVICE), x.view(PATTERN_DTYPE)[:, :1]))
    # Disjoint parts of one buffer are fine.
    res = triton_ops.masked_forward(x, buf[:N], None, None, 1, out=buf[N : N + M])
    assert res.data_ptr() == buf[N:].data_ptr()
    dw = torch.randn(N, K, device=DEVICE)
    assert triton_ops.backward_weights(g, h, False, out=(dw, None))[0] is dw


def test_checks_run_once_per_signature_and_again_for_a_new_one():
    from glai_kernels import triton_launch

    M, K, N = 9, 7, 40
    x, w = torch.randn(M, K, device=DEVICE), torch.randn(N, K, device=DEVICE)
    words = torch.zeros(M, 2, dtype=PATTERN_DTYPE, device=DEVICE)
    triton_ops.masked_forward(x, w, None, words, 1)
    before = len(triton_launch.PLANS)
    triton_ops.masked_forward(x.clone(), w.clone(), None, words.clone(), 1)  # same signature: no new plan
    assert len(triton_launch.PLANS) == before
    with pytest.raises(ValueError, match="words must have shape"):  # another signature is checked in full
        triton_ops.masked_forward(x, w, None, words[:, :1], 1)
    with pytest.raises(ValueError, match="must divide"):
        triton_ops.masked_forward(x, w, None, words, 3)
    with pytest.raises(TypeError, match="dtype"):
        triton_ops.masked_forward(x, w.double(), None, words, 1)


def test_eager_calls_skip_the_dispatcher_and_compile_keeps_the_custom_ops(monkeypatch):
    """An eager call launches directly (no ``torch.ops.glai`` dispatch, the host time that matters at small
    sizes); while torch.compile traces, the same call goes through the custom op."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    x, w = torch.randn(5, 7, device=DEVICE), torch.randn(6, 7, device=DEVICE)
    with Record() as rec:
        direct = triton_ops.masked_forward(x, w, None, None, 1)
    assert not any("glai" in op for op in rec.ops), rec.ops
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    with Record() as rec:
        through = triton_ops.masked_forward(x, w, None, None, 1)
    assert any("glai.masked_forward" in op for op in rec.ops), rec.ops
    assert torch.equal(direct, through)
