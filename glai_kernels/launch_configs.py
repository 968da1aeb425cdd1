"""Which launch configuration each kernel launch uses, and where it came from: ``config_for`` and
``launch_config``.

The last of the three tuning modules a launch reads (see :mod:`glai_kernels.tuning`): it reads the space and
defaults and the persistent cache (:mod:`.tuning_cache`), and the runtime facts (:mod:`.runtime`). The lookup
order (CONTRIBUTING's autotuning section repeats it for users), answered from an in-memory memo:

1. under Triton's interpreter, one small fixed configuration;
2. the configuration ``glai-autotune`` measured on this GPU for the shape bucket of ``(M, N, K)``, from the
   persistent cache, or the one of the nearest tuned bucket;
3. otherwise the default of :func:`tuning.default_config` for this GPU's architecture and the exact shape.

Nothing is ever tuned inside a training step unless ``GLAI_AUTOTUNE=1`` asks for a bucket to be tuned (then
saved) the first time a shape of it runs; the tuner registers itself for that (:func:`set_miss_tuner`, called
when ``glai_kernels`` is imported).

Determinism: a kernel's result depends on its configuration (``BLOCK_K`` fixes the order of the fp32 sums), so
the same GPU model, the same configuration and the same Triton version give the same bits. A tuning-cache entry
or ``GLAI_AUTOTUNE=1`` can change the configuration; :func:`launch_config` says which one a launch gets.
"""

from __future__ import annotations

import os
import warnings
from typing import NamedTuple

import torch

from . import runtime, tuning
from . import tuning_cache as cache
from .tuning import KERNELS


class LaunchConfig(NamedTuple):
    """The configuration of a launch and where it came from: ``"interpreter"``, ``"tuned"`` (an entry for the
    shape's bucket), ``"tuned-nearest"`` (the nearest tuned bucket's entry), ``"tuned-now"`` (tuned at first
    use under ``GLAI_AUTOTUNE=1``), ``"default"``; ``arch`` is the architecture whose defaults apply;
    ``splits`` the number of batch ranges the weight gradient sums separately on this GPU (1 elsewhere).

    A configuration with ``TMA`` runs the pointer loop instead for a call whose operands a tensor descriptor
    cannot describe (rows not on 16-byte boundaries, a base address off 16 bytes)."""

    config: dict
    source: str
    arch: str
    splits: int = 1


_memo: dict[tuple, LaunchConfig] = {}
# Bumped by reload(): launch plans memoised with the configurations of an older generation are dropped.
generation = 0
_miss_tuner = None


def set_miss_tuner(fn) -> None:
    """Register ``fn(kernel, shapes, dtype, quiet=True)`` (the tuner's ``tune_and_save``), which
    ``GLAI_AUTOTUNE=1`` calls for a bucket with no tuned entry. The tuner registers itself on import."""
    global _miss_tuner
    _miss_tuner = fn


def descriptors_available() -> bool:
    """Whether this Triton has host-side tensor descriptors (``triton.tools.tensor_descriptor``, 3.4 on)."""
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: F401
    except Exception:
        return False
    return True


def _tune_on_miss() -> bool:
    if os.environ.get("GLAI_AUTOTUNE", "0") in ("", "0"):
        return False
    # Timing launches kernels and synchronizes: never inside a CUDA graph being captured.
    try:
        return not torch.cuda.is_current_stream_capturing()
    except RuntimeError:  # a build of torch without CUDA captures nothing
        return True


def launch_config(kernel: str, M: int, N: int, K: int, dtype, precision: str | None = None, device=None):
    """The :class:`LaunchConfig` (configuration, source, architecture) of ``kernel`` on a GEMM of
    ``M x N x K`` (``costs.gemm_dims`` gives them for a layer) with operands of ``dtype`` on ``device``
    (default: the current CUDA device). ``precision`` is ``tl.dot``'s ``input_precision`` (default: what
    PyTorch's fp32 matmul setting asks, :func:`runtime.torch_dot_precision`). The configuration is a fresh dict.

    The weight gradient's split of the batch depends on the GPU's multiprocessor count as well
    (:func:`tuning.per_layer_splits`); ``splits`` gives it."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; expected one of {KERNELS}")
    if runtime.interpreting():
        return LaunchConfig(tuning.check_tile_config(tuning.INTERPRETER), "interpreter", "interpreter")
    if precision is None:
        precision = runtime.torch_dot_precision(dtype)
    index = runtime.device_index(device)
    key = cache.dtype_key(dtype, precision)
    memo_key = (index, kernel, key, M, N, K)
    hit = _memo.get(memo_key)
    if hit is None:
        hit = _memo[memo_key] = _lookup(index, kernel, M, N, K, dtype, key)
    splits = 1
    if kernel == "backward_weights" and index is not None:  # dW [M, N] over a batch of K rows
        splits = tuning.per_layer_splits(hit.config, M, N, K, runtime.device_info(index)[1])[0]
    return LaunchConfig(dict(hit.config), hit.source, hit.arch, splits)


def config_for(kernel: str, M: int, N: int, K: int, dtype, precision: str = "ieee", device=None) -> dict:
    """The launch configuration for ``kernel`` on a GEMM of ``M x N x K`` in ``dtype`` (a fresh dict), as
    :func:`launch_config` without its source. ``precision`` is the launch's ``dot_precision``: fp32 under
    ``"tf32"`` is tuned and looked up apart from IEEE fp32 (:data:`tuning_cache.DTYPE_KEYS`)."""
    return launch_config(kernel, M, N, K, dtype, precision, device).config


def _current_identity(index: int | None):
    """The cache identity of CUDA device ``index``, or None when no GPU or no Triton is here."""
    return None if index is None else cache.identity(index)


def _lookup(index, kernel, M, N, K, dtype, key) -> LaunchConfig:
    capability = runtime.device_info(index)[0] if index is not None else None
    arch = tuning.arch_of(capability)

    def default() -> LaunchConfig:
        tma = capability is not None and descriptors_available()
        return LaunchConfig(tuning.default_config(kernel, M, N, K, key, capability, tma), "default", arch)

    ident = _current_identity(index)
    if ident is None:
        return default()
    bucket = tuning.bucket_of(M, N, K)
    table = cache.load(ident)
    source = "tuned"
    if (kernel, key, bucket) not in table and _tune_on_miss() and _miss_tuner is not None:
        try:
            if index is None:  # a stand-in identity (tests): tune where the tuner is told to
                _miss_tuner(kernel, [(M, N, K)], dtype, quiet=True)
            else:
                with torch.cuda.device(index):
                    _miss_tuner(kernel, [(M, N, K)], dtype, quiet=True)
            table = cache.load(ident)
            source = "tuned-now"
        except Exception as exc:  # a failed tuning must not fail the training step it was asked from
            warnings.warn(
                f"GLAI_AUTOTUNE: tuning {kernel} for {M}x{N}x{K} failed ({exc}); using the default",
                cache.TuningCacheWarning,
                stacklevel=4,
            )
    found = table.get((kernel, key, bucket))
    if found is None:
        found, source = _nearest(table, kernel, key, bucket), "tuned-nearest"
    return default() if found is None else LaunchConfig(dict(found), source, arch)


# Dtype keys whose tuned tiles stand in for each other: fp16 and bf16 run the same tensor-core paths. IEEE fp32
# (FMA units) and TF32 (tensor cores) share an element size but not their best tiles, so each is on its own.
_TILE_FAMILY = {"float16": "16-bit", "bfloat16": "16-bit"}


def _nearest(table: dict, kernel: str, key: str, bucket: tuple[int, int, int]) -> dict | None:
    """The tuned configuration of the closest tuned bucket (L1 distance over the class indices) of the same
    kernel, preferring the same dtype key, then one of the same tile family."""
    family = _TILE_FAMILY.get(key, key)
    best = None
    for (k, d, b), c in table.items():
        if k != kernel or _TILE_FAMILY.get(d, d) != family:
            continue
        rank = (sum(abs(x - y) for x, y in zip(b, bucket)), d != key, b)
        if best is None or rank < best[0]:
            best = (rank, c)
    return None if best is None else best[1]


def reload() -> None:
    """Forget every memoised configuration and loaded cache file (after the cache was rewritten)."""
    global generation
    generation += 1
    _memo.clear()
    cache.forget()
