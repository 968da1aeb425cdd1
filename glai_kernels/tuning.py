"""Launch configurations of the Triton kernels (tile sizes, ``GROUP_M``, ``num_warps``, ``num_stages``).

``config_for(kernel, M, N, K, dtype, precision)`` is what every host function asks (``M x N`` the output, ``K``
the reduction, see :mod:`glai_kernels.costs`; ``precision`` keys fp32 under TF32 apart from IEEE fp32). It
answers at once from an in-memory memo:

1. under Triton's interpreter, one small fixed configuration;
2. the configuration ``glai-autotune`` measured on this GPU for the shape bucket of ``(M, N, K)``, from the
   persistent cache (:mod:`glai_kernels.tuning_cache`), or the one of the nearest tuned bucket;
3. otherwise a sane default. Nothing is ever tuned inside a training step, unless ``GLAI_AUTOTUNE=1`` asks
   for a bucket to be tuned (then saved) the first time a shape of it runs.

Shape buckets split each of ``M``, ``N``, ``K`` at a few powers of two: the best tile depends on whether the
grid of ``(M / BLOCK_M) x (N / BLOCK_N)`` tiles fills the GPU and on how long the ``K`` loop is, both of which
change by factors, not by units.
"""

from __future__ import annotations

import os
import warnings
from bisect import bisect_left

import torch

from . import tuning_cache as _cache
from .backend import interpreting
from .costs import GEMM_KERNELS

KERNELS = GEMM_KERNELS
PARAMS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "num_warps", "num_stages")

_INTERPRETER = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 4, "num_warps": 1, "num_stages": 1}
_DEFAULT = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8, "num_warps": 8, "num_stages": 3}

# Bucket edges: a dimension d falls in class bisect_left(edges, d), i.e. class i holds edges[i-1] < d <= edges[i].
M_EDGES = (64, 512, 4096)
NK_EDGES = (256, 1024, 4096)
# One shape per class, the one the autotuner measures for it.
M_REPS = (64, 512, 4096, 16384)
NK_REPS = (256, 1024, 4096, 8192)


def _cfg(bm, bn, bk, warps, stages, group=8) -> dict:
    return {
        "BLOCK_M": bm,
        "BLOCK_N": bn,
        "BLOCK_K": bk,
        "GROUP_M": group,
        "num_warps": warps,
        "num_stages": stages,
    }


# The candidates timed per kernel. BLOCK_N stays a multiple of 32 (a tile of output columns holds whole
# pattern words). Shared memory per stage is (BLOCK_M + BLOCK_N) * BLOCK_K * itemsize; candidates that do not
# fit a given GPU fail to compile there and the autotuner skips them.
_GEMM_SPACE = (
    _cfg(128, 128, 32, 8, 3),
    _cfg(128, 128, 64, 8, 3),
    _cfg(128, 128, 32, 4, 4),
    _cfg(128, 256, 32, 8, 3),
    _cfg(256, 128, 32, 8, 3),
    _cfg(64, 256, 32, 8, 3),
    _cfg(128, 64, 32, 4, 4),
    _cfg(64, 128, 32, 4, 4),
    _cfg(64, 128, 64, 4, 3),
    _cfg(64, 64, 32, 4, 4),
    _cfg(64, 64, 64, 4, 3),
    _cfg(32, 64, 32, 4, 4),
    _cfg(32, 128, 64, 4, 3),
)
# backward_weights reduces over the batch (K = batch, often the longest axis): deeper K tiles and pipelines.
_WEIGHTS_SPACE = _GEMM_SPACE + (_cfg(128, 128, 64, 8, 4), _cfg(64, 64, 128, 4, 3))
SEARCH_SPACE = {
    "gate": _GEMM_SPACE,
    "masked_forward": _GEMM_SPACE,
    "backward_data": _GEMM_SPACE,
    "backward_weights": _WEIGHTS_SPACE,
}

_memo: dict[tuple, dict] = {}


def bucket_of(M: int, N: int, K: int) -> tuple[int, int, int]:
    """The shape bucket of a GEMM ``M x N x K``: one class index per dimension."""
    return bisect_left(M_EDGES, M), bisect_left(NK_EDGES, N), bisect_left(NK_EDGES, K)


def _class_label(name: str, edges: tuple[int, ...], i: int) -> str:
    if i == 0:
        return f"{name}<={edges[0]}"
    if i == len(edges):
        return f"{name}>{edges[-1]}"
    return f"{edges[i - 1]}<{name}<={edges[i]}"


def bucket_label(bucket: tuple[int, int, int]) -> str:
    m, n, k = bucket
    return " ".join(
        (_class_label("M", M_EDGES, m), _class_label("N", NK_EDGES, n), _class_label("K", NK_EDGES, k))
    )


def all_buckets() -> list[tuple[int, int, int]]:
    return [(m, n, k) for m in range(len(M_REPS)) for n in range(len(NK_REPS)) for k in range(len(NK_REPS))]


def representative(bucket: tuple[int, int, int]) -> tuple[int, int, int]:
    """The ``(M, N, K)`` the autotuner times for ``bucket``."""
    m, n, k = bucket
    return M_REPS[m], NK_REPS[n], NK_REPS[k]


def default_config(kernel: str, M: int, N: int, K: int, dtype: torch.dtype) -> dict:
    """The configuration used when nothing was tuned: the default tile, halved in rows for a batch so small
    that a 128-row tile would compute mostly padding."""
    cfg = dict(_DEFAULT)
    if M <= M_EDGES[0]:  # one M class, so the memo per bucket holds one default
        cfg.update(BLOCK_M=64, num_warps=4)
    return cfg


def check_config(cfg) -> dict:
    """``cfg`` when it is a well-formed launch configuration, else ``ValueError``. Guards what the cache returns:
    a configuration that does not pass never reaches a kernel."""
    if not isinstance(cfg, dict) or set(cfg) != set(PARAMS):
        raise ValueError(f"a launch configuration needs exactly the keys {PARAMS}, got {cfg!r}")
    for key, value in cfg.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive int, got {value!r}")
    for key in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps"):
        if cfg[key] & (cfg[key] - 1) or cfg[key] > 1024:
            raise ValueError(f"{key} must be a power of two no larger than 1024, got {cfg[key]}")
    if cfg["BLOCK_M"] < 16 or cfg["BLOCK_N"] < 16 or cfg["BLOCK_K"] < 16:
        raise ValueError(f"tiles must be at least 16 in each dimension (tl.dot), got {cfg}")
    if cfg["num_warps"] > 32 or cfg["num_stages"] > 8:
        raise ValueError(f"num_warps <= 32 and num_stages <= 8 expected, got {cfg}")
    return cfg


# Dtype keys whose tuned tiles stand in for each other: fp16 and bf16 run the same tensor-core paths. IEEE fp32
# (FMA units) and TF32 (tensor cores) share an element size but not their best tiles, so each is on its own.
_TILE_FAMILY = {"float16": "16-bit", "bfloat16": "16-bit"}


def _nearest(table: dict, kernel: str, key: str, bucket: tuple[int, int, int]) -> dict | None:
    """The tuned configuration for ``bucket``, or that of the closest tuned bucket (L1 distance over the class
    indices) of the same kernel, preferring the same dtype key, then one of the same tile family."""
    family = _TILE_FAMILY.get(key, key)
    best = None
    for (k, d, b), cfg in table.items():
        if k != kernel or _TILE_FAMILY.get(d, d) != family:
            continue
        rank = (sum(abs(x - y) for x, y in zip(b, bucket)), d != key, b)
        if best is None or rank < best[0]:
            best = (rank, cfg)
    return None if best is None else best[1]


def _current_identity():
    """The cache identity of the current CUDA device, or None when no GPU or no Triton is here."""
    if not torch.cuda.is_available():
        return None
    return _cache.identity(torch.cuda.current_device())


def _tune_on_miss() -> bool:
    if os.environ.get("GLAI_AUTOTUNE", "0") in ("", "0"):
        return False
    # Timing launches kernels and synchronizes: never inside a CUDA graph being captured.
    try:
        return not torch.cuda.is_current_stream_capturing()
    except RuntimeError:  # a build of torch without CUDA captures nothing
        return True


def config_for(kernel: str, M: int, N: int, K: int, dtype: torch.dtype, precision: str = "ieee") -> dict:
    """The launch configuration for ``kernel`` on a GEMM of ``M x N x K`` in ``dtype`` (a fresh dict).

    ``precision`` is ``tl.dot``'s ``input_precision`` the launch will use (``triton_ops.dot_precision``): fp32
    under ``"tf32"`` is tuned and looked up apart from IEEE fp32 (:data:`tuning_cache.DTYPE_KEYS`)."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; expected one of {KERNELS}")
    if interpreting():
        return dict(_INTERPRETER)
    bucket = bucket_of(M, N, K)
    ident = _current_identity()
    name = _cache.dtype_key(dtype, precision)
    key = (ident, kernel, name, bucket)
    cfg = _memo.get(key)
    if cfg is None:
        cfg = _lookup(ident, kernel, M, N, K, dtype, name, bucket)
        _memo[key] = cfg
    return dict(cfg)


def _lookup(ident, kernel, M, N, K, dtype, name, bucket) -> dict:
    if ident is None:
        return default_config(kernel, M, N, K, dtype)
    table = _cache.load(ident)
    if (kernel, name, bucket) not in table and _tune_on_miss():
        try:
            from . import autotune

            autotune.tune_and_save(kernel, [(M, N, K)], dtype, quiet=True)
            table = _cache.load(ident)
        except Exception as exc:  # a failed tuning must not fail the training step it was asked from
            warnings.warn(
                f"GLAI_AUTOTUNE: tuning {kernel} for {M}x{N}x{K} failed ({exc}); using the default",
                _cache.TuningCacheWarning,
                stacklevel=3,
            )
    cfg = table.get((kernel, name, bucket)) or _nearest(table, kernel, name, bucket)
    return dict(cfg) if cfg is not None else default_config(kernel, M, N, K, dtype)


def reload() -> None:
    """Forget every memoised configuration and loaded cache file (after the cache was rewritten)."""
    _memo.clear()
    _cache.forget()
