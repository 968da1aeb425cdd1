"""The backward of a whole GLAI stack in two launches: the data-gradient chain, then every layer's weight
gradient as one grouped GEMM.

With ``G_l`` the gradient at hidden layer ``l``'s (gated) output, ``LH`` hidden layers, ``dy`` at the output:

    G_{LH-1} = (dy W_LH) * p_{LH-1},   G_{i-1} = (G_l W_l) * p_{i-1},   dx = G_0 W_0
    dW_l = G_l^T in_l,   db_l = sum_rows G_l       (G_LH = dy, in_0 = x, in_l = h_{i-1})

:func:`fused_grad_data_kernel` runs the chain for a block of rows, gates read from the bits, writing each
``G_l`` (the weight gradients need them) and ``dx``. :func:`fused_grad_weights_kernel` then computes every
``dW_l`` and ``db_l``: program ``(t, s)`` owns tile ``t`` of the concatenated list of all layers' ``dW``
tiles and batch split ``s``.

Determinism without atomics in the sums: each split accumulates its rows in a fixed order. With one split the
program writes ``dW`` itself. With ``SPLITS > 1`` every split writes its fp32 partial tile to a workspace,
then takes a ticket from the tile's counter (an atomic used only for ordering, acquire-release at GPU scope,
after a barrier so all of the program's stores precede it); the program that draws the last ticket adds the
``SPLITS`` partials in split order 0, 1, ..., writes ``dW`` and ``db``, and resets the counter to 0 for the next
launch. Whichever program finishes last, the sum is the same, bit for bit; no third launch, no memset.
"""

import triton
import triton.language as tl

from .fused_layers import layer_from_memory, layer_from_registers, layer_to_memory, mma


@triton.jit
def fused_grad_data_kernel(
    dy_ptr, dx_ptr, M, IN, OUT, stride_dym, stride_dyn, stride_dxm, stride_dxk,
    w_ptrs, w_sn, w_sk,
    p_ptrs, p_sm, p_sw,
    g_ptrs, g_sm, g_sn,
    HIDDEN: tl.constexpr, PAD: tl.constexpr, LOWEST: tl.constexpr, NEED_DX: tl.constexpr,
    REDUCTION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
    CHUNK: tl.constexpr, WORD_BITS: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    seed_ptr, DROP_T: tl.constexpr, DROP_SCALE: tl.constexpr,
):  # fmt: skip
    """``G_l`` for ``l = LH-1 .. LOWEST`` (into ``g_ptrs[l]``) and, with ``NEED_DX``, ``dx`` (then
    ``LOWEST = 0``). ``B = W_l`` in place: element ``(k, n)`` at ``w_ptrs[l] + k * w_sn[l] + n * w_sk[l]``.
    ``DROP_T[l] > 0``: ``G_l`` is also multiplied by the forward's dropout mask of layer ``l``, regenerated
    from the same seed (``kernels/dropout.py``)."""
    LH: tl.constexpr = len(HIDDEN)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    rows_in = rows % M
    g = layer_from_memory(
        dy_ptr, rows_in, row_ok, stride_dym, stride_dyn, OUT, w_ptrs[LH], w_sn[LH], w_sk[LH], HIDDEN[LH - 1],
        w_ptrs[LH], 0, p_ptrs[LH - 1], p_sm[LH - 1], p_sw[LH - 1], g_ptrs[LH - 1], g_sm[LH - 1],
        g_sn[LH - 1], False, 1, True, REDUCTION, PAD[LH - 1], CHUNK, BLOCK_M, BLOCK_K, WORD_BITS, UPCAST,
        PRECISION, seed_ptr, LH - 1, DROP_T[LH - 1], DROP_SCALE[LH - 1],
    )  # fmt: skip
    for i in tl.static_range(LH - 1, LOWEST, -1):
        g = layer_from_registers(
            g, rows_in, row_ok, w_ptrs[i], w_sn[i], w_sk[i], HIDDEN[i], HIDDEN[i - 1],
            w_ptrs[i], 0, p_ptrs[i - 1], p_sm[i - 1], p_sw[i - 1], g_ptrs[i - 1], g_sm[i - 1], g_sn[i - 1],
            False, 1, True, REDUCTION, PAD[i], PAD[i - 1], CHUNK, BLOCK_M, WORD_BITS, UPCAST, PRECISION,
            seed_ptr, i - 1, DROP_T[i - 1], DROP_SCALE[i - 1],
        )  # fmt: skip
    if NEED_DX:
        layer_to_memory(
            g, rows_in, row_ok, w_ptrs[0], w_sn[0], w_sk[0], HIDDEN[0], IN, w_ptrs[0], 0,
            dx_ptr, stride_dxm, stride_dxk, False, PAD[0], BLOCK_M, BLOCK_N, UPCAST, PRECISION,
        )  # fmt: skip


@triton.jit
def _weight_tile(
    g_ptr, stride_gm, stride_gn, a_ptr, stride_am, stride_ak, dw_ptr, stride_dwn, stride_dwk, db_ptr,
    stride_db, N, K, M, M_SPLIT, split, tile, ws_ptr, ws_dw, ws_db, ws_split, cnt_ptr,
    TILES_K: tl.constexpr, HAS_BIAS: tl.constexpr, SPLITS: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Tile ``tile`` of one layer's ``dW = G^T in`` ``[N, K]`` (and ``db``), over batch split ``split``."""
    local = tile
    offs_r = (local // TILES_K) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = (local % TILES_K) * BLOCK_N + tl.arange(0, BLOCK_N)
    r_ok = offs_r < N
    # db: one writer per element, the tiles of the first column (a tensor mask, as every Triton takes).
    db_ok = r_ok & ((tl.zeros((BLOCK_M,), dtype=tl.int32) + local % TILES_K) == 0)
    c_ok = offs_c < K
    rows = offs_r % N
    cols = offs_c % K
    m0 = split * M_SPLIT
    m_len = tl.minimum(M_SPLIT, M - m0)
    offs_m = tl.arange(0, BLOCK_K)
    # A = G^T read in place: element (n, m) at g_ptr + m * stride_gm + n * stride_gn.
    gt_ptrs = g_ptr + (m0 + offs_m).to(tl.int64)[None, :] * stride_gm + rows[:, None] * stride_gn
    in_ptrs = a_ptr + (m0 + offs_m).to(tl.int64)[:, None] * stride_am + cols[None, :] * stride_ak
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    gsum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for k0 in range(0, m_len, BLOCK_K):
        m_ok = offs_m < m_len - k0
        gt = tl.load(gt_ptrs, mask=m_ok[None, :], other=0.0)
        a = tl.load(in_ptrs, mask=m_ok[:, None], other=0.0)
        if HAS_BIAS:
            gsum += tl.sum(gt.to(tl.float32), axis=1)
        acc = mma(gt, a, acc, UPCAST, PRECISION)
        gt_ptrs += BLOCK_K * stride_gm
        in_ptrs += BLOCK_K * stride_am
    dw_ptrs = dw_ptr + offs_r[:, None] * stride_dwn + offs_c[None, :] * stride_dwk
    tile_ok = r_ok[:, None] & c_ok[None, :]
    if SPLITS == 1:
        tl.store(dw_ptrs, acc.to(dw_ptr.dtype.element_ty), mask=tile_ok)
        if HAS_BIAS:
            tl.store(db_ptr + offs_r * stride_db, gsum.to(db_ptr.dtype.element_ty), mask=db_ok)
    else:
        part = ws_ptr + ws_dw + offs_r[:, None] * K + offs_c[None, :]  # this layer's [N, K] partial
        tl.store(part + split.to(tl.int64) * ws_split, acc, mask=tile_ok)
        if HAS_BIAS:
            tl.store(ws_ptr + ws_db + split.to(tl.int64) * ws_split + offs_r, gsum, mask=db_ok)
        tl.debug_barrier()  # all of this program's partial stores happen before its ticket (release)
        ticket = tl.atomic_add(cnt_ptr, 1, sem="acq_rel", scope="gpu")
        if ticket == SPLITS - 1:  # every other split's partial is visible (acquire): add them in order
            total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            btotal = tl.zeros((BLOCK_M,), dtype=tl.float32)
            for s in range(SPLITS):
                total += tl.load(part + s * ws_split, mask=tile_ok, other=0.0, cache_modifier=".cg")
                if HAS_BIAS:
                    b_ptrs = ws_ptr + ws_db + s * ws_split + offs_r
                    btotal += tl.load(b_ptrs, mask=db_ok, other=0.0, cache_modifier=".cg")
            tl.store(dw_ptrs, total.to(dw_ptr.dtype.element_ty), mask=tile_ok)
            if HAS_BIAS:
                tl.store(db_ptr + offs_r * stride_db, btotal.to(db_ptr.dtype.element_ty), mask=db_ok)
            tl.atomic_xchg(cnt_ptr, 0, sem="relaxed", scope="gpu")  # ready for the next launch


@triton.jit
def fused_grad_weights_kernel(
    g_ptrs, g_sm, g_sn, a_ptrs, a_sm, a_sk, dw_ptrs, dw_sn, dw_sk, db_ptrs, db_s, Ns, Ks,
    ws_dw, ws_db, M, M_SPLIT, ws_ptr, ws_split, cnt_ptr,
    TILE_START: tl.constexpr, TILES_K: tl.constexpr, HAS_B: tl.constexpr, SPLITS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Layer ``l`` owns tiles ``TILE_START[l] .. TILE_START[l + 1] - 1`` of axis 0 (none when it needs no
    gradient); ``TILES_K[l]`` tiles per row of its ``dW``. Axis 1 is the batch split."""
    pid = tl.program_id(0)
    split = tl.program_id(1)
    for i in tl.static_range(len(TILES_K)):
        if TILE_START[i] < TILE_START[i + 1]:
            if (pid >= TILE_START[i]) & (pid < TILE_START[i + 1]):
                _weight_tile(
                    g_ptrs[i], g_sm[i], g_sn[i], a_ptrs[i], a_sm[i], a_sk[i], dw_ptrs[i], dw_sn[i], dw_sk[i],
                    db_ptrs[i], db_s[i], Ns[i], Ks[i], M, M_SPLIT, split, pid - TILE_START[i], ws_ptr,
                    ws_dw[i], ws_db[i], ws_split, cnt_ptr + pid, TILES_K[i], HAS_B[i], SPLITS,
                    BLOCK_M, BLOCK_N, BLOCK_K, UPCAST, PRECISION,
                )  # fmt: skip
