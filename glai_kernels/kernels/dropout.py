"""The dropout keep-mask inside a kernel: a pure function of ``(seed, layer, row, col)``.

``keep = philox(seed; col, row, layer, 0)[0] >> 1 >= THRESHOLD``: Philox-4x32-10 (Salmon et al. 2011, the
generator behind ``tl.rand`` and torch's CUDA dropout) keyed by the step's 64-bit seed, one counter per element
(column, row and layer in three of its four 32-bit words, so no two elements of a step share a counter for rows
below ``2**32``). Each element's bits depend on nothing else: a forward tile, a backward tile of any shape, the
per-layer kernels, the fused ones and the test helper all get the same bit for the same element. Nothing is
stored; the backward calls the same function again. ``THRESHOLD = round(p 2**31)`` (host side,
``glai_kernels.dropout.threshold``): a unit is kept with probability ``1 - p`` to within ``2**-31``.
"""

import triton
import triton.language as tl
from triton.language.random import philox


@triton.jit
def keep_bits(seed, layer, rows, cols, THRESHOLD: tl.constexpr):
    """The bool keep-mask ``[len(rows), len(cols)]`` of hidden layer ``layer`` (rows and cols: int tensors)."""
    r = rows[:, None] + tl.zeros_like(cols)[None, :]
    c = cols[None, :] + tl.zeros_like(rows)[:, None]
    zero = tl.zeros_like(r).to(tl.uint32)
    bits, _, _, _ = philox(seed, c.to(tl.uint32), r.to(tl.uint32), zero + layer, zero, 10)
    return (bits >> 1).to(tl.int32) >= THRESHOLD


@triton.jit
def drop(z, seed_ptr, layer, rows, cols, THRESHOLD: tl.constexpr, SCALE: tl.constexpr):
    """``z * m / (1 - p)``: inverted dropout of the fp32 tile ``z`` (a product, as ``nn.Dropout``'s: a NaN or
    inf in a dropped unit stays NaN). The seed is read from device memory: no host synchronisation."""
    seed = tl.load(seed_ptr)
    return z * tl.where(keep_bits(seed, layer, rows, cols, THRESHOLD), SCALE, 0.0)


@triton.jit
def keep_mask_kernel(seed_ptr, out_ptr, M, N, layer, THRESHOLD: tl.constexpr, SCALE: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    """``out[M, N]`` (fp32, row-major) = the mask the kernels apply to layer ``layer``: ``0`` or ``SCALE``."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    ones = tl.full((BLOCK_M, BLOCK_N), 1.0, tl.float32)
    m = drop(ones, seed_ptr, layer, rows, cols, THRESHOLD, SCALE)
    ok = (rows < M)[:, None] & (cols < N)[None, :]
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * N + cols[None, :], m, mask=ok)
