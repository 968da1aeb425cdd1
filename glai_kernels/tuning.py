"""Launch configurations of the per-layer Triton kernels: what a configuration is, the search space, the
defaults.

The tuning code, split by when it runs. What a launch reads, each importing only those above it in this list::

    tuning          what a configuration is, the candidates per kernel, the default per GPU architecture
    tuning_cache    the persistent per-GPU cache of tuned configurations
    launch_configs  the lookup: ``launch_config`` / ``config_for``

and the tools, which never run inside a training step (``glai_kernels.tools``)::

    tools.tuner     timing candidates on a GPU and writing the cache
    tools.autotune  the ``glai-autotune`` command line
    tools.lowering  compiling a kernel for an architecture without a GPU, to read its registers and spills

The fused path reads none of this: its configurations come from its dispatch table (``fused_table``).

A configuration is a dict: the tile ``BLOCK_M x BLOCK_N`` of the output and ``BLOCK_K`` of the reduction,
``GROUP_M`` (grouped tile order), ``num_warps`` and ``num_stages`` (software pipelining depth), and two flags,
``TMA`` (a persistent grid whose main loop loads through tensor descriptors, sm_90) and ``K_MAJOR`` (TF32
backward kernels read column-major copies of operands that are not contiguous along the reduction, the layout
Hopper's TF32 tensor-core instructions read).

Defaults depend on the GPU architecture (compute capability), the dtype key and the GEMM's ``M x N x K``:
Hopper gets tiles for wgmma (128x256x64 in 16-bit), Ampere keeps the tiles of mma.sync; a small output gets a
tile it fills; a narrow output (the output layer, ``N <= 32``) gets a tile as narrow as ``tl.dot`` allows.
"""

from __future__ import annotations

from bisect import bisect_left

from .costs import GEMM_KERNELS

KERNELS = GEMM_KERNELS
PARAMS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "num_warps", "num_stages")
FLAGS = ("TMA", "K_MAJOR")  # 0 or 1; a configuration without them has them at 0
KEYS = PARAMS + FLAGS

INTERPRETER = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 4, "num_warps": 1, "num_stages": 1}

# Bucket edges: a dimension d falls in class bisect_left(edges, d), i.e. class i holds edges[i-1] < d <= edges[i].
M_EDGES = (64, 512, 4096)
NK_EDGES = (256, 1024, 4096)
# One shape per class, the one the autotuner measures for it.
M_REPS = (64, 512, 4096, 16384)
NK_REPS = (256, 1024, 4096, 8192)


def cfg(bm, bn, bk, warps, stages, group=8, tma=0, k_major=0) -> dict:
    return {
        "BLOCK_M": bm,
        "BLOCK_N": bn,
        "BLOCK_K": bk,
        "GROUP_M": group,
        "num_warps": warps,
        "num_stages": stages,
        "TMA": tma,
        "K_MAJOR": k_major,
    }


# The candidates timed per kernel, on every architecture. BLOCK_N stays a multiple of 32 (a tile of output
# columns holds whole pattern words). Shared memory per stage is (BLOCK_M + BLOCK_N) * BLOCK_K * itemsize;
# candidates that do not fit a given GPU fail to compile there and the autotuner skips them.
_GEMM_SPACE = (
    cfg(128, 128, 32, 8, 3),
    cfg(128, 128, 64, 8, 3),
    cfg(128, 128, 32, 4, 4),
    cfg(128, 256, 32, 8, 3),
    cfg(256, 128, 32, 8, 3),
    cfg(64, 256, 32, 8, 3),
    cfg(128, 64, 32, 4, 4),
    cfg(64, 128, 32, 4, 4),
    cfg(64, 128, 64, 4, 3),
    cfg(64, 64, 32, 4, 4),
    cfg(64, 64, 64, 4, 3),
    cfg(32, 64, 32, 4, 4),
    cfg(32, 128, 64, 4, 3),
)
# backward_weights reduces over the batch (K = batch, often the longest axis): deeper K tiles and pipelines.
_WEIGHTS_SPACE = _GEMM_SPACE + (cfg(128, 128, 64, 8, 4), cfg(64, 64, 128, 4, 3))
SEARCH_SPACE = {
    "gate": _GEMM_SPACE,
    "masked_forward": _GEMM_SPACE,
    "backward_data": _GEMM_SPACE,
    "backward_weights": _WEIGHTS_SPACE,
}
# Hopper tiles: a warpgroup (4 warps) per 64 rows issuing wgmma over wide tiles, and deeper pipelines (sm_90
# has 227 KB of shared memory a block). Each is tried with both main loops (pointer and persistent TMA).
HOPPER_SPACE = (
    cfg(128, 256, 64, 8, 3),
    cfg(128, 256, 64, 8, 4),
    cfg(256, 128, 64, 8, 3),
    cfg(128, 128, 64, 8, 4),
    cfg(128, 256, 32, 8, 4),
    cfg(128, 128, 64, 4, 4),
    cfg(64, 256, 64, 4, 4),
)
SIXTEEN_BIT = ("float16", "bfloat16")
# The kernels whose TF32 operands are not contiguous along the reduction (K_MAJOR decides whether to copy).
K_MAJOR_KERNELS = ("backward_data", "backward_weights")


def candidates(kernel: str, key: str, capability: tuple[int, int] | None, tma: bool) -> list[dict]:
    """The configurations the autotuner tries for ``kernel`` with dtype key ``key`` on a GPU of compute
    ``capability``; ``tma``: whether this Triton and GPU run tensor descriptors."""
    space = list(SEARCH_SPACE[kernel])
    hopper = capability is not None and capability[0] >= 9
    if hopper and key != "float32":  # IEEE fp32 runs on the FMA units: no wgmma tiles for it
        space += [c for c in HOPPER_SPACE if c not in space]
        if tma:
            space += [dict(c, TMA=1) for c in HOPPER_SPACE]
    if key == "tf32" and kernel in K_MAJOR_KERNELS:
        space += [dict(c, K_MAJOR=1) for c in space]
    return space


def bucket_of(M: int, N: int, K: int) -> tuple[int, int, int]:
    """The shape bucket of a GEMM ``M x N x K``: one class index per dimension."""
    return bisect_left(M_EDGES, M), bisect_left(NK_EDGES, N), bisect_left(NK_EDGES, K)


def class_label(name: str, edges: tuple[int, ...], i: int) -> str:
    if i == 0:
        return f"{name}<={edges[0]}"
    if i == len(edges):
        return f"{name}>{edges[-1]}"
    return f"{edges[i - 1]}<{name}<={edges[i]}"


def bucket_label(bucket: tuple[int, int, int]) -> str:
    m, n, k = bucket
    return " ".join(
        (class_label("M", M_EDGES, m), class_label("N", NK_EDGES, n), class_label("K", NK_EDGES, k))
    )


def all_buckets() -> list[tuple[int, int, int]]:
    return [(m, n, k) for m in range(len(M_REPS)) for n in range(len(NK_REPS)) for k in range(len(NK_REPS))]


def representative(bucket: tuple[int, int, int]) -> tuple[int, int, int]:
    """The ``(M, N, K)`` the autotuner times for ``bucket``."""
    m, n, k = bucket
    return M_REPS[m], NK_REPS[n], NK_REPS[k]


# ----------------------------------------------------------------------------- defaults
# The large-shape tile per (architecture, dtype key). Hopper: 16-bit wgmma over 128x256 with 64-deep K steps
# (48 KB a stage, 3 stages); TF32 halves the tile width for its 4-byte operands (32 KB a stage at 128x128x32,
# 4 stages). Ampere keeps the mma.sync tiles that were the default before Hopper tiles existed. IEEE fp32 (FMA
# units, 64 accumulators a thread) steps K by 16: at 32 its weight gradient spills under Triton 3.6. Every
# default compiles without a spill, with Triton 3.6 and 3.9 (tests/_lower_kernels.py).
_BASE = {
    ("hopper", "16-bit"): cfg(128, 256, 64, 8, 3),
    ("hopper", "tf32"): cfg(128, 128, 32, 8, 4),
    ("hopper", "float32"): cfg(128, 128, 16, 8, 4),
    ("ampere", "16-bit"): cfg(128, 128, 32, 8, 3),
    ("ampere", "tf32"): cfg(128, 128, 32, 8, 3),
    ("ampere", "float32"): cfg(128, 128, 16, 8, 4),
}
# A grid with fewer tiles than this leaves most of a GPU idle: small outputs get smaller tiles.
_FILL_TILES = 64
# TF32 weight gradients copy g and h to column-major once the copies' bytes are small next to the product's
# FLOPs: 8 B (N + K) bytes against 2 B N K FLOPs, i.e. when N K / (N + K) reaches this.
_K_MAJOR_COPY_WORTH = 1024


def arch_of(capability: tuple[int, int] | None) -> str:
    """``"hopper"`` for compute capability 9.x and up, ``"ampere"`` otherwise (and without a GPU)."""
    return "hopper" if capability is not None and capability[0] >= 9 else "ampere"


def _pow2_at_least(n: int, floor: int) -> int:
    p = floor
    while p < n:
        p *= 2
    return p


def default_config(
    kernel: str, M: int, N: int, K: int, key: str, capability: tuple[int, int] | None, tma: bool = False
) -> dict:
    """The configuration used when nothing was tuned, for ``kernel`` on a GEMM ``M x N x K`` with dtype key
    ``key`` (``tuning_cache.DTYPE_KEYS``) on a GPU of compute ``capability`` (None: no GPU, Ampere tiles);
    ``tma``: whether this Triton and GPU run tensor descriptors (the persistent loop is then the Hopper
    default for tensor-core dtypes)."""
    arch = arch_of(capability)
    family = "16-bit" if key in SIXTEEN_BIT else key
    c = dict(_BASE[(arch, family)])
    min_n = 32 if kernel == "gate" else 16  # the gate packs whole 32-bit words per tile
    if N <= 32:
        # The narrow output layer (e.g. 10 classes): the narrowest tile tl.dot takes, long K steps (the
        # operands are read along K, 16 bytes a load), 4 warps over 128 rows.
        c.update(BLOCK_N=_pow2_at_least(N, min_n), BLOCK_M=128, num_warps=4, num_stages=3)
        c["BLOCK_K"] = 128 if family == "16-bit" else 64
    else:
        # A small output: shrink the tile to the output, then split rows, then columns, until the grid has
        # enough tiles or the tile is 64 x 64 (32 wide for the gate); a tile of 64 rows is one warpgroup.
        c["BLOCK_M"] = min(c["BLOCK_M"], _pow2_at_least(M, 16))
        c["BLOCK_N"] = min(c["BLOCK_N"], _pow2_at_least(N, min_n))

        def tiles():
            return -(-M // c["BLOCK_M"]) * -(-N // c["BLOCK_N"])

        while tiles() < _FILL_TILES and c["BLOCK_M"] > 64:
            c["BLOCK_M"] //= 2
        while tiles() < _FILL_TILES and c["BLOCK_N"] > 64:
            c["BLOCK_N"] //= 2
        if c["BLOCK_M"] * c["BLOCK_N"] <= 64 * 64:
            c["num_warps"] = 4
    c["BLOCK_K"] = min(c["BLOCK_K"], _pow2_at_least(K, 16))
    if arch == "hopper" and tma and family != "float32":
        c["TMA"] = 1
    if family == "tf32" and kernel in K_MAJOR_KERNELS:
        # The data gradient copies only W (small next to the batch); the weight gradient copies g and h.
        c["K_MAJOR"] = int(kernel == "backward_data" or N * K >= _K_MAJOR_COPY_WORTH * (N + K))
    return c


def per_layer_splits(c: dict, N: int, K: int, M: int, sm_count: int | None) -> tuple[int, int]:
    """``(S, rows per split)`` of the per-layer weight-gradient kernel, ``dW [N, K]`` over a batch of ``M``
    rows: ``c["SPLIT_K"]`` when given, else enough splits to give each of ``sm_count`` multiprocessors one
    program when the ``dW`` tiles alone cannot (at most 16, each split at least 8 ``BLOCK_K`` steps long; one
    split without a GPU). Splits are whole ``BLOCK_K`` steps; none is empty. The split count changes the order
    of the fp32 sums, so it is part of what fixes the bits: it depends on the GPU's multiprocessor count.

    The fused weight gradient splits by its own rule (``fused_config.fused_splits``: two programs a
    multiprocessor, splits of at least 512 rows, at most 32), because its kernel computes every layer's ``dW``
    in one grid and fits two programs a multiprocessor; the two rules are kept apart on purpose."""
    bk = c["BLOCK_K"]
    steps = -(-M // bk)
    want = c.get("SPLIT_K")
    if want is None:
        want = 1
        if sm_count:
            tiles = -(-N // c["BLOCK_M"]) * -(-K // c["BLOCK_N"])
            want = max(1, min(sm_count // tiles, steps // 8, 16))
    if want <= 1 or steps <= 1:
        return 1, M
    per_split = -(-steps // min(want, steps)) * bk
    return -(-M // per_split), per_split


def check_tile_config(c) -> dict:
    """``c`` as a complete launch configuration (flags default to 0) when it is well formed, else
    ``ValueError``. Guards what the cache returns and what callers force: a configuration that does not pass
    never reaches a kernel."""
    if not isinstance(c, dict) or not set(PARAMS) <= set(c) or not set(c) <= set(KEYS):
        raise ValueError(f"a launch configuration needs the keys {PARAMS} and optionally {FLAGS}, got {c!r}")
    c = {k: c.get(k, 0) for k in KEYS}
    for key, value in c.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key in FLAGS else 1):
            raise ValueError(f"{key} must be a positive int, got {value!r}")
    for key in FLAGS:
        if c[key] > 1:
            raise ValueError(f"{key} must be 0 or 1, got {c[key]!r}")
    for key in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps"):
        if c[key] & (c[key] - 1) or c[key] > 1024:
            raise ValueError(f"{key} must be a power of two no larger than 1024, got {c[key]}")
    if c["BLOCK_M"] < 16 or c["BLOCK_N"] < 16 or c["BLOCK_K"] < 16:
        raise ValueError(f"tiles must be at least 16 in each dimension (tl.dot), got {c}")
    if c["num_warps"] > 32 or c["num_stages"] > 8:
        raise ValueError(f"num_warps <= 32 and num_stages <= 8 expected, got {c}")
    return c


def describe(c: dict) -> str:
    text = (
        f"{c['BLOCK_M']}x{c['BLOCK_N']}x{c['BLOCK_K']} group {c['GROUP_M']} "
        f"warps {c['num_warps']} stages {c['num_stages']}"
    )
    return text + (" tma" if c.get("TMA") else "") + (" k-major" if c.get("K_MAJOR") else "")
