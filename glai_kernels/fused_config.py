"""Launch configurations of the fused head path.

Per device, dtype and dot precision: ``chain`` for the two row-block kernels (forward, data gradient), read
from the dispatch table (``glai_kernels.fused_table``, which also holds the widest hidden layer each case
takes), and ``weights`` for the grouped weight gradient. The interpreter gets one tiny configuration that still
exercises every code path (chunked layers, several output tiles and ``BLOCK_K`` steps).

chain: ``BLOCK_M`` rows a program; ``BLOCK_K`` the step over a wide input (``x``, ``dy``); ``BLOCK_N`` the tile
over a wide output (``y``, ``dx``); ``CHUNK`` the most columns of a hidden layer computed at once, lowered by
:func:`chunk_for` so that a weight block ``[padded width, chunk]`` holds at most ``WEIGHT_BLOCK`` elements (its
pipelined copies in shared memory grow with it). Wider layers go chunk by chunk through their saved output.
weights: a ``BLOCK_M x BLOCK_N`` tile of ``dW``, ``BLOCK_K`` batch rows a step, ``SPLITS`` batch splits
(``None``: see :func:`fused_splits`).
"""

from __future__ import annotations

import functools

import torch

from . import fused_table, runtime

MIN_PAD = 16  # tl.dot needs every dimension >= 16

_INTERPRETER_WEIGHTS = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 16, "SPLITS": 1, "num_warps": 1,
                        "num_stages": 1}  # fmt: skip
CHAIN_KEYS = ("BLOCK_M", "BLOCK_K", "BLOCK_N", "CHUNK", "WEIGHT_BLOCK", "num_warps", "num_stages")
WEIGHT_KEYS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "SPLITS", "num_warps", "num_stages")
MIN_SPLIT_ROWS = 512
MAX_SPLITS = 32
MAX_WIDTH = fused_table.MAX_WIDTH  # the widest hidden layer of any entry (the build-time check)
PROGRAMS_PER_SM = (
    2  # the weight-gradient kernel fits two programs a multiprocessor (116-156 registers, 34-42 KB)
)


@functools.cache
def padded(n: int) -> int:
    """A layer width as a register tile holds it: the next power of two, at least :data:`MIN_PAD`."""
    return max(MIN_PAD, 1 << (n - 1).bit_length())


def chunk_for(cfg: dict, pads) -> int:
    """The ``CHUNK`` a stack of hidden layers padded to ``pads`` is compiled with (see the module notes)."""
    return max(MIN_PAD, min(cfg["CHUNK"], cfg["WEIGHT_BLOCK"] // max(pads)))


def fused_defaults(capability: int | None, dtype=torch.bfloat16, precision: str = "tf32") -> dict:
    """``{"chain": {...}, "weights": {...}, "max_width": n}`` of a device of ``capability`` (e.g. 90 for sm_90;
    None: Triton's interpreter) for operands of ``dtype`` multiplied at ``precision`` (``"tf32"``/``"ieee"``,
    read for float32 only), ``max_width`` the widest hidden layer of the given-patterns mode. Fresh dicts."""
    chain, widths = fused_table.entry(capability, dtype, precision)
    if capability is None:
        weights = dict(_INTERPRETER_WEIGHTS)
    else:
        weights = fused_table.weights_config(capability, dtype, precision)
    return {"chain": dict(chain), "weights": weights, "max_width": widths[fused_table.GIVEN]}


def check_fused_config(config) -> dict:
    """A caller's ``config=`` (``{"chain": ..., "weights": ...}``, either part optional) merged over nothing:
    a ValueError naming the first bad entry."""
    if not isinstance(config, dict) or not set(config) <= {"chain", "weights"}:
        raise ValueError(
            f"a fused launch config must be a dict with keys 'chain' and/or 'weights', got {config!r}"
        )
    for kind, keys in (("chain", CHAIN_KEYS), ("weights", WEIGHT_KEYS)):
        cfg = config.get(kind)
        if cfg is None:
            continue
        if not isinstance(cfg, dict) or set(cfg) != set(keys):
            raise ValueError(f"fused config[{kind!r}] must have exactly the keys {keys}, got {cfg!r}")
        for k in keys:
            v = cfg[k]
            if k == "SPLITS" and v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"fused config[{kind!r}][{k!r}] must be a positive int, got {v!r}")
            if k.startswith("BLOCK") or k in ("CHUNK", "WEIGHT_BLOCK"):
                if v < MIN_PAD or v & (v - 1):
                    raise ValueError(
                        f"fused config[{kind!r}][{k!r}] must be a power of two >= {MIN_PAD}, got {v}"
                    )
    return config


def fused_splits(cfg: dict, tiles: int, rows: int, device: torch.device) -> tuple[int, int]:
    """``(S, rows per split)`` of the fused weight gradient: ``cfg["SPLITS"]`` when set, else enough splits for
    :data:`PROGRAMS_PER_SM` programs a multiprocessor (``S = ceil(2 SMs / tiles)``: head-sized layers have few
    ``dW`` tiles and a long batch), each split at least :data:`MIN_SPLIT_ROWS` rows, at most :data:`MAX_SPLITS`.
    Splits are whole ``BLOCK_K`` steps and none is empty. (The per-layer kernel splits by its own rule,
    ``tuning.per_layer_splits``, one program a multiprocessor.)"""
    bk = cfg["BLOCK_K"]
    want = cfg["SPLITS"]
    if want is None:
        want = 1
        if device.type == "cuda":
            programs = PROGRAMS_PER_SM * runtime.multiprocessor_count(device)
            want = max(1, min(-(-programs // max(tiles, 1)), rows // MIN_SPLIT_ROWS, MAX_SPLITS))
    steps = max(1, -(-rows // bk))
    want = max(1, min(want, steps))
    per_split = -(-steps // want) * bk
    return -(-max(rows, 1) // per_split), per_split
