"""The weight gradient of one layer: ``dW = g^T h`` ``[N, K]`` and ``db = sum_rows g`` ``[N]``, in one
pass.

The GEMM reduces over the batch. Each program owns one ``dW`` tile and runs its whole batch range itself (no
atomics), so the result is bit-identical run to run. ``db`` is the row sum of the ``g^T`` tiles the GEMM loads
anyway; the programs of the first column of tiles accumulate and store it, so each ``db`` element also has
exactly one writer and one summation order.

When ``dW`` has fewer tiles than the GPU has multiprocessors (a narrow layer, the output layer) and the batch
is long, the batch is cut into ``S`` contiguous ranges (split-K over the batch). Split ``s`` writes its fp32
partial sums to slice ``s`` of a workspace (``stride_dws``, ``stride_dbs``) and the host adds the ``S`` slices
in a fixed order: still no atomics, still deterministic. With ``S = 1`` the program writes ``dW`` and ``db``
directly, in their dtype.

Both operands are read wherever their strides put them. TF32 products on Hopper want both K-major (the batch
contiguous), which ``g`` and ``h`` are not: the host then passes column-major copies, and the same strides
describe them. With ``TMA``, ``g_ptr`` and ``h_ptr`` are tensor descriptors (``g`` stored as ``[M, N]`` when
``A_KM``, else as its transpose ``[N, M]``; ``h`` as ``[M, K]`` when ``B_KN``, else ``[K, M]``), and a
persistent grid walks the ``tiles x S`` work items.
"""

import triton
import triton.language as tl

from .tiles import desc_tile_dot, grouped_tile, tile_count, tile_dot


@triton.jit
def _product(
    g_ptr, h_ptr, off_r, off_c, m0, m_len, N, K,
    stride_gm, stride_gn, stride_hm, stride_hk,
    ROW_SUM: tl.constexpr, TMA: tl.constexpr, A_KM: tl.constexpr, B_KN: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """The ``dW`` tile at ``(off_r, off_c)`` summed over batch rows ``m0 .. m0 + m_len - 1``, and the row sum
    of its ``g^T`` tile when ``ROW_SUM``."""
    if TMA:
        acc, row_sum = desc_tile_dot(
            g_ptr, h_ptr, off_r, off_c, m0, m_len, A_KM, B_KN,
            BLOCK_M, BLOCK_N, BLOCK_K, ROW_SUM, UPCAST, PRECISION,
        )  # fmt: skip
    else:
        # A = g^T read in place: element (n, m) at g_ptr + m * stride_gm + n * stride_gn.
        rows = (off_r + tl.arange(0, BLOCK_M)) % N
        cols = (off_c + tl.arange(0, BLOCK_N)) % K
        acc, row_sum = tile_dot(
            g_ptr + m0.to(tl.int64) * stride_gm, h_ptr + m0.to(tl.int64) * stride_hm, rows, cols, m_len,
            stride_gn, stride_gm, stride_hm, stride_hk, BLOCK_M, BLOCK_N, BLOCK_K, ROW_SUM, UPCAST, PRECISION,
        )  # fmt: skip
    return acc, row_sum


@triton.jit
def _weight_tile(
    tile, split, g_ptr, h_ptr, dw_ptr, db_ptr, N, K, M, M_SPLIT,
    stride_gm, stride_gn, stride_hm, stride_hk, stride_dws, stride_dwn, stride_dwk, stride_dbs, stride_db,
    HAS_BIAS: tl.constexpr, TMA: tl.constexpr, A_KM: tl.constexpr, B_KN: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    m0 = split * M_SPLIT
    m_len = tl.minimum(M_SPLIT, M - m0)
    dw_ptr += split.to(tl.int64) * stride_dws
    pid_r, pid_c = grouped_tile(tile, N, K, BLOCK_M, BLOCK_N, GROUP_M)
    offs_r = pid_r * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = pid_c * BLOCK_N + tl.arange(0, BLOCK_N)
    # Only the first column of tiles sums g for db; a runtime branch keeps that work off the other programs.
    # (Nested rather than `HAS_BIAS and pid_c == 0`: a constexpr `and` a runtime scalar is not folded alike by
    # every Triton version.)
    if HAS_BIAS:
        if pid_c == 0:
            acc, row_sum = _product(
                g_ptr, h_ptr, pid_r * BLOCK_M, pid_c * BLOCK_N, m0, m_len, N, K, stride_gm, stride_gn,
                stride_hm, stride_hk, True, TMA, A_KM, B_KN, BLOCK_M, BLOCK_N, BLOCK_K, UPCAST, PRECISION,
            )  # fmt: skip
            db_ptrs = db_ptr + split * stride_dbs + offs_r * stride_db
            tl.store(db_ptrs, row_sum.to(db_ptr.dtype.element_ty), mask=offs_r < N)
        else:
            acc, _ = _product(
                g_ptr, h_ptr, pid_r * BLOCK_M, pid_c * BLOCK_N, m0, m_len, N, K, stride_gm, stride_gn,
                stride_hm, stride_hk, False, TMA, A_KM, B_KN, BLOCK_M, BLOCK_N, BLOCK_K, UPCAST, PRECISION,
            )  # fmt: skip
    else:
        acc, _ = _product(
            g_ptr, h_ptr, pid_r * BLOCK_M, pid_c * BLOCK_N, m0, m_len, N, K, stride_gm, stride_gn,
            stride_hm, stride_hk, False, TMA, A_KM, B_KN, BLOCK_M, BLOCK_N, BLOCK_K, UPCAST, PRECISION,
        )  # fmt: skip
    dw_ptrs = dw_ptr + offs_r.to(tl.int64)[:, None] * stride_dwn + offs_c[None, :] * stride_dwk
    tl.store(dw_ptrs, acc.to(dw_ptr.dtype.element_ty), mask=(offs_r < N)[:, None] & (offs_c < K)[None, :])


@triton.jit
def weight_grad_kernel(
    g_ptr,
    h_ptr,
    dw_ptr,
    db_ptr,
    N,
    K,
    M,
    M_SPLIT,
    stride_gm,
    stride_gn,
    stride_hm,
    stride_hk,
    stride_dws,
    stride_dwn,
    stride_dwk,
    stride_dbs,
    stride_db,
    HAS_BIAS: tl.constexpr,
    TMA: tl.constexpr,
    A_KM: tl.constexpr,
    B_KN: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """``g`` ``[M, N]``, ``h`` ``[M, K]``. Tile rows run over ``N`` (BLOCK_M), tile columns over ``K``
    (BLOCK_N), the reduction over the batch ``M`` (BLOCK_K): the GEMM's own (M, N, K) are (N, K, M) here.
    Split ``s`` reduces batch rows ``s * M_SPLIT .. min((s + 1) * M_SPLIT, M) - 1``: program axis 1 without
    ``TMA``; with it, work item ``t`` of the persistent loop is tile ``t % tiles`` of split ``t // tiles``."""
    if TMA:
        tiles = tile_count(N, K, BLOCK_M, BLOCK_N)
        splits = tl.cdiv(M, M_SPLIT)
        for t in tl.range(tl.program_id(0), tiles * splits, tl.num_programs(0), flatten=True):
            _weight_tile(
                t % tiles, t // tiles, g_ptr, h_ptr, dw_ptr, db_ptr, N, K, M, M_SPLIT, stride_gm, stride_gn,
                stride_hm, stride_hk, stride_dws, stride_dwn, stride_dwk, stride_dbs, stride_db, HAS_BIAS,
                True, A_KM, B_KN, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, UPCAST, PRECISION,
            )  # fmt: skip
    else:
        _weight_tile(
            tl.program_id(0), tl.program_id(1), g_ptr, h_ptr, dw_ptr, db_ptr, N, K, M, M_SPLIT, stride_gm,
            stride_gn, stride_hm, stride_hk, stride_dws, stride_dwn, stride_dwk, stride_dbs, stride_db,
            HAS_BIAS, False, A_KM, B_KN, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, UPCAST, PRECISION,
        )  # fmt: skip
