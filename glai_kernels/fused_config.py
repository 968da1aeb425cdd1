"""Launch configurations and shape limits of the fused head path, in one place.

Two configurations a device: ``chain`` for the two row-block kernels (forward, data gradient) and ``weights``
for the grouped weight gradient. Defaults are keyed on the CUDA capability (the newest key not above the
device's), and the interpreter gets one tiny configuration that still exercises every code path (chunked wide
layers, several output tiles, several ``BLOCK_K`` steps).

chain: ``BLOCK_M`` rows a program; ``BLOCK_K`` the step over a wide input (``x``, ``dy``); ``BLOCK_N`` the tile
over a wide output (``y``, ``dx``); ``CHUNK`` the most columns of a hidden layer computed at once (wider layers
go chunk by chunk through their saved output). weights: a ``BLOCK_M x BLOCK_N`` tile of ``dW``, ``BLOCK_K``
batch rows a step, and ``SPLITS`` batch splits (``None``: enough to give every multiprocessor about one
program, see :func:`weight_splits`).

Every default compiles for sm_80 and sm_90 without a spill at every padded width up to :data:`MAX_WIDTH`,
checked by ``tests/_lower_fused.py``, which also prints the registers of each.
"""

from __future__ import annotations

import torch

# Hidden widths (quantitative and structural) the fused path takes: the widest whose kernels compile without
# spills with the defaults below (measured by lowering, see tests/_lower_fused.py). Wider layers keep the
# per-layer kernels under fused=None, and fused=True refuses them.
MAX_WIDTH = 256
MIN_PAD = 16  # tl.dot needs every dimension >= 16

_INTERPRETER = {
    "chain": {"BLOCK_M": 16, "BLOCK_K": 16, "BLOCK_N": 16, "CHUNK": 32, "num_warps": 1, "num_stages": 1},
    "weights": {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 16, "SPLITS": 1, "num_warps": 1, "num_stages": 1},
}
_DEFAULTS = {
    80: {
        "chain": {"BLOCK_M": 64, "BLOCK_K": 32, "BLOCK_N": 64, "CHUNK": 64, "num_warps": 8, "num_stages": 2},
        "weights": {
            "BLOCK_M": 64,
            "BLOCK_N": 64,
            "BLOCK_K": 64,
            "SPLITS": None,
            "num_warps": 8,
            "num_stages": 3,
        },
    },
    90: {
        "chain": {"BLOCK_M": 64, "BLOCK_K": 64, "BLOCK_N": 64, "CHUNK": 64, "num_warps": 8, "num_stages": 2},
        "weights": {
            "BLOCK_M": 64,
            "BLOCK_N": 64,
            "BLOCK_K": 64,
            "SPLITS": None,
            "num_warps": 8,
            "num_stages": 3,
        },
    },
}
CHAIN_KEYS = ("BLOCK_M", "BLOCK_K", "BLOCK_N", "CHUNK", "num_warps", "num_stages")
WEIGHT_KEYS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "SPLITS", "num_warps", "num_stages")
# A split of the weight gradient reduces at least this many batch rows: fewer, and the fixed cost of writing
# and adding the fp32 partial tile outweighs the parallelism it buys.
MIN_SPLIT_ROWS = 512
MAX_SPLITS = 32


def padded(n: int) -> int:
    """A layer width as a register tile holds it: the next power of two, at least :data:`MIN_PAD`."""
    return max(MIN_PAD, 1 << (n - 1).bit_length())


def default_config(device: torch.device, interpreted: bool) -> dict:
    """``{"chain": {...}, "weights": {...}}`` for ``device`` (fresh dicts, safe to modify)."""
    if interpreted or device.type != "cuda":
        table = _INTERPRETER
    else:
        major, minor = torch.cuda.get_device_capability(device)
        cap = 10 * major + minor
        keys = [k for k in sorted(_DEFAULTS) if k <= cap]
        table = _DEFAULTS[keys[-1] if keys else min(_DEFAULTS)]
    return {kind: dict(cfg) for kind, cfg in table.items()}


def defaults_for_capability(capability: int) -> dict:
    """The defaults a device of ``capability`` (e.g. 90) gets; for the lowering check."""
    keys = [k for k in sorted(_DEFAULTS) if k <= capability]
    return {kind: dict(cfg) for kind, cfg in _DEFAULTS[keys[-1] if keys else min(_DEFAULTS)].items()}


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
            if k.startswith("BLOCK") or k == "CHUNK":
                if v < MIN_PAD or v & (v - 1):
                    raise ValueError(
                        f"fused config[{kind!r}][{k!r}] must be a power of two >= {MIN_PAD}, got {v}"
                    )
    return config


_SM_COUNT: dict = {}


def weight_splits(cfg: dict, tiles: int, rows: int, device: torch.device) -> tuple[int, int]:
    """``(S, rows per split)`` of the weight gradient: ``cfg["SPLITS"]`` when set, else about one program per
    multiprocessor (``S = SMs // tiles``), each split at least :data:`MIN_SPLIT_ROWS` rows, at most
    :data:`MAX_SPLITS`. Splits are whole ``BLOCK_K`` steps and none is empty."""
    bk = cfg["BLOCK_K"]
    want = cfg["SPLITS"]
    if want is None:
        want = 1
        if device.type == "cuda":
            if device not in _SM_COUNT:
                _SM_COUNT[device] = torch.cuda.get_device_properties(device).multi_processor_count
            want = max(1, min(_SM_COUNT[device] // max(tiles, 1), rows // MIN_SPLIT_ROWS, MAX_SPLITS))
    steps = max(1, -(-rows // bk))
    want = max(1, min(want, steps))
    per_split = -(-steps // want) * bk
    return -(-max(rows, 1) // per_split), per_split
