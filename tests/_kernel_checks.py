"""Helpers of the kernel tests: devices and dtypes, fresh inputs, NaN-poisoned outputs, and the relative error
against the float64 reference (docs/design.md section 5)."""

import torch

from glai_kernels.layout import PATTERN_DTYPE, words_for

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
# The interpreter's bf16 dot is wrong: bf16 runs on a GPU only (there the kernels see real bf16 operands).
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])
TOL = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 1e-2}
# A configuration that differs from the default one in every tile size, to show `config=` is honoured.
OTHER_CONFIG = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 2, "num_warps": 2, "num_stages": 2}
WORD_POISON = 0x5A5A5A5A


# The largest relative error seen per dtype, printed after the kernel tests (visible with `pytest -s`).
WORST: dict = {}


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
