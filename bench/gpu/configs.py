"""Which launch configuration each kernel ran with, and where it came from.

Every host function of ``glai_kernels.triton_ops`` asks ``config_for(kernel, M, N, K, dtype, precision)``
(through the name it imported). ``recording()`` wraps that name for the length of a call and keeps each
answer with its source, decided the way ``tuning.config_for`` decides:

- ``interpreter``: Triton's interpreter runs one fixed configuration;
- ``tuning cache``: an entry of this GPU's cache file for the exact shape bucket;
- ``tuning cache (nearest bucket)``: no exact entry, the nearest tuned bucket's configuration;
- ``default``: nothing tuned applies;
- ``explicit``: a caller passed ``config=`` (the plan never does; named so a line can say it).

The gate widens a ``BLOCK_N`` that is not a whole number of pattern words to one word; the recorded
configuration is the one launched, after that.

The fused head path has no tuning: each launch of ``fused_launch.launch`` is recorded with its warps, stages
and tile sizes, from ``fused default`` (the table of the device's capability) or the ``interpreter``.
"""

from __future__ import annotations

from contextlib import contextmanager

PARAM_ORDER = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "num_warps", "num_stages")


def source_of(kernel: str, M: int, N: int, K: int, dtype, precision: str, cfg: dict) -> str:
    """Where ``cfg`` (what ``config_for`` answered) came from. Never raises."""
    try:
        import torch

        from glai_kernels import backend, tuning, tuning_cache

        if backend.interpreting():
            return "interpreter"
        if not torch.cuda.is_available():
            return "default"  # config_for answers with the default without a GPU (the compile-count replay)
        ident = tuning_cache.identity(torch.cuda.current_device())
        table = tuning_cache.load(ident) if ident is not None else {}
        key = (kernel, tuning_cache.dtype_key(dtype, precision), tuning.bucket_of(M, N, K))
        if table.get(key) == _params(cfg):
            return "tuning cache"
        if _params(cfg) == tuning.default_config(kernel, M, N, K, dtype):
            return "default"
        return "tuning cache (nearest bucket)"
    except Exception as exc:  # the tuning module changed shape: say so, never fail the case
        return f"unknown ({type(exc).__name__}: {exc})"


def _params(cfg: dict) -> dict:
    return {k: cfg[k] for k in PARAM_ORDER if k in cfg}


def short(cfg: dict) -> str:
    """``BLOCK_M x BLOCK_N x BLOCK_K gGROUP_M wWARPS sSTAGES``, e.g. ``128x128x32 g8 w8 s3``."""
    try:
        return (
            f"{cfg['BLOCK_M']}x{cfg['BLOCK_N']}x{cfg['BLOCK_K']} g{cfg['GROUP_M']} "
            f"w{cfg['num_warps']} s{cfg['num_stages']}"
        )
    except (KeyError, TypeError):
        return str(cfg)


@contextmanager
def recording():
    """Yields a list that fills with ``{kernel, mnk, dtype, precision, config, source}``, one per distinct
    lookup made inside the block."""
    seen: list[dict] = []
    try:
        from glai_kernels import triton_ops
        from glai_kernels.layout import WORD_BITS
    except Exception:  # no Triton here: nothing launches, nothing to record
        yield seen
        return
    original = getattr(triton_ops, "config_for", None)
    if original is None:
        yield seen
        return
    keys = set()

    def config_for(kernel, M, N, K, dtype, precision="ieee"):
        cfg = original(kernel, M, N, K, dtype, precision)
        key = (kernel, M, N, K, str(dtype), precision)
        if key not in keys:
            keys.add(key)
            used = dict(cfg)
            if kernel == "gate" and used.get("BLOCK_N", WORD_BITS) % WORD_BITS:
                used["BLOCK_N"] = WORD_BITS
            seen.append(
                {
                    "kernel": kernel,
                    "mnk": [M, N, K],
                    "dtype": str(dtype).removeprefix("torch."),
                    "precision": precision,
                    "config": _params(used),
                    "source": source_of(kernel, M, N, K, dtype, precision, cfg),
                }
            )
        return cfg

    triton_ops.config_for = config_for
    fused = _record_fused(seen)
    try:
        yield seen
    finally:
        triton_ops.config_for = original
        fused()


_FUSED_TILES = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "CHUNK", "SPLITS")


def _record_fused(seen: list) -> callable:
    """Wrap ``fused_launch.launch`` so each distinct fused launch configuration lands in ``seen``; returns the
    function that unwraps it."""
    try:
        from glai_kernels import backend, fused_launch
    except Exception:  # no fused path in this checkout
        return lambda: None
    original = fused_launch.launch
    keys = set()

    def launch(kernel, grid, cfg, device, *args, **constexprs):
        name = getattr(getattr(kernel, "fn", kernel), "__name__", str(kernel))
        used = {k: constexprs[k] for k in _FUSED_TILES if k in constexprs}
        used.update(num_warps=cfg.get("num_warps"), num_stages=cfg.get("num_stages"))
        key = (name, tuple(sorted(used.items())))
        if key not in keys:
            keys.add(key)
            source = "interpreter" if backend.interpreting() else "fused default"
            seen.append({"kernel": name, "config": used, "source": source})
        return original(kernel, grid, cfg, device, *args, **constexprs)

    fused_launch.launch = launch

    def restore():
        fused_launch.launch = original

    return restore


def summary(seen: list[dict]) -> tuple[object, str]:
    """``(config, source)`` fields of a line: the one configuration and its source when a single kernel ran,
    else the list of them and the sources joined; ``(None, "none")`` when no kernel asked."""
    if not seen:
        return None, "none"
    if len(seen) == 1:
        return seen[0]["config"], seen[0]["source"]
    sources = sorted({s["source"] for s in seen})
    return seen, " + ".join(sources)
