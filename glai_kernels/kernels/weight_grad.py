"""The weight gradient of one layer: ``dW = g^T h`` ``[N, K]`` and ``db = sum_rows g`` ``[N]``, in one
pass.

The GEMM reduces over the batch. Each program owns one ``dW`` tile and runs its whole batch range itself (no
atomics), so the result is bit-identical run to run. ``db`` is the row sum of the ``g^T`` tiles the GEMM loads
anyway; the programs of the first column of tiles accumulate and store it, so each ``db`` element also has
exactly one writer and one summation order.

When ``dW`` has fewer tiles than the GPU has multiprocessors (a narrow layer, the output layer) and the batch
is long, the batch is cut into ``S`` contiguous ranges along a second grid axis (split-K over the batch).
Split ``s`` writes its fp32 partial sums to slice ``s`` of a workspace (``stride_dws``, ``stride_dbs``) and
the host adds the ``S`` slices in a fixed order: still no atomics, still deterministic. With ``S = 1`` the
program writes ``dW`` and ``db`` directly, in their dtype.
"""

import triton
import triton.language as tl

from .tiles import grouped_tile, tile_dot


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
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """``g`` ``[M, N]``, ``h`` ``[M, K]``. Tile rows run over ``N`` (BLOCK_M), tile columns over ``K``
    (BLOCK_N), the reduction over the batch ``M`` (BLOCK_K): the GEMM's own (M, N, K) are (N, K, M) here.
    Program ``(t, s)`` reduces batch rows ``s * M_SPLIT .. min((s + 1) * M_SPLIT, M) - 1``."""
    split = tl.program_id(1)
    m0 = split * M_SPLIT
    m_len = tl.minimum(M_SPLIT, M - m0)
    g_ptr += m0.to(tl.int64) * stride_gm
    h_ptr += m0.to(tl.int64) * stride_hm
    dw_ptr += split.to(tl.int64) * stride_dws
    if HAS_BIAS:
        db_ptr += split * stride_dbs
    pid_r, pid_c = grouped_tile(tl.program_id(0), N, K, BLOCK_M, BLOCK_N, GROUP_M)
    offs_r = pid_r * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = pid_c * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = offs_r % N
    cols = offs_c % K
    # A = g^T read in place: element (n, m) at g_ptr + m * stride_gm + n * stride_gn.
    # Only the first column of tiles sums g for db; a runtime branch keeps that work off the other programs.
    # (Nested rather than `HAS_BIAS and pid_c == 0`: a constexpr `and` a runtime scalar is not folded alike by
    # every Triton version.)
    if HAS_BIAS:
        if pid_c == 0:
            acc, row_sum = tile_dot(
                g_ptr, h_ptr, rows, cols, m_len, stride_gn, stride_gm, stride_hm, stride_hk,
                BLOCK_M, BLOCK_N, BLOCK_K, True, UPCAST, PRECISION,
            )  # fmt: skip
            tl.store(db_ptr + offs_r * stride_db, row_sum.to(db_ptr.dtype.element_ty), mask=offs_r < N)
        else:
            acc, _ = tile_dot(
                g_ptr, h_ptr, rows, cols, m_len, stride_gn, stride_gm, stride_hm, stride_hk,
                BLOCK_M, BLOCK_N, BLOCK_K, False, UPCAST, PRECISION,
            )  # fmt: skip
    else:
        acc, _ = tile_dot(
            g_ptr, h_ptr, rows, cols, m_len, stride_gn, stride_gm, stride_hm, stride_hk,
            BLOCK_M, BLOCK_N, BLOCK_K, False, UPCAST, PRECISION,
        )  # fmt: skip
    dw_ptrs = dw_ptr + offs_r.to(tl.int64)[:, None] * stride_dwn + offs_c[None, :] * stride_dwk
    tl.store(dw_ptrs, acc.to(dw_ptr.dtype.element_ty), mask=(offs_r < N)[:, None] & (offs_c < K)[None, :])
