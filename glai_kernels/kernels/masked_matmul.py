"""The masked GEMM: ``out = p * (A B + b)`` with the pattern ``p`` read as bits in the epilogue.

One kernel serves two ops of DESIGN section 4, which differ only in how ``B`` is addressed:

- masked forward, ``h_l = p_l * (h_{l-1} W_l^T + b_l)``: ``B = W^T`` (strides of ``W`` swapped), with a bias;
- backward data, ``g_{l-1} = (g_l W_l) * p_{l-1}``: ``B = W``, no bias.

The gate multiplies (``p * z``, with ``p`` in {0, 1}) rather than selects, so a NaN or inf in a closed unit
still propagates, exactly as the formula and the PyTorch reference do.
"""

import triton
import triton.language as tl

from .bits import tile_bits
from .tiles import affine_tile


@triton.jit
def masked_matmul_kernel(
    a_ptr,
    b_ptr,
    bias_ptr,
    words_ptr,
    out_ptr,
    M,
    N,
    K,
    stride_am,
    stride_ak,
    stride_bk,
    stride_bn,
    stride_bias,
    stride_pm,
    stride_pw,
    stride_om,
    stride_on,
    HAS_BIAS: tl.constexpr,
    HAS_GATE: tl.constexpr,
    REDUCTION: tl.constexpr,
    WORD_BITS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """``out[M, N] = p * (A[M, K] B[K, N] + bias)``; unit (column) ``n`` reads structural bit
    ``n // REDUCTION`` of its row's pattern."""
    z, pid_n, offs_m, offs_n, rows = affine_tile(
        a_ptr, b_ptr, bias_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn, stride_bias,
        HAS_BIAS, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, UPCAST, PRECISION,
    )  # fmt: skip
    if HAS_GATE:
        p = tile_bits(
            words_ptr, rows, pid_n * BLOCK_N, N, stride_pm, stride_pw, BLOCK_M, BLOCK_N, REDUCTION, WORD_BITS
        )
        z = z * p.to(tl.float32)
    out_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :] * stride_on
    tl.store(out_ptrs, z.to(out_ptr.dtype.element_ty), mask=(offs_m < M)[:, None] & (offs_n < N)[None, :])
