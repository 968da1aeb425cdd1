"""Launch configurations and shape limits of the fused head path, in one place.

Per device: ``chain`` for the two row-block kernels (forward, data gradient), ``weights`` for the grouped
weight gradient, and ``max_width``, the widest hidden layer the fused path takes there. Defaults are keyed on
the CUDA capability (the newest key not above the device's); the interpreter gets one tiny configuration that
still exercises every code path (chunked layers, several output tiles and ``BLOCK_K`` steps).

chain: ``BLOCK_M`` rows a program; ``BLOCK_K`` the step over a wide input (``x``, ``dy``); ``BLOCK_N`` the tile
over a wide output (``y``, ``dx``); ``CHUNK`` the most columns of a hidden layer computed at once, lowered by
:func:`chunk_for` so that a weight block ``[padded width, chunk]`` holds at most ``WEIGHT_BLOCK`` elements (its
pipelined copies in shared memory grow with it). Wider layers go chunk by chunk through their saved output.
weights: a ``BLOCK_M x BLOCK_N`` tile of ``dW``, ``BLOCK_K`` batch rows a step, ``SPLITS`` batch splits
(``None``: see :func:`weight_splits`).

``max_width`` is measured by lowering (``python tests/_lower_fused.py --sweep``): the widest power of two whose
kernels compile for that capability without a spill and within its shared memory (sm_90 227 KB, sm_80 163 KB,
sm_86/89 99 KB). At 512 the chain kernels take 138-242 registers and 139 KB (sm_80) to 200 KB (sm_90) of shared
memory; at 1024 they spill on sm_90 and would need 270-400 KB.
"""

from __future__ import annotations

import functools

import torch

MIN_PAD = 16  # tl.dot needs every dimension >= 16

_INTERPRETER = {
    "chain": {"BLOCK_M": 16, "BLOCK_K": 16, "BLOCK_N": 16, "CHUNK": 32, "WEIGHT_BLOCK": 1 << 20,
              "num_warps": 1, "num_stages": 1},
    "weights": {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 16, "SPLITS": 1, "num_warps": 1, "num_stages": 1},
    "max_width": 512,
}  # fmt: skip
_WEIGHTS = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "SPLITS": None, "num_warps": 8, "num_stages": 3}
_DEFAULTS = {
    80: {
        "chain": {"BLOCK_M": 64, "BLOCK_K": 32, "BLOCK_N": 64, "CHUNK": 128, "WEIGHT_BLOCK": 32768,
                  "num_warps": 8, "num_stages": 2},
        "weights": _WEIGHTS,
        "max_width": 512,
    },
    86: {  # consumer Ampere and Ada: 99 KB of shared memory
        "chain": {"BLOCK_M": 64, "BLOCK_K": 32, "BLOCK_N": 64, "CHUNK": 64, "WEIGHT_BLOCK": 16384,
                  "num_warps": 8, "num_stages": 2},
        "weights": _WEIGHTS,
        "max_width": 256,
    },
    90: {
        "chain": {"BLOCK_M": 64, "BLOCK_K": 64, "BLOCK_N": 64, "CHUNK": 128, "WEIGHT_BLOCK": 32768,
                  "num_warps": 8, "num_stages": 2},
        "weights": _WEIGHTS,
        "max_width": 512,
    },
}  # fmt: skip
# The widest hidden layer any device takes: a model forced onto the fused path wider than this is refused when
# it is built; a device's own max_width is checked at the call.
MAX_WIDTH = max(t["max_width"] for t in _DEFAULTS.values())
CHAIN_KEYS = ("BLOCK_M", "BLOCK_K", "BLOCK_N", "CHUNK", "WEIGHT_BLOCK", "num_warps", "num_stages")
WEIGHT_KEYS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "SPLITS", "num_warps", "num_stages")
MIN_SPLIT_ROWS = 512
MAX_SPLITS = 32
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


def _copy(table: dict) -> dict:
    return {k: dict(v) if isinstance(v, dict) else v for k, v in table.items()}


def defaults_for_capability(capability: int) -> dict:
    """The defaults a device of ``capability`` (e.g. 90 for sm_90) gets: fresh dicts, safe to modify."""
    keys = [k for k in sorted(_DEFAULTS) if k <= capability]
    return _copy(_DEFAULTS[keys[-1] if keys else min(_DEFAULTS)])


def default_config(device: torch.device, interpreted: bool) -> dict:
    """``{"chain": {...}, "weights": {...}, "max_width": n}`` for ``device``."""
    if interpreted or device.type != "cuda":
        return _copy(_INTERPRETER)
    major, minor = torch.cuda.get_device_capability(device)
    return defaults_for_capability(10 * major + minor)


def check_config(config) -> dict:
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


_SM_COUNT: dict = {}


def weight_splits(cfg: dict, tiles: int, rows: int, device: torch.device) -> tuple[int, int]:
    """``(S, rows per split)`` of the weight gradient: ``cfg["SPLITS"]`` when set, else enough splits for
    :data:`PROGRAMS_PER_SM` programs a multiprocessor (``S = ceil(2 SMs / tiles)``: head-sized layers have few
    ``dW`` tiles and a long batch), each split at least :data:`MIN_SPLIT_ROWS` rows, at most :data:`MAX_SPLITS`.
    Splits are whole ``BLOCK_K`` steps and none is empty."""
    bk = cfg["BLOCK_K"]
    want = cfg["SPLITS"]
    if want is None:
        want = 1
        if device.type == "cuda":
            if device not in _SM_COUNT:
                _SM_COUNT[device] = torch.cuda.get_device_properties(device).multi_processor_count
            programs = PROGRAMS_PER_SM * _SM_COUNT[device]
            want = max(1, min(-(-programs // max(tiles, 1)), rows // MIN_SPLIT_ROWS, MAX_SPLITS))
    steps = max(1, -(-rows // bk))
    want = max(1, min(want, steps))
    per_split = -(-steps // want) * bk
    return -(-max(rows, 1) // per_split), per_split
