"""The dispatch table of the fused head path: per architecture, dot precision and mode, the widest hidden layer
the fused kernels take and the chain configuration they run with. The dispatcher (``glai_kernels.dispatch``), the
build-time check of ``glai.GLAIMLP``, the launches (``fused_launch``), the lowering test and
``glai-autotune --dispatch`` all read this one table, so what runs and what is proven cannot drift apart.

Keys: the CUDA capability (80, 86, 90; a device takes the newest key not above its own, so sm_89 reads 86 and
sm_100 reads 90), the dot precision (``fp16``, ``bf16``; float32 operands as ``tl.dot`` multiplies them,
``fp32-tf32`` where PyTorch's matmuls use TF32, ``fp32-ieee`` otherwise: PyTorch's default) and the mode
(``fused_plan``: given patterns, structural, from the structure). A width of 0 would mean "never fused".

Every entry is measured by lowering the three fused kernels for that architecture (Triton's compiler and
``ptxas -v``, no GPU: ``python -m glai_kernels.tools.dispatch_evidence``): at the widest width and at the width
just past the power of two below it, no spill and shared memory within the architecture's limit.

Why float32 has its own chain: its register tile ``[BLOCK_M, padded width]`` and its weight blocks take twice
the bytes of 16-bit ones. With a 16-bit chain of 64 rows (chunk 128), float32 at width 256 needs 360,448 B of
shared memory on sm_90 (the limit is 232,448) and spills with IEEE dots. 32 rows, 8 warps, one stage and a
weight block of 8192 elements fit TF32 dots up to 512 on sm_90 (196-218 registers, 196,608 B of shared memory,
mma rather than wgmma: a warpgroup needs 64 rows); that is more than sm_80 has, which takes 16 rows. IEEE dots
run on the FMA units, each product element in a register: they fit with 16 rows a program and chunks of 4096
weight elements (168-214 registers, 98,304 B at 257 and 512 on sm_90).
"""

from __future__ import annotations

import torch

# The fused forward's modes, defined here once (the table is a leaf: the launch side imports them from it):
# patterns given, made in the forward (the structural phase), or computed from the frozen structure.
GIVEN, STRUCTURAL, FROM_STRUCTURE = 0, 1, 2
MODE_NAMES = {GIVEN: "given", STRUCTURAL: "structural", FROM_STRUCTURE: "from-structure"}
PRECISIONS = ("fp16", "bf16", "fp32-tf32", "fp32-ieee")
DTYPE_OF = {
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp32-tf32": torch.float32,
    "fp32-ieee": torch.float32,
}


def _chain(bm, bk, bn, chunk, weight_block, warps, stages) -> dict:
    return {"BLOCK_M": bm, "BLOCK_K": bk, "BLOCK_N": bn, "CHUNK": chunk, "WEIGHT_BLOCK": weight_block,
            "num_warps": warps, "num_stages": stages}  # fmt: skip


# The chain kernels' (forward, data gradient) configurations. 32 rows a program: with 64 (a warpgroup's, wgmma
# on sm_90) every width that is not a power of two spills, e.g. bf16 at 129 or 257 on sm_90 (255 registers,
# 308-428 B of spill stores), its masked columns costing the registers the exact widths do not need.
CHAIN_16 = _chain(32, 64, 64, 64, 16384, 8, 2)
CHAIN_TF32 = _chain(32, 32, 64, 32, 8192, 8, 1)
CHAIN_FP32_SMALL = _chain(16, 16, 32, 32, 4096, 4, 1)  # IEEE dots, and TF32 where 32 rows do not fit
# The grouped weight gradient's: 64 x 64 tiles of dW, 64 batch rows a step; IEEE float32 16 rows a step (at 64
# its FMA products spill: 255 registers, 828 B of spill stores on sm_90).
WEIGHTS = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "SPLITS": None, "num_warps": 8, "num_stages": 3}
WEIGHTS_IEEE = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 16, "SPLITS": None, "num_warps": 8, "num_stages": 2}
CHAIN_INTERPRETER = _chain(16, 16, 16, 32, 1 << 20, 1, 1)  # tiny, still every code path (chunks, tiles)


def _all_modes(width: int) -> dict:
    return {GIVEN: width, STRUCTURAL: width, FROM_STRUCTURE: width}


# (capability, precision) -> (chain configuration, {mode: widest hidden width}); the weight gradient's
# configuration: :func:`weights_config`.
TABLE = {
    (90, "fp16"): (CHAIN_16, _all_modes(512)),
    (90, "bf16"): (CHAIN_16, _all_modes(512)),
    (90, "fp32-tf32"): (CHAIN_TF32, _all_modes(512)),
    (90, "fp32-ieee"): (CHAIN_FP32_SMALL, _all_modes(512)),
    (80, "fp16"): (CHAIN_16, _all_modes(512)),
    (80, "bf16"): (CHAIN_16, _all_modes(512)),
    (80, "fp32-tf32"): (CHAIN_FP32_SMALL, _all_modes(512)),
    (80, "fp32-ieee"): (CHAIN_FP32_SMALL, _all_modes(512)),
    (86, "fp16"): (CHAIN_16, _all_modes(256)),  # consumer Ampere and Ada: 99 KB of shared memory
    (86, "bf16"): (CHAIN_16, _all_modes(256)),
    (86, "fp32-tf32"): (CHAIN_FP32_SMALL, _all_modes(256)),
    (86, "fp32-ieee"): (CHAIN_FP32_SMALL, _all_modes(256)),
}
CAPABILITIES = tuple(sorted({cap for cap, _ in TABLE}))
INTERPRETER = None  # the capability key of Triton's interpreter: one tiny chain, widths up to 512
INTERPRETER_WIDTH = 512
# The widest hidden layer any entry takes: GLAIMLP(fused=True) checks it when built (it cannot know the dtype
# then); the entry of the call's device, dtype and precision is checked at the call.
MAX_WIDTH = max(INTERPRETER_WIDTH, *(w for _, widths in TABLE.values() for w in widths.values()))


def capability_key(capability: int) -> int:
    """The table's key for a device of ``capability`` (e.g. 89 -> 86): the newest key not above it."""
    keys = [k for k in CAPABILITIES if k <= capability]
    return keys[-1] if keys else CAPABILITIES[0]


def precision_name(dtype: torch.dtype, precision: str = "ieee") -> str:
    """The table's precision of operands of ``dtype`` whose products ``tl.dot`` takes at ``precision``
    (``"tf32"`` or ``"ieee"``, as ``per_layer_launch.dot_precision`` gives it; only read for float32)."""
    if dtype == torch.float16:
        return "fp16"
    if dtype == torch.bfloat16:
        return "bf16"
    if dtype == torch.float32:
        return "fp32-tf32" if precision == "tf32" else "fp32-ieee"
    raise ValueError(f"the fused path takes float32, float16 or bfloat16 operands, got {dtype}")


def entry(capability: int | None, dtype: torch.dtype, precision: str) -> tuple[dict, dict]:
    """``(chain configuration, {mode: widest width})`` of the table for this case (``capability`` None: the
    interpreter)."""
    if capability is None:
        return CHAIN_INTERPRETER, _all_modes(INTERPRETER_WIDTH)
    return TABLE[(capability_key(capability), precision_name(dtype, precision))]


def fused_width(capability: int | None, dtype: torch.dtype, precision: str, mode: int) -> int:
    """The widest hidden layer (quantitative and structural) the fused path takes for this case; 0: never."""
    return entry(capability, dtype, precision)[1][mode]


def weights_config(capability: int | None, dtype: torch.dtype, precision: str) -> dict:
    """The weight-gradient kernel's launch configuration for this case (None: the interpreter's is not here)."""
    return dict(WEIGHTS_IEEE if precision_name(dtype, precision) == "fp32-ieee" else WEIGHTS)


def chain_config(capability: int | None, dtype: torch.dtype, precision: str) -> dict:
    """The chain kernels' launch configuration for this case: a fresh dict."""
    return dict(entry(capability, dtype, precision)[0])


def describe(capability: int | None, dtype: torch.dtype, precision: str, mode: int) -> str:
    """The case in words, for errors and warnings: ``"float32 with IEEE dots, mode given, on sm_90"``."""
    name = precision_name(dtype, precision)
    dots = {"fp32-tf32": " with TF32 dots", "fp32-ieee": " with IEEE dots"}.get(name, "")
    where = "Triton's interpreter" if capability is None else f"sm_{capability}"
    return f"{str(dtype).replace('torch.', '')}{dots}, mode {MODE_NAMES[mode]}, on {where}"
