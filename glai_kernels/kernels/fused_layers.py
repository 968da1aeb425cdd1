"""One layer of a fused head, for a block of ``BLOCK_M`` rows: the building blocks of the fused kernels.

A fused program owns a block of rows and carries its activation from layer to layer as a register tile
``[BLOCK_M, PAD]``, ``PAD`` the layer's width rounded up to a power of two >= 16 (``tl.dot`` and ``tl.arange``
need both). Padded columns are exact zeros: the weight rows and columns past the real widths load as 0, and
the epilogue zeroes them again, so an inf in a real column can never turn a padded one into NaN.

Every layer computes ``A B (+ bias)`` and an epilogue; ``B`` is addressed through strides, so the forward
(``B = W^T``) and the data gradient (``B = W``) share the code. Three shapes of layer make a chain:

- :func:`layer_from_memory`: ``A`` read from memory in ``BLOCK_K`` steps (the input ``x``, or the upstream
  gradient ``dy``), any ``K``;
- :func:`layer_from_registers`: ``A`` is the register tile of the previous layer;
- :func:`layer_to_memory`: the last product, ``N`` any width, written in ``BLOCK_N`` tiles (the output ``y``,
  or ``dx``).

The first two return the next register tile. A wide output (``PAD > CHUNK``) is computed ``CHUNK`` columns
at a time, so that no weight block larger than ``[PAD_K, CHUNK]`` and no accumulator larger than
``[BLOCK_M, CHUNK]`` is live; each chunk is stored to the layer's saved output (which the backward needs
anyway) and, after a barrier, the whole tile is read back from there (the program's own writes, in L1/L2).
Without that split a 256-wide layer spills (see ``tests/_lower_fused.py``).

Epilogue gates (``GATE``): 0 none; 1 read from packed patterns (``p * z``, unit ``j`` reads structural bit
``j // REDUCTION``); 2 make them (``relu(z) = p z`` with ``p = [z > 0]``, NaN kept as ``torch.relu`` keeps it,
and the packed pattern written).
"""

import triton
import triton.language as tl

from .bits import apply_pattern, pack_bits
from .dropout import drop


@triton.jit
def mma(a, b, acc, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """``acc + a b`` in fp32. ``UPCAST``: fp32 operands (the interpreter's 16-bit dot is wrong)."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def b_block(b_ptr, k0, n0, K, N, stride_bk, stride_bn, BK: tl.constexpr, BN: tl.constexpr):
    """``B[k0 : k0 + BK, n0 : n0 + BN]``, zeros outside ``K x N``."""
    offs_k = k0 + tl.arange(0, BK)
    offs_n = n0 + tl.arange(0, BN)
    ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn
    return tl.load(ptrs, mask=(offs_k < K)[:, None] & (offs_n < N)[None, :], other=0.0)


@triton.jit
def row_block(ptr, rows_in, stride_m, stride_n, N, PAD: tl.constexpr):
    """The ``[BLOCK_M, PAD]`` tile of rows ``rows_in`` (valid indices), columns past ``N`` read as 0."""
    cols = tl.arange(0, PAD)
    ptrs = ptr + rows_in.to(tl.int64)[:, None] * stride_m + cols[None, :] * stride_n
    return tl.load(ptrs, mask=(cols < N)[None, :], other=0.0)


@triton.jit
def epilogue(
    z, rows_in, row_ok, n0, N,
    bias_ptr, stride_b, words_ptr, stride_pm, stride_pw, out_ptr, stride_om, stride_on,
    HAS_BIAS: tl.constexpr, GATE: tl.constexpr, SAVE: tl.constexpr, REDUCTION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WORD_BITS: tl.constexpr,
    seed_ptr, layer, DROP_T: tl.constexpr, DROP_SCALE: tl.constexpr,
):  # fmt: skip
    """Bias, gate, dropout and store of columns ``n0 .. n0 + BLOCK_N - 1`` of a layer with ``N`` units; returns
    the tile in the output's dtype (padded columns zero when gated). ``DROP_T > 0``: the units of hidden
    layer ``layer`` are dropped after the gate (the pattern is the pre-dropout sign), with the mask of
    ``kernels/dropout.py`` for the step's seed at ``seed_ptr``."""
    cols = n0 + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    if HAS_BIAS:
        z += tl.load(bias_ptr + cols * stride_b, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if GATE == 1:
        z = apply_pattern(
            z, words_ptr, rows_in, n0, N, stride_pm, stride_pw, BLOCK_M, BLOCK_N, REDUCTION, WORD_BITS
        )
        z = tl.where(col_ok[None, :], z, 0.0)
    elif GATE == 2:
        fire = (z > 0) & col_ok[None, :]
        z = tl.where(fire | ((z != z) & col_ok[None, :]), z, 0.0)
        bits = fire.to(tl.int32)
        if BLOCK_N >= WORD_BITS:  # whole words: the chunk starts on a word boundary
            packed = pack_bits(bits, BLOCK_M, BLOCK_N, WORD_BITS)
            offs_w = n0 // WORD_BITS + tl.arange(0, BLOCK_N // WORD_BITS)
            w_ptrs = words_ptr + rows_in.to(tl.int64)[:, None] * stride_pm + offs_w[None, :] * stride_pw
            tl.store(w_ptrs, packed, mask=row_ok[:, None] & (offs_w < tl.cdiv(N, WORD_BITS))[None, :])
        else:  # a narrow layer (N <= 16): its one word, from its first BLOCK_N bits
            word = tl.sum(bits << tl.arange(0, BLOCK_N)[None, :], axis=1)
            tl.store(words_ptr + rows_in.to(tl.int64) * stride_pm, word, mask=row_ok)
    if DROP_T > 0:
        z = drop(z, seed_ptr, layer, rows_in, cols, DROP_T, DROP_SCALE)
    h = z.to(out_ptr.dtype.element_ty)
    if SAVE:
        ptrs = out_ptr + rows_in.to(tl.int64)[:, None] * stride_om + cols[None, :] * stride_on
        tl.store(ptrs, h, mask=row_ok[:, None] & col_ok[None, :])
    return h


@triton.jit
def _k_loop(
    a_ptr, rows_in, stride_am, stride_ak, K, b_ptr, stride_bk, stride_bn, n0, N,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """``A[rows, :K] B[:K, n0 : n0 + BLOCK_N]`` in fp32, ``A`` read from memory."""
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + rows_in.to(tl.int64)[:, None] * stride_am + offs_k[None, :] * stride_ak
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        a = tl.load(a_ptrs, mask=(offs_k < K - k0)[None, :], other=0.0)
        b = b_block(b_ptr, k0, n0, K, N, stride_bk, stride_bn, BLOCK_K, BLOCK_N)
        acc = mma(a, b, acc, UPCAST, PRECISION)
        a_ptrs += BLOCK_K * stride_ak
    return acc


@triton.jit
def layer_from_memory(
    a_ptr, rows_in, row_ok, stride_am, stride_ak, K, b_ptr, stride_bk, stride_bn, N,
    bias_ptr, stride_b, words_ptr, stride_pm, stride_pw, out_ptr, stride_om, stride_on,
    HAS_BIAS: tl.constexpr, GATE: tl.constexpr, SAVE: tl.constexpr, REDUCTION: tl.constexpr,
    PAD_N: tl.constexpr, CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
    WORD_BITS: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    seed_ptr, layer, DROP_T: tl.constexpr, DROP_SCALE: tl.constexpr,
):  # fmt: skip
    """The register tile ``[BLOCK_M, PAD_N]`` of ``epilogue(A[rows, :K] B[:K, :N])``, ``A`` from memory.
    ``PAD_N > CHUNK`` needs ``SAVE`` (the output buffer stages the chunks)."""
    if PAD_N <= CHUNK:
        acc = _k_loop(a_ptr, rows_in, stride_am, stride_ak, K, b_ptr, stride_bk, stride_bn, 0, N,
                      BLOCK_M, PAD_N, BLOCK_K, UPCAST, PRECISION)  # fmt: skip
        h = epilogue(
            acc, rows_in, row_ok, 0, N, bias_ptr, stride_b, words_ptr, stride_pm, stride_pw, out_ptr,
            stride_om, stride_on, HAS_BIAS, GATE, SAVE, REDUCTION, BLOCK_M, PAD_N, WORD_BITS,
            seed_ptr, layer, DROP_T, DROP_SCALE,
        )  # fmt: skip
    else:
        for c in range(PAD_N // CHUNK):
            acc = _k_loop(a_ptr, rows_in, stride_am, stride_ak, K, b_ptr, stride_bk, stride_bn, c * CHUNK,
                          N, BLOCK_M, CHUNK, BLOCK_K, UPCAST, PRECISION)  # fmt: skip
            epilogue(
                acc, rows_in, row_ok, c * CHUNK, N, bias_ptr, stride_b, words_ptr, stride_pm, stride_pw,
                out_ptr, stride_om, stride_on, HAS_BIAS, GATE, True, REDUCTION, BLOCK_M, CHUNK, WORD_BITS,
                seed_ptr, layer, DROP_T, DROP_SCALE,
            )  # fmt: skip
        tl.debug_barrier()  # every chunk stored by every thread before any thread reads the tile back
        h = row_block(out_ptr, rows_in, stride_om, stride_on, N, PAD_N)
    return h


@triton.jit
def layer_from_registers(
    a, rows_in, row_ok, b_ptr, stride_bk, stride_bn, K, N,
    bias_ptr, stride_b, words_ptr, stride_pm, stride_pw, out_ptr, stride_om, stride_on,
    HAS_BIAS: tl.constexpr, GATE: tl.constexpr, SAVE: tl.constexpr, REDUCTION: tl.constexpr,
    PAD_K: tl.constexpr, PAD_N: tl.constexpr, CHUNK: tl.constexpr, BLOCK_M: tl.constexpr,
    WORD_BITS: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    seed_ptr, layer, DROP_T: tl.constexpr, DROP_SCALE: tl.constexpr,
):  # fmt: skip
    """The register tile ``[BLOCK_M, PAD_N]`` of ``epilogue(a B[:K, :N])``, ``a`` ``[BLOCK_M, PAD_K]`` in
    registers (zero past ``K``)."""
    if PAD_N <= CHUNK:
        b = b_block(b_ptr, 0, 0, K, N, stride_bk, stride_bn, PAD_K, PAD_N)
        acc = mma(a, b, tl.zeros((BLOCK_M, PAD_N), dtype=tl.float32), UPCAST, PRECISION)
        h = epilogue(
            acc, rows_in, row_ok, 0, N, bias_ptr, stride_b, words_ptr, stride_pm, stride_pw, out_ptr,
            stride_om, stride_on, HAS_BIAS, GATE, SAVE, REDUCTION, BLOCK_M, PAD_N, WORD_BITS,
            seed_ptr, layer, DROP_T, DROP_SCALE,
        )  # fmt: skip
    else:
        for c in range(PAD_N // CHUNK):
            b = b_block(b_ptr, 0, c * CHUNK, K, N, stride_bk, stride_bn, PAD_K, CHUNK)
            acc = mma(a, b, tl.zeros((BLOCK_M, CHUNK), dtype=tl.float32), UPCAST, PRECISION)
            epilogue(
                acc, rows_in, row_ok, c * CHUNK, N, bias_ptr, stride_b, words_ptr, stride_pm, stride_pw,
                out_ptr, stride_om, stride_on, HAS_BIAS, GATE, True, REDUCTION, BLOCK_M, CHUNK, WORD_BITS,
                seed_ptr, layer, DROP_T, DROP_SCALE,
            )  # fmt: skip
        tl.debug_barrier()
        h = row_block(out_ptr, rows_in, stride_om, stride_on, N, PAD_N)
    return h


@triton.jit
def layer_to_memory(
    a, rows_in, row_ok, b_ptr, stride_bk, stride_bn, K, N, bias_ptr, stride_b, out_ptr, stride_om, stride_on,
    HAS_BIAS: tl.constexpr, PAD_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """``out[rows, :N] = a B[:K, :N] (+ bias)``, ungated, ``N`` any width, in ``BLOCK_N`` column tiles."""
    for n0 in range(0, N, BLOCK_N):
        b = b_block(b_ptr, 0, n0, K, N, stride_bk, stride_bn, PAD_K, BLOCK_N)
        acc = mma(a, b, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), UPCAST, PRECISION)
        cols = n0 + tl.arange(0, BLOCK_N)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + cols * stride_b, mask=cols < N, other=0.0).to(tl.float32)[None, :]
        ptrs = out_ptr + rows_in.to(tl.int64)[:, None] * stride_om + cols[None, :] * stride_on
        tl.store(ptrs, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & (cols < N)[None, :])
