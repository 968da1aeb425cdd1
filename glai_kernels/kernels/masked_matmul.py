"""The masked GEMM: ``out = p * (A B + b)`` with the pattern ``p`` read as bits in the epilogue.

One kernel serves two ops of docs/design.md section 4, which differ only in how ``B`` is addressed:

- masked forward, ``h_l = p_l * (h_{l-1} W_l^T + b_l)``: ``B = W^T`` (strides of ``W`` swapped), with a bias;
- backward data, ``g_{l-1} = (g_l W_l) * p_{l-1}``: ``B = W``, no bias.

The gate multiplies (``p * z``, with ``p`` in {0, 1}) rather than selects, so a NaN or inf in a closed unit
still propagates, exactly as the formula and the PyTorch reference do.

Two main loops (``TMA``): a program per output tile that loads through pointers (any strides, any GPU, the
interpreter), or a persistent grid of one program per multiprocessor walking the tiles in grouped order and
loading through tensor descriptors (sm_90 and a Triton that has them).
"""

import triton
import triton.language as tl

from .bits import apply_pattern
from .dropout import drop
from .tiles import affine_tile, tile_count


@triton.jit
def _masked_tile(
    tile, a_ptr, b_ptr, bias_ptr, words_ptr, out_ptr, M, N, K,
    stride_am, stride_ak, stride_bk, stride_bn, stride_bias, stride_pm, stride_pw, stride_om, stride_on,
    HAS_BIAS: tl.constexpr, HAS_GATE: tl.constexpr, REDUCTION: tl.constexpr, WORD_BITS: tl.constexpr,
    TMA: tl.constexpr, B_KN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    seed_ptr, drop_layer, DROP_T: tl.constexpr, DROP_SCALE: tl.constexpr,
):  # fmt: skip
    z, pid_n, offs_m, _, rows = affine_tile(
        tile, a_ptr, b_ptr, bias_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn, stride_bias,
        HAS_BIAS, TMA, B_KN, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, UPCAST, PRECISION,
    )  # fmt: skip
    if HAS_GATE and REDUCTION & (REDUCTION - 1) and BLOCK_N >= 256:
        # A reduction that is not a power of two reads a word index and a shift per column; a wide tile is
        # finished in two halves so that those and the tile fit the registers together.
        n0 = pid_n * BLOCK_N
        z0, z1 = tl.split(tl.permute(tl.reshape(z, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1)))
        _gate_store(z0, rows, offs_m, n0, words_ptr, out_ptr, M, N, stride_pm, stride_pw, stride_om, stride_on,
                    HAS_GATE, REDUCTION, WORD_BITS, BLOCK_N // 2, seed_ptr, drop_layer, DROP_T,
                    DROP_SCALE)  # fmt: skip
        _gate_store(z1, rows, offs_m, n0 + BLOCK_N // 2, words_ptr, out_ptr, M, N, stride_pm, stride_pw,
                    stride_om, stride_on, HAS_GATE, REDUCTION, WORD_BITS, BLOCK_N // 2, seed_ptr, drop_layer,
                    DROP_T, DROP_SCALE)  # fmt: skip
    else:
        _gate_store(z, rows, offs_m, pid_n * BLOCK_N, words_ptr, out_ptr, M, N, stride_pm, stride_pw, stride_om,
                    stride_on, HAS_GATE, REDUCTION, WORD_BITS, BLOCK_N, seed_ptr, drop_layer, DROP_T,
                    DROP_SCALE)  # fmt: skip


@triton.jit
def _gate_store(
    z, rows, offs_m, n0, words_ptr, out_ptr, M, N, stride_pm, stride_pw, stride_om, stride_on,
    HAS_GATE: tl.constexpr, REDUCTION: tl.constexpr, WORD_BITS: tl.constexpr, BLOCK_N: tl.constexpr,
    seed_ptr, drop_layer, DROP_T: tl.constexpr, DROP_SCALE: tl.constexpr,
):  # fmt: skip
    """Gate the tile ``z`` of columns ``n0 ..`` by the pattern (when ``HAS_GATE``), drop units of hidden layer
    ``drop_layer`` (when ``DROP_T``: ``kernels/dropout.py``, after the gate, as ``nn.Dropout`` after a ReLU)
    and store it."""
    BLOCK_M: tl.constexpr = z.shape[0]
    if HAS_GATE:
        z = apply_pattern(
            z, words_ptr, rows, n0, N, stride_pm, stride_pw, BLOCK_M, BLOCK_N, REDUCTION, WORD_BITS
        )
    offs_n = n0 + tl.arange(0, BLOCK_N)
    if DROP_T > 0:
        z = drop(z, seed_ptr, drop_layer, rows, offs_n, DROP_T, DROP_SCALE)
    out_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :] * stride_on
    tl.store(out_ptrs, z.to(out_ptr.dtype.element_ty), mask=(offs_m < M)[:, None] & (offs_n < N)[None, :])


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
    TMA: tl.constexpr,
    B_KN: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    seed_ptr=None,
    drop_layer=0,
    DROP_T: tl.constexpr = 0,
    DROP_SCALE: tl.constexpr = 1.0,
):
    """``out[M, N] = p * (A[M, K] B[K, N] + bias)``; unit (column) ``n`` reads structural bit
    ``n // REDUCTION`` of its row's pattern. With ``DROP_T > 0`` the result is then dropped out as hidden
    layer ``drop_layer``'s units are, from the step's seed at ``seed_ptr`` (``kernels/dropout.py``). With ``TMA``, ``a_ptr`` and ``b_ptr`` are tensor descriptors
    (``B`` stored as ``[K, N]`` when ``B_KN``, else as ``[N, K]``) and the grid is persistent."""
    if TMA:
        for tile in tl.range(
            tl.program_id(0), tile_count(M, N, BLOCK_M, BLOCK_N), tl.num_programs(0), flatten=True
        ):
            _masked_tile(
                tile, a_ptr, b_ptr, bias_ptr, words_ptr, out_ptr, M, N, K, stride_am, stride_ak, stride_bk,
                stride_bn, stride_bias, stride_pm, stride_pw, stride_om, stride_on, HAS_BIAS, HAS_GATE,
                REDUCTION, WORD_BITS, True, B_KN, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, UPCAST, PRECISION,
                seed_ptr, drop_layer, DROP_T, DROP_SCALE,
            )  # fmt: skip
    else:
        _masked_tile(
            tl.program_id(0), a_ptr, b_ptr, bias_ptr, words_ptr, out_ptr, M, N, K, stride_am, stride_ak,
            stride_bk, stride_bn, stride_bias, stride_pm, stride_pw, stride_om, stride_on, HAS_BIAS, HAS_GATE,
            REDUCTION, WORD_BITS, False, B_KN, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, UPCAST, PRECISION,
            seed_ptr, drop_layer, DROP_T, DROP_SCALE,
        )  # fmt: skip
