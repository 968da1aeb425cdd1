"""The fused head kernels against the float64 PyTorch reference, one kernel at a time.

Without CUDA they run under Triton's interpreter with its small configuration (``BLOCK_M`` 16, ``CHUNK`` 32),
so widths above 32 take the chunked path and widths up to 32 the register path. Shapes are odd on purpose
(widths 1, 17, 33, 100, 256; depth 1 to 4; batch 1, 33, 300; in 7 and 300; out 1, 10 and 130), a covering
subset rather than the product. Every output is preallocated and filled with NaN (patterns with a garbage
word) before the launch, so an element a kernel forgets to write fails.
"""

import pytest
import torch

from glai_kernels import reference as ref
from glai_kernels.layout import PATTERN_DTYPE, pack_patterns, unit_mask, unpack_patterns, words_for

fl = pytest.importorskip("glai_kernels.fused_launch", reason="the fused kernels need Triton")

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
TOL = {F32: 1e-5, F16: 5e-3, BF16: 1e-2}
WORST: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _report_worst():
    yield
    if WORST:
        print(
            "\nfused kernels, largest relative error vs float64: "
            + ", ".join(f"{k}: {v:.2e}" for k, v in WORST.items())
        )


def rel_err(out, expected) -> float:
    diff = (out.double() - expected.double()).norm().item()
    return diff / max(expected.double().norm().item(), 1e-300)


def check(out, expected, dtype, what):
    assert out.dtype == dtype, f"{what}: dtype {out.dtype}, expected {dtype}"
    assert out.shape == expected.shape, f"{what}: shape {tuple(out.shape)}, expected {tuple(expected.shape)}"
    err = rel_err(out, expected)
    key = str(dtype).replace("torch.", "")
    if err == err:
        WORST[key] = max(WORST.get(key, 0.0), err)
    assert err <= TOL[dtype], f"{what}: relative error {err:.3e} > {TOL[dtype]:.0e} ({dtype})"


def nan(*shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)


def garbage_words(batch, n):
    return torch.full((batch, words_for(n)), 0x5A5A5A5A, dtype=PATTERN_DTYPE, device=DEVICE)


def randn(g, *shape, dtype, scale=1.0, strided=False):
    """Fresh normal values; ``strided``: a non-contiguous view (every other column of a transposed buffer)."""
    if not strided:
        return (torch.randn(*shape, generator=g) * scale).to(DEVICE, dtype)
    m, n = shape
    big = (torch.randn(2 * n + 1, m + 3, generator=g) * scale).to(DEVICE, dtype)
    return big.t()[1 : m + 1, 1 : 2 * n + 1 : 2]


def rand_words(g, batch, n, strided=False):
    """Random packed patterns with random padding bits (consumers must ignore bits past ``n``)."""
    w = words_for(n)
    raw = torch.randint(-(2**31), 2**31, (batch, w + (3 if strided else 0)), generator=g, dtype=torch.int64)
    raw = raw.to(torch.int32).to(DEVICE)
    return raw[:, 1 : w + 1] if strided else raw


def stack(g, IN, hidden, OUT, dtype, bias, strided=False):
    dims = (IN, *hidden, OUT)
    ws = [randn(g, b, a, dtype=dtype, scale=a**-0.5, strided=strided) for a, b in zip(dims[:-1], dims[1:])]
    bs = [randn(g, b, dtype=dtype) if bias else None for b in dims[1:]]
    return ws, bs


def f64(t):
    return None if t is None else t.double()


def gated_bits_agree(words, z, what):
    """The kernel's pattern bits equal ``z > 0`` except where ``z`` is within rounding of 0."""
    n = z.shape[1]
    near = z.abs() <= 1e-2 * z.abs().max()
    bits = unpack_patterns(words, n)
    assert torch.equal(bits | near, (z > 0) | near), f"{what}: pattern bits differ from the reference"
    pad = words_for(n) * 32 - n
    if pad:  # padding bits are 0
        assert not unpack_patterns(words, words_for(n) * 32)[:, n:].any(), f"{what}: padding bits set"


GIVEN, STRUCTURAL, FROM_STRUCTURE = 0, 1, 2
FORWARD_CASES = [  # (batch, in, hidden, out, r, mode, dtype, bias, strided)
    (1, 7, (17,), 1, 1, GIVEN, F32, True, False),
    (33, 300, (33, 100), 10, 1, STRUCTURAL, F32, True, True),
    (300, 7, (256,), 130, 4, GIVEN, F16, True, True),
    (33, 7, (1, 17, 33, 100), 10, 1, FROM_STRUCTURE, F32, False, False),
    (33, 300, (100, 36), 130, 2, FROM_STRUCTURE, F16, True, False),
    (33, 7, (256, 33), 10, 1, STRUCTURAL, F16, False, False),
    (33, 7, (100, 100, 100), 1, 4, FROM_STRUCTURE, F32, True, False),
    (33, 7, (512,), 10, 2, GIVEN, F32, True, False),  # the widest the fused path takes
] + ([(300, 300, (100, 36), 130, 2, FROM_STRUCTURE, BF16, True, True)] if CUDA else [])  # bf16: a GPU only


@pytest.mark.parametrize("M,IN,hidden,OUT,r,mode,dtype,bias,strided", FORWARD_CASES)
def test_forward(M, IN, hidden, OUT, r, mode, dtype, bias, strided):
    g = torch.Generator().manual_seed(M * 7919 + IN * 31 + sum(hidden) + OUT + mode)
    ws, bs = stack(g, IN, hidden, OUT, dtype, bias, strided)
    x = randn(g, M, IN, dtype=dtype, strided=strided)
    s_n = [n // r for n in hidden] if mode != STRUCTURAL else list(hidden)
    patterns = structure = None
    if mode == GIVEN:
        patterns = [rand_words(g, M, n, strided) for n in s_n]
    if mode == FROM_STRUCTURE:
        s_ws, s_bs = stack(g, IN, s_n, 1, dtype, bias)
        structure = (s_ws[:-1], s_bs[:-1])
    out = (
        nan(M, OUT, dtype=dtype),
        [nan(M, n, dtype=dtype) for n in hidden],
        [garbage_words(M, n) for n in s_n],
    )
    y, hid, words = fl.forward(x, ws, bs, mode, r, patterns, structure, out=out)
    assert y is out[0] and all(a is b for a, b in zip(hid, out[1]))
    if mode == FROM_STRUCTURE:  # the structural chain's bits, against its float64 reference
        a = f64(x)
        for i, (w, b) in enumerate(zip(*structure)):
            z = torch.nn.functional.linear(a, f64(w), f64(b))
            gated_bits_agree(words[i], z, f"structure layer {i}")
            a = torch.relu(z)
    # The float64 reference, gated by the kernel's patterns (which match the reference's away from z = 0).
    h, gate_r = f64(x), 1 if mode == STRUCTURAL else r
    for i, (w, b) in enumerate(zip(ws, bs)):
        if i == len(hidden):
            check(y, ref.masked_forward(h, f64(w), f64(b), None, 1), dtype, "y")
            break
        z = torch.nn.functional.linear(h, f64(w), f64(b))
        if mode == STRUCTURAL:
            gated_bits_agree(words[i], z, f"layer {i}")
        h = z * unit_mask(words[i], hidden[i], gate_r).double()
        check(hid[i], h, dtype, f"hidden output {i}")


DATA_CASES = [  # (batch, in, hidden, out, r, dtype, lowest, need_dx, strided)
    (1, 7, (17,), 1, 1, F32, 0, True, False),
    (33, 300, (100, 36), 10, 2, F16, 0, True, True),
    (33, 7, (256, 256), 130, 4, F32, 1, False, False),
    (33, 7, (1, 17, 33, 100), 10, 1, F16, 2, False, False),
    (33, 300, (256,), 130, 1, F32, 0, True, True),
] + ([(300, 300, (100, 36), 130, 2, BF16, 0, True, True)] if CUDA else [])


@pytest.mark.parametrize("M,IN,hidden,OUT,r,dtype,lowest,need_dx,strided", DATA_CASES)
def test_grad_data(M, IN, hidden, OUT, r, dtype, lowest, need_dx, strided):
    g = torch.Generator().manual_seed(M * 31 + IN + sum(hidden) * 7 + OUT)
    ws, _ = stack(g, IN, hidden, OUT, dtype, False, strided)
    words = [rand_words(g, M, n // r, strided) for n in hidden]
    dy = randn(g, M, OUT, dtype=dtype, strided=strided)
    out_g = [nan(M, n, dtype=dtype) if i >= lowest else None for i, n in enumerate(hidden)]
    out_dx = nan(M, IN, dtype=dtype) if need_dx else None
    grads, dx = fl.grad_data(dy, ws, words, r, lowest, need_dx, out=(out_g, out_dx))
    gr = f64(dy)
    for i in range(len(hidden), lowest, -1):
        gr = ref.backward_data(gr, f64(ws[i]), words[i - 1], r)
        check(grads[i - 1], gr, dtype, f"gradient at hidden layer {i - 1}")
    assert all(t is None for t in grads[:lowest])
    if need_dx:
        check(dx, ref.backward_data(gr, f64(ws[0]), None, r), dtype, "dx")
    else:
        assert dx is None


WEIGHT_CASES = [  # (batch, in, hidden, out, dtype, first, splits, bias)
    (1, 7, (17,), 1, F32, 0, 1, True),
    (33, 300, (33, 100), 10, F16, 0, 3, True),
    (300, 7, (256,), 130, F32, 1, 2, False),
    (300, 7, (100, 36, 17), 1, F16, 0, 4, True),
    (33, 7, (1, 17, 33, 100), 10, F32, 2, 1, True),
] + ([(3000, 300, (100, 36), 130, BF16, 0, 4, True)] if CUDA else [])


@pytest.mark.parametrize("M,IN,hidden,OUT,dtype,first,splits,bias", WEIGHT_CASES)
def test_grad_weights(M, IN, hidden, OUT, dtype, first, splits, bias, monkeypatch):
    """Every layer's dW and db in one launch; with splits > 1 the batch is cut and the partials are added in
    split order by the last program of each tile."""
    g = torch.Generator().manual_seed(M + IN * 3 + sum(hidden) + OUT * 5 + splits)
    dims = (IN, *hidden, OUT)
    L = len(dims) - 1
    grads = [randn(g, M, n, dtype=dtype, scale=M**-0.5) for n in dims[1:]]
    inputs = [randn(g, M, k, dtype=dtype, strided=(i == 0)) for i, k in enumerate(dims[:-1])]
    has_bias = [bias] * L
    out = (
        [nan(dims[i + 1], dims[i], dtype=dtype) if i >= first else None for i in range(L)],
        [nan(dims[i + 1], dtype=dtype) if i >= first and bias else None for i in range(L)],
    )
    if splits == 1:  # the default configuration, remembered per signature
        dws, dbs = fl.grad_weights(grads, inputs, has_bias, first, out=out)
    else:
        with_splits = {**fl.resolved_config(DEVICE, None)["weights"], "SPLITS": splits}
        monkeypatch.setitem(fl._CONFIGS, DEVICE, {**fl.resolved_config(DEVICE, None), "weights": with_splits})
        monkeypatch.setattr(fl, "_STATIC", {})
        dws, dbs = fl.grad_weights(grads, inputs, has_bias, first, out=out)
    for i in range(L):
        if i < first:
            assert dws[i] is None and dbs[i] is None
            continue
        rw, rb = ref.backward_weights(f64(grads[i]), f64(inputs[i]), bias)
        check(dws[i], rw, dtype, f"dW of layer {i}")
        if bias:
            check(dbs[i], rb, dtype, f"db of layer {i}")


def test_grad_weights_bit_identical_across_splits_runs():
    """The same launch twice gives the same bits (no atomics in the sums, fixed split order)."""
    g = torch.Generator().manual_seed(3)
    grads = [randn(g, 300, n, dtype=F32) for n in (33, 10)]
    inputs = [randn(g, 300, k, dtype=F32) for k in (7, 33)]
    cfg = dict(fl.resolved_config(DEVICE, None)["weights"], SPLITS=3)
    first = fl.grad_weights(grads, inputs, [True, True], 0, config={"weights": cfg})
    second = fl.grad_weights(grads, inputs, [True, True], 0, config={"weights": cfg})
    for a, b in zip(first[0] + first[1], second[0] + second[1]):
        assert torch.equal(a, b)


def test_empty_batch_launches_nothing_and_gives_zero_weight_gradients():
    g = torch.Generator().manual_seed(4)
    ws, bs = stack(g, 7, (17,), 10, F32, True)
    x = torch.empty(0, 7, device=DEVICE)
    y, hid, words = fl.forward(x, ws, bs, STRUCTURAL)
    assert y.shape == (0, 10) and hid[0].shape == (0, 17) and words[0].shape == (0, 1)
    dws, dbs = fl.grad_weights([torch.empty(0, 17), torch.empty(0, 10)], [x, hid[0]], [True, True], 0)
    assert all(t.shape == w.shape and not t.any() for t, w in zip(dws, ws))
    assert all(not t.any() for t in dbs)


def test_structural_forward_keeps_nan_as_relu_does():
    """relu(NaN) is NaN and its bit 0; +inf stays with bit 1; -inf gives 0 (torch.relu), not 0 * inf."""
    g = torch.Generator().manual_seed(6)
    ws, bs = stack(g, 7, (17,), 10, F32, True)
    x = randn(g, 5, 7, dtype=F32)
    x[1, 0] = float("nan")
    bs[0][3], bs[0][4] = float("inf"), -float("inf")
    _, hid, words = fl.forward(x, ws, bs, STRUCTURAL)
    z = torch.nn.functional.linear(x, ws[0], bs[0])
    assert torch.equal(torch.isnan(hid[0]), torch.isnan(torch.relu(z)))
    assert torch.equal(unpack_patterns(words[0], 17), z > 0)
    assert torch.equal(pack_patterns(z > 0), words[0])
    finite_rows = [i for i in range(5) if i != 1]
    assert (hid[0][finite_rows, 4] == 0).all() and (hid[0][finite_rows, 3] == float("inf")).all()
