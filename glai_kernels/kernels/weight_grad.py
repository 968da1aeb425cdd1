"""The weight gradient of one layer: ``dW = g^T h`` ``[N, K]`` and ``db = sum_rows g`` ``[N]``, in one
pass.

The GEMM reduces over the batch. Each program owns one ``dW`` tile and runs the whole batch itself (no split
of the reduction, no atomics), so the result is bit-identical run to run. ``db`` is the row sum of the ``g^T``
tiles the GEMM loads anyway; the programs of the first column of tiles accumulate and store it, so each ``db``
element also has exactly one writer and one summation order.
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
    stride_gm,
    stride_gn,
    stride_hm,
    stride_hk,
    stride_dwn,
    stride_dwk,
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
    (BLOCK_N), the reduction over the batch ``M`` (BLOCK_K): the GEMM's own (M, N, K) are (N, K, M) here."""
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
                g_ptr, h_ptr, rows, cols, M, stride_gn, stride_gm, stride_hm, stride_hk,
                BLOCK_M, BLOCK_N, BLOCK_K, True, UPCAST, PRECISION,
            )  # fmt: skip
            tl.store(db_ptr + offs_r * stride_db, row_sum.to(db_ptr.dtype.element_ty), mask=offs_r < N)
        else:
            acc, _ = tile_dot(
                g_ptr, h_ptr, rows, cols, M, stride_gn, stride_gm, stride_hm, stride_hk,
                BLOCK_M, BLOCK_N, BLOCK_K, False, UPCAST, PRECISION,
            )  # fmt: skip
    else:
        acc, _ = tile_dot(
            g_ptr, h_ptr, rows, cols, M, stride_gn, stride_gm, stride_hm, stride_hk,
            BLOCK_M, BLOCK_N, BLOCK_K, False, UPCAST, PRECISION,
        )  # fmt: skip
    dw_ptrs = dw_ptr + offs_r.to(tl.int64)[:, None] * stride_dwn + offs_c[None, :] * stride_dwk
    tl.store(dw_ptrs, acc.to(dw_ptr.dtype.element_ty), mask=(offs_r < N)[:, None] & (offs_c < K)[None, :])
