"""FLOP and byte counts of every GLAI op, and the GEMM each kernel computes, defined once.

The benchmarks turn times into TFLOP/s and GB/s with these counts, and the autotuner builds its inputs from
the same GEMM dimensions, so a figure and a tuned configuration always refer to the same problem.

GEMM dimensions follow the kernels' launch convention: ``M x N`` is the output the kernel writes and ``K`` the
reduction length, so ``config_for(kernel, M, N, K, dtype)`` receives the numbers of :func:`gemm_dims`.

With ``batch`` rows, a layer ``in_f -> out_f`` and reduction ``r`` (structural width ``out_f / r``):

    kernel            output        M       N          K        computes
    gate              a, words      batch   out_f / r  in_f     relu(a W^T + b), pack(> 0)
    masked_forward    h             batch   out_f      in_f     p * (h W^T + b)
    backward_data     g_prev        batch   in_f       out_f    (g W) * p_prev
    backward_weights  dW, db        out_f   in_f       batch    g^T h, sum_rows g
"""

from __future__ import annotations

from .layout import WORD_BITS, words_for

GEMM_KERNELS = ("gate", "masked_forward", "backward_data", "backward_weights")
# Ops with no GEMM: their speed is bytes moved over the memory rate.
MEMORY_OPS = ("pack", "gate_epilogue", "copy")
WORD_BYTES = WORD_BITS // 8


def gemm_dims(kernel: str, batch: int, in_f: int, out_f: int, r: int = 1) -> tuple[int, int, int]:
    """``(M, N, K)`` of ``kernel`` on a layer ``in_f -> out_f`` with ``batch`` rows and reduction ``r``."""
    if kernel == "gate":
        return batch, out_f // r, in_f
    if kernel in ("masked_forward", "gemm"):
        return batch, out_f, in_f
    if kernel == "backward_data":
        return batch, in_f, out_f
    if kernel == "backward_weights":
        return out_f, in_f, batch
    raise ValueError(f"unknown kernel {kernel!r}; expected one of {GEMM_KERNELS + ('gemm',)}")


def gemm_flops(M: int, N: int, K: int) -> int:
    """A multiply and an add per term of each of the ``M N`` dot products of length ``K``."""
    return 2 * M * N * K


def op_flops(op: str, batch: int, in_f: int, out_f: int, r: int = 1) -> int:
    """Floating-point operations of one call of ``op`` (0 for the memory-bound ops).

    Epilogues (bias, ReLU, masking) are ``O(M N)`` next to the ``O(M N K)`` product and are not counted, except
    the bias gradient of ``backward_weights``, a pass of ``batch * out_f`` adds that the kernel fuses.
    """
    if op in MEMORY_OPS:
        return 0
    if op == "train_step":
        return train_step_flops(batch, mlp_widths(in_f, out_f))
    M, N, K = gemm_dims(op, batch, in_f, out_f, r)
    flops = gemm_flops(M, N, K)
    if op == "backward_weights":
        flops += batch * out_f
    return flops


def op_bytes(op: str, batch: int, in_f: int, out_f: int, r: int = 1, itemsize: int = 4) -> int:
    """Bytes an ideal implementation reads and writes once each in global memory for one call of ``op``.

    ``pack``: read a bool mask ``[batch, n]``, write ``ceil(n / 32)`` words a row, ``n = out_f / r``.
    ``gate_epilogue``: read the pre-activation ``z``, write ``relu(z)`` and the packed words.
    ``copy``: read and write ``batch x out_f`` elements (the memory rate the other figures are compared with).
    GEMM ops: both operands once, the output once, the pattern words once (a lower bound: tiles re-read).
    """
    n = out_f // r
    if op == "pack":
        return batch * n + batch * words_for(n) * WORD_BYTES
    if op == "gate_epilogue":
        return 2 * batch * n * itemsize + batch * words_for(n) * WORD_BYTES
    if op == "copy":
        return 2 * batch * out_f * itemsize
    if op == "train_step":
        return 0
    M, N, K = gemm_dims(op, batch, in_f, out_f, r)
    total = (M * K + K * N + M * N) * itemsize
    if op == "gate":
        total += M * words_for(N) * WORD_BYTES
    elif op in ("masked_forward", "backward_data"):
        total += M * words_for(N // r) * WORD_BYTES
    return total


def mlp_widths(in_f: int, out_f: int) -> tuple[int, ...]:
    """The stack a ``train_step`` benchmark runs: two hidden layers of width ``out_f``, back to ``in_f``."""
    return (in_f, out_f, out_f, in_f)


def train_step_flops(batch: int, widths: tuple[int, ...]) -> int:
    """Nominal FLOPs of one forward + backward of a plain ReLU MLP over ``widths`` (input needs no grad).

    Per layer ``a -> b``: the forward and ``dW`` are ``2 batch a b`` each, the data gradient another ``2 batch a b``
    except for the first layer, whose input needs none. Every provider of a training step is credited with this
    same count, so its TFLOP/s compare as speed at equal work: GLAI's structural pass is not added in.
    """
    total = 0
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        total += (4 if i == 0 else 6) * batch * a * b
    return total
