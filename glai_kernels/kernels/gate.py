"""The structural gate: ``a_l = relu(a_{l-1} W^T + b)`` and the packed pattern of ``a_l > 0``, in one pass.

The pattern is written from the GEMM epilogue, while the pre-activation is still in registers: no float mask
and no second pass over ``a_l`` ever reach memory.
"""

import triton
import triton.language as tl

from .bits import pack_bits
from .tiles import affine_tile


@triton.jit
def gate_kernel(
    a_ptr,
    w_ptr,
    bias_ptr,
    out_ptr,
    words_ptr,
    M,
    N,
    K,
    stride_am,
    stride_ak,
    stride_wn,
    stride_wk,
    stride_bias,
    stride_om,
    stride_on,
    stride_pm,
    stride_pw,
    HAS_BIAS: tl.constexpr,
    WORD_BITS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """``out = relu(a W^T + b)`` ``[M, N]`` and ``words`` ``[M, ceil(N / WORD_BITS)]``.

    ``BLOCK_N`` must be a multiple of ``WORD_BITS`` (a tile packs whole words)."""
    # W^T is read in place: element (k, n) of B = W^T sits at w_ptr + n * stride_wn + k * stride_wk.
    z, pid_n, offs_m, offs_n, _ = affine_tile(
        a_ptr, w_ptr, bias_ptr, M, N, K, stride_am, stride_ak, stride_wk, stride_wn, stride_bias,
        HAS_BIAS, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, UPCAST, PRECISION,
    )  # fmt: skip

    in_m = offs_m < M
    in_n = offs_n < N
    # torch.relu keeps NaN (NaN > 0 is false, so a plain select would turn it into 0); the pattern bit of a
    # NaN unit is 0, as `z > 0` gives in the reference.
    relu = tl.where((z > 0) | (z != z), z, 0.0)
    out_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :] * stride_on
    tl.store(out_ptrs, relu.to(out_ptr.dtype.element_ty), mask=in_m[:, None] & in_n[None, :])

    # Columns past N (wrapped copies of real ones) must be padding bits, which are 0.
    fire = ((z > 0) & in_n[None, :]).to(tl.int32)
    packed = pack_bits(fire, BLOCK_M, BLOCK_N, WORD_BITS)
    # The tile's first column is a multiple of BLOCK_N, hence of WORD_BITS: its first word is that column
    # divided by WORD_BITS.
    offs_w = pid_n * (BLOCK_N // WORD_BITS) + tl.arange(0, BLOCK_N // WORD_BITS)
    n_words = tl.cdiv(N, WORD_BITS)
    words_ptrs = words_ptr + offs_m.to(tl.int64)[:, None] * stride_pm + offs_w[None, :] * stride_pw
    tl.store(words_ptrs, packed, mask=in_m[:, None] & (offs_w < n_words)[None, :])
