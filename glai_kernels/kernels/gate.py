"""The structural gate: ``a_l = relu(a_{l-1} W^T + b)`` and the packed pattern of ``a_l > 0``, in one pass.

The pattern is written from the GEMM epilogue, while the pre-activation is still in registers: no float mask
and no second pass over ``a_l`` ever reach memory. The ReLU output itself is written only when asked
(``RELU_OUT``): the last layer of a structural stack feeds no other gate, so only its pattern is wanted.
The main loop is the pointer one or the persistent TMA one, as in :mod:`.masked_matmul`.
"""

import triton
import triton.language as tl

from .bits import pack_bits
from .tiles import affine_tile, tile_count


@triton.jit
def _epilogue(
    z, offs_m, n0, out_ptr, words_ptr, M, N, stride_om, stride_on, stride_pm, stride_pw,
    RELU_OUT: tl.constexpr, WORD_BITS: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Store ``relu(z)`` (when ``RELU_OUT``) and the packed words of ``z > 0`` for columns ``n0 ..``; ``n0`` is
    a multiple of ``WORD_BITS``."""
    BLOCK_M: tl.constexpr = z.shape[0]
    offs_n = n0 + tl.arange(0, BLOCK_N)
    in_m = offs_m < M
    in_n = offs_n < N
    if RELU_OUT:
        # torch.relu keeps NaN (NaN > 0 is false, so a plain select would turn it into 0); the pattern bit of
        # a NaN unit is 0, as `z > 0` gives in the reference.
        relu = tl.where((z > 0) | (z != z), z, 0.0).to(out_ptr.dtype.element_ty)
        out_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :] * stride_on
        tl.store(out_ptrs, relu, mask=in_m[:, None] & in_n[None, :])
        # The bits come from the stored (rounded) output, as the reference's come from its output dtype: the
        # fp32 tile is dead once converted, and a 16-bit output holds half its registers. Compared in fp32
        # (exact for every output dtype): Triton's interpreter compares bf16 values as their raw bits, where a
        # NaN is > 0.
        fire = ((relu.to(tl.float32) > 0) & in_n[None, :]).to(tl.int32)
    else:
        # Columns past N (wrapped copies of real ones) must be padding bits, which are 0.
        fire = ((z > 0) & in_n[None, :]).to(tl.int32)
    packed = pack_bits(fire, BLOCK_M, BLOCK_N, WORD_BITS)
    offs_w = n0 // WORD_BITS + tl.arange(0, BLOCK_N // WORD_BITS)
    n_words = tl.cdiv(N, WORD_BITS)
    words_ptrs = words_ptr + offs_m.to(tl.int64)[:, None] * stride_pm + offs_w[None, :] * stride_pw
    tl.store(words_ptrs, packed, mask=in_m[:, None] & (offs_w < n_words)[None, :])


@triton.jit
def _gate_tile(
    tile, a_ptr, w_ptr, bias_ptr, out_ptr, words_ptr, M, N, K,
    stride_am, stride_ak, stride_wn, stride_wk, stride_bias, stride_om, stride_on, stride_pm, stride_pw,
    HAS_BIAS: tl.constexpr, RELU_OUT: tl.constexpr, WORD_BITS: tl.constexpr, TMA: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    # W^T is read in place: element (k, n) of B = W^T sits at w_ptr + n * stride_wn + k * stride_wk (with
    # TMA: W is described as it lies, [N, K]).
    z, pid_n, offs_m, _, _ = affine_tile(
        tile, a_ptr, w_ptr, bias_ptr, M, N, K, stride_am, stride_ak, stride_wk, stride_wn, stride_bias,
        HAS_BIAS, TMA, False, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, UPCAST, PRECISION,
    )  # fmt: skip
    n0 = pid_n * BLOCK_N
    if BLOCK_N >= 8 * WORD_BITS:
        # A wide tile is finished in two halves of whole words: the packing's temporaries of half the tile at a
        # time is what keeps a 128 x 256 tile's epilogue from spilling.
        z0, z1 = tl.split(tl.permute(tl.reshape(z, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1)))
        _epilogue(z0, offs_m, n0, out_ptr, words_ptr, M, N, stride_om, stride_on, stride_pm, stride_pw,
                  RELU_OUT, WORD_BITS, BLOCK_N // 2)  # fmt: skip
        _epilogue(z1, offs_m, n0 + BLOCK_N // 2, out_ptr, words_ptr, M, N, stride_om, stride_on, stride_pm,
                  stride_pw, RELU_OUT, WORD_BITS, BLOCK_N // 2)  # fmt: skip
    else:
        _epilogue(z, offs_m, n0, out_ptr, words_ptr, M, N, stride_om, stride_on, stride_pm, stride_pw,
                  RELU_OUT, WORD_BITS, BLOCK_N)  # fmt: skip


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
    RELU_OUT: tl.constexpr,
    WORD_BITS: tl.constexpr,
    TMA: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """``out = relu(a W^T + b)`` ``[M, N]`` (when ``RELU_OUT``) and ``words`` ``[M, ceil(N / WORD_BITS)]``.

    ``BLOCK_N`` must be a multiple of ``WORD_BITS`` (a tile packs whole words). With ``TMA``, ``a_ptr`` and
    ``w_ptr`` are tensor descriptors of ``a`` ``[M, K]`` and ``W`` ``[N, K]``, and the grid is persistent."""
    if TMA:
        for tile in tl.range(
            tl.program_id(0), tile_count(M, N, BLOCK_M, BLOCK_N), tl.num_programs(0), flatten=True
        ):
            _gate_tile(
                tile, a_ptr, w_ptr, bias_ptr, out_ptr, words_ptr, M, N, K, stride_am, stride_ak, stride_wn,
                stride_wk, stride_bias, stride_om, stride_on, stride_pm, stride_pw, HAS_BIAS, RELU_OUT,
                WORD_BITS, True, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, UPCAST, PRECISION,
            )  # fmt: skip
    else:
        _gate_tile(
            tl.program_id(0), a_ptr, w_ptr, bias_ptr, out_ptr, words_ptr, M, N, K, stride_am, stride_ak,
            stride_wn, stride_wk, stride_bias, stride_om, stride_on, stride_pm, stride_pw, HAS_BIAS, RELU_OUT,
            WORD_BITS, False, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, UPCAST, PRECISION,
        )  # fmt: skip
