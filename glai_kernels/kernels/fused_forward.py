"""The forward of a whole GLAI stack in one launch: a program per ``BLOCK_M`` rows runs every layer.

Layers are ``L = len(HIDDEN) + 1`` weights ``W_l`` ``[n_l, n_{l-1}]`` passed as tuples (one pointer and one
stride pair a layer; a new depth or width compiles a new kernel). ``MODE``:

- 0, given patterns: ``h_l = p_l * (W_l h_{l-1} + b_l)``, ``p_l`` read from packed words at structural width
  (unit ``j`` reads bit ``j // REDUCTION``): the quantitative phase with the pattern cache;
- 1, structural: ``h_l = relu(W_l h_{l-1} + b_l) = p_l z_l`` with ``p_l = [z_l > 0]``, and the packed ``p_l``
  written: the structural phase, whose backward is then the same as the quantitative one;
- 2, frozen structure: the structural net ``S`` (``S_HIDDEN`` wide, its own weights) runs first and writes
  its patterns, then the quantitative chain reads them, as in mode 0: one launch, no separate pattern pass.

What leaves the chip is what the backward needs: each hidden output ``h_l`` (the next layer's input, for
``dW``) in the input dtype, the packed patterns (modes 1 and 2) and ``y``. ``S``'s activations stay in
registers, unless a structural layer is wider than ``CHUNK`` (then its rows pass through a staging buffer).
"""

import triton
import triton.language as tl

from .fused_layers import layer_from_memory, layer_from_registers, layer_to_memory


@triton.jit
def fused_forward_kernel(
    x_ptr, y_ptr, M, IN, OUT, stride_xm, stride_xk, stride_ym, stride_yn,
    w_ptrs, w_sn, w_sk, b_ptrs, b_s,
    h_ptrs, h_sm, h_sn,
    p_ptrs, p_sm, p_sw,
    sw_ptrs, sw_sn, sw_sk, sb_ptrs, sb_s,
    st_ptrs, st_sm, st_sn,
    HIDDEN: tl.constexpr, PAD: tl.constexpr, HAS_B: tl.constexpr,
    S_HIDDEN: tl.constexpr, S_PAD: tl.constexpr, S_HAS_B: tl.constexpr,
    MODE: tl.constexpr, REDUCTION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
    WORD_BITS: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    seed_ptr, DROP_T: tl.constexpr, DROP_SCALE: tl.constexpr,
):  # fmt: skip
    """``y = stack(x)`` for rows ``pid * BLOCK_M ..``. ``W^T`` is read in place: element ``(k, n)`` of layer
    ``l``'s ``B`` sits at ``w_ptrs[l] + k * w_sk[l] + n * w_sn[l]``. ``DROP_T[l] > 0``: hidden layer ``l``'s
    output is dropped out (``kernels/dropout.py``, seed at ``seed_ptr``) before it is saved and fed on; the
    structural net of mode 2 never is."""
    LH: tl.constexpr = len(HIDDEN)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    rows_in = rows % M  # rows past M read a valid row again; they are never stored

    if MODE == 2:
        # The frozen structure: patterns only. Written to memory (the backward reads them), then read back
        # by the quantitative chain below after a barrier.
        a = layer_from_memory(
            x_ptr, rows_in, row_ok, stride_xm, stride_xk, IN, sw_ptrs[0], sw_sk[0], sw_sn[0], S_HIDDEN[0],
            sb_ptrs[0], sb_s[0], p_ptrs[0], p_sm[0], p_sw[0], st_ptrs[0], st_sm[0], st_sn[0],
            S_HAS_B[0], 2, False, 1, S_PAD[0], CHUNK, BLOCK_M, BLOCK_K, WORD_BITS, UPCAST, PRECISION,
            seed_ptr, 0, 0, 1.0,
        )  # fmt: skip
        for i in tl.static_range(1, LH):
            a = layer_from_registers(
                a, rows_in, row_ok, sw_ptrs[i], sw_sk[i], sw_sn[i], S_HIDDEN[i - 1], S_HIDDEN[i],
                sb_ptrs[i], sb_s[i], p_ptrs[i], p_sm[i], p_sw[i], st_ptrs[i], st_sm[i], st_sn[i],
                S_HAS_B[i], 2, False, 1, S_PAD[i - 1], S_PAD[i], CHUNK, BLOCK_M, WORD_BITS, UPCAST, PRECISION,
                seed_ptr, i, 0, 1.0,
            )  # fmt: skip
        tl.debug_barrier()

    GATE: tl.constexpr = 2 if MODE == 1 else 1
    R: tl.constexpr = 1 if MODE == 1 else REDUCTION
    h = layer_from_memory(
        x_ptr, rows_in, row_ok, stride_xm, stride_xk, IN, w_ptrs[0], w_sk[0], w_sn[0], HIDDEN[0],
        b_ptrs[0], b_s[0], p_ptrs[0], p_sm[0], p_sw[0], h_ptrs[0], h_sm[0], h_sn[0],
        HAS_B[0], GATE, True, R, PAD[0], CHUNK, BLOCK_M, BLOCK_K, WORD_BITS, UPCAST, PRECISION,
        seed_ptr, 0, DROP_T[0], DROP_SCALE[0],
    )  # fmt: skip
    for i in tl.static_range(1, LH):
        h = layer_from_registers(
            h, rows_in, row_ok, w_ptrs[i], w_sk[i], w_sn[i], HIDDEN[i - 1], HIDDEN[i],
            b_ptrs[i], b_s[i], p_ptrs[i], p_sm[i], p_sw[i], h_ptrs[i], h_sm[i], h_sn[i],
            HAS_B[i], GATE, True, R, PAD[i - 1], PAD[i], CHUNK, BLOCK_M, WORD_BITS, UPCAST, PRECISION,
            seed_ptr, i, DROP_T[i], DROP_SCALE[i],
        )  # fmt: skip
    layer_to_memory(
        h, rows_in, row_ok, w_ptrs[LH], w_sk[LH], w_sn[LH], HIDDEN[LH - 1], OUT, b_ptrs[LH], b_s[LH],
        y_ptr, stride_ym, stride_yn, HAS_B[LH], PAD[LH - 1], BLOCK_M, BLOCK_N, UPCAST, PRECISION,
    )  # fmt: skip
