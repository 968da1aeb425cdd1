"""Tile order and the GEMM main loops shared by every kernel.

Every kernel computes an output tile ``C[rows, cols] = A[rows, :] @ B[:, cols]`` (fp32 accumulation) and then
runs its own epilogue. Two main loops:

- :func:`tile_dot` loads through pointers with explicit strides, so a transposed weight (``W^T`` in the
  forward) or a transposed gradient (``g^T`` in the weight gradient) is read in place, without a copy. A
  program per output tile; any GPU and the interpreter.
- :func:`desc_tile_dot` loads through tensor descriptors: on sm_90 the bulk tensor copy engine (TMA) moves
  whole boxes into shared memory, with no address arithmetic per element and zero fill past the edges. The
  kernels run it on a persistent grid, one program per multiprocessor walking the tiles in the grouped order
  of :func:`grouped_tile` (one order for both loops); the tile loop is flattened into the K loop
  (``tl.range(..., flatten=True)``), so the compiler can issue the next tile's loads under this tile's
  epilogue.
"""

import triton
import triton.language as tl


@triton.jit
def grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """The (row tile, column tile) that program ``pid`` of a 1-d grid computes.

    Row-major order (all column tiles of row tile 0, then row tile 1, ...) streams the whole of ``B`` once per
    row tile, so ``B`` falls out of L2 before it is reused. Grouped order walks ``GROUP_M`` row tiles down one
    column tile before moving right: consecutive programs share their ``B`` tile and, within a group, their
    ``A`` tiles too, which raises the L2 hit rate for the same amount of work. The last group may hold fewer
    than ``GROUP_M`` row tiles when the number of row tiles is not a multiple of it.
    """
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n
    group = pid // per_group
    first_m = group * GROUP_M
    group_size = tl.minimum(num_m - first_m, GROUP_M)
    in_group = pid % per_group
    pid_m = first_m + in_group % group_size
    pid_n = in_group // group_size
    return pid_m, pid_n


@triton.jit
def tile_dot(
    a_ptr,
    b_ptr,
    rows,
    cols,
    K,
    stride_am,
    stride_ak,
    stride_bk,
    stride_bn,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    ROW_SUM: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """``acc = A[rows, :K] @ B[:K, cols]`` in fp32, and ``sum_k A[rows, k]`` when ``ROW_SUM`` (else zeros).

    ``rows`` and ``cols`` must be valid indices (callers wrap the tile past the matrix edge back into it with
    a modulo, which keeps the loads unmasked along M and N; the wrapped rows and columns are never stored).
    Only the K tail is masked, with zeros, which add nothing to the dot or the sum.

    ``UPCAST`` converts the operands to fp32 before ``tl.dot`` (exact for fp16 and bf16; the interpreter's
    low-precision dot is wrong). ``PRECISION`` is ``tl.dot``'s ``input_precision`` ("ieee" or "tf32"), which
    only matters for fp32 operands.
    """
    offs_k = tl.arange(0, BLOCK_K)
    # 64-bit row and column offsets: rows * stride exceeds 2**31 elements for large operands.
    a_ptrs = a_ptr + rows.to(tl.int64)[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + cols.to(tl.int64)[None, :] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    row_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
        b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        if ROW_SUM:
            row_sum += tl.sum(a.to(tl.float32), axis=1)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    return acc, row_sum


@triton.jit
def desc_tile_dot(
    a_desc,
    b_desc,
    off_m,
    off_n,
    k0,
    K,
    A_KM: tl.constexpr,
    B_KN: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    ROW_SUM: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """:func:`tile_dot` through tensor descriptors (the bulk tensor copy engine, TMA, on sm_90).

    ``acc = A[off_m : off_m + BLOCK_M, k0 : k0 + K] @ B[k0 : k0 + K, off_n : off_n + BLOCK_N]``. A descriptor
    names a matrix as it lies in memory, its last dimension contiguous: ``A`` is ``[M, K]`` (``A_KM`` false)
    or stored as ``[K, M]`` (``A_KM``), ``B`` is stored as ``[N, K]`` (``B_KN`` false) or ``[K, N]``. The copy
    engine fills boxes that cross the matrix edge with zeros, so neither the edges nor the K tail need a mask.
    ``k0 + K`` must be the matrix's K extent or a multiple of ``BLOCK_K`` past ``k0`` (a split of the batch).
    """
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    row_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        kk = k0 + k * BLOCK_K
        if A_KM:
            a = a_desc.load([kk, off_m]).T
        else:
            a = a_desc.load([off_m, kk])
        if B_KN:
            b = b_desc.load([kk, off_n])
        else:
            b = b_desc.load([off_n, kk]).T
        if ROW_SUM:
            row_sum += tl.sum(a.to(tl.float32), axis=1)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    return acc, row_sum


@triton.jit
def affine_tile(
    tile,
    a_ptr,
    b_ptr,
    bias_ptr,
    M,
    N,
    K,
    stride_am,
    stride_ak,
    stride_bk,
    stride_bn,
    stride_bias,
    HAS_BIAS: tl.constexpr,
    TMA: tl.constexpr,
    B_KN: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Tile ``tile`` (grouped order) of ``z = A B + bias`` (fp32), the prologue every layer kernel shares.

    With ``TMA`` the operands are tensor descriptors (``A`` as ``[M, K]``, ``B`` as ``[K, N]`` when ``B_KN``,
    else ``[N, K]``); otherwise pointers addressed by the strides. Returns ``z``, the tile's column-tile index
    ``pid_n``, its row and column offsets (which may run past ``M`` and ``N``: mask the stores with them) and
    the rows wrapped into ``[0, M)`` (valid indices for the epilogue's own loads).
    """
    pid_m, pid_n = grouped_tile(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = offs_m % M
    cols = offs_n % N
    if TMA:
        z, _ = desc_tile_dot(
            a_ptr, b_ptr, pid_m * BLOCK_M, pid_n * BLOCK_N, 0, K, False, B_KN,
            BLOCK_M, BLOCK_N, BLOCK_K, False, UPCAST, PRECISION,
        )  # fmt: skip
    else:
        z, _ = tile_dot(
            a_ptr, b_ptr, rows, cols, K, stride_am, stride_ak, stride_bk, stride_bn,
            BLOCK_M, BLOCK_N, BLOCK_K, False, UPCAST, PRECISION,
        )  # fmt: skip
    if HAS_BIAS:
        z += tl.load(bias_ptr + cols * stride_bias).to(tl.float32)[None, :]
    return z, pid_n, offs_m, offs_n, rows


@triton.jit
def tile_count(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Output tiles of an ``M x N`` result: the length of the tile loop of a persistent launch."""
    return tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
