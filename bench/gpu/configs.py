"""Which launch configuration each kernel ran with, and where it came from.

Every launch of a per-layer kernel goes through ``per_layer_launch.launch_plan(kernel, plan, tma, device, args)``, whose
plan holds the configuration and its source, as ``launch_configs.launch_config`` answered it once for the call's
signature: ``interpreter`` (Triton's interpreter runs one fixed configuration), ``tuned`` (an entry of this
GPU's tuning cache for the shape's bucket), ``tuned-nearest`` (the nearest tuned bucket's entry),
``tuned-now`` (tuned at first use under ``GLAI_AUTOTUNE=1``), ``default`` (the defaults of the GPU's
architecture) or ``config=`` (a caller's own; the plan never passes one). ``recording()`` wraps that function
for the length of a call and keeps each distinct launch: the kernel, its GEMM sizes, the configuration, whether
the tensor-descriptor (TMA) main loop ran, the weight gradient's batch splits, and the source.

The fused head path has no tuning: each launch of ``fused_launch.launch_fused`` is recorded with its warps, stages
and tile sizes, from ``fused default`` (the table of the device's capability) or the ``interpreter``.
"""

from __future__ import annotations

from contextlib import contextmanager

PARAM_ORDER = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "num_warps", "num_stages")
FLAGS = ("TMA", "K_MAJOR")  # main-loop switches of a per-layer configuration (glai_kernels.tuning.FLAGS)


def short(cfg: dict) -> str:
    """``BLOCK_M x BLOCK_N x BLOCK_K gGROUP_M wWARPS sSTAGES`` and the flags that are on, e.g.
    ``128x256x64 g8 w8 s3 TMA``."""
    try:
        flags = "".join(f" {k}" for k in FLAGS if cfg.get(k))
        return (
            f"{cfg['BLOCK_M']}x{cfg['BLOCK_N']}x{cfg['BLOCK_K']} g{cfg['GROUP_M']} "
            f"w{cfg['num_warps']} s{cfg['num_stages']}{flags}"
        )
    except (KeyError, TypeError):
        return str(cfg)


@contextmanager
def recording():
    """Yields a list that fills with one record per distinct launch configuration made inside the block."""
    seen: list[dict] = []
    restore = [_record_layers(seen), _record_fused(seen)]
    try:
        yield seen
    finally:
        for undo in restore:
            undo()


def _name(kernel) -> str:
    return getattr(getattr(kernel, "fn", kernel), "__name__", str(kernel))


def _record_layers(seen: list) -> callable:
    """Wrap ``per_layer_launch.launch_plan`` (the per-layer kernels); returns the function that unwraps it."""
    try:
        from glai_kernels import per_layer_launch
    except Exception:  # no Triton here: nothing launches, nothing to record
        return lambda: None
    original = per_layer_launch.launch_plan
    keys = set()

    def launch(kernel, plan, tma, device, args, *extra):
        key = (_name(kernel), plan.M, plan.N, plan.K, id(plan), tma)
        if key not in keys:
            keys.add(key)
            seen.append({"kernel": _name(kernel), "mnk": [plan.M, plan.N, plan.K], "precision": plan.precision,
                         "config": dict(plan.config), "tma": bool(tma), "splits": plan.splits,
                         "source": plan.source})  # fmt: skip
        return original(kernel, plan, tma, device, args, *extra)

    per_layer_launch.launch_plan = launch

    def restore():
        per_layer_launch.launch_plan = original

    return restore


_FUSED_TILES = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "CHUNK", "SPLITS")


def _record_fused(seen: list) -> callable:
    """Wrap ``fused_launch.launch_fused`` so each distinct fused launch configuration lands in ``seen``; returns the
    function that unwraps it."""
    try:
        from glai_kernels import fused_launch, runtime
    except Exception:  # no fused path in this checkout
        return lambda: None
    original = fused_launch.launch_fused
    keys = set()

    def launch(kernel, grid, cfg, device, *args, **constexprs):
        name = _name(kernel)
        used = {k: constexprs[k] for k in _FUSED_TILES if k in constexprs}
        used.update(num_warps=cfg.get("num_warps"), num_stages=cfg.get("num_stages"))
        key = (name, tuple(sorted(used.items())))
        if key not in keys:
            keys.add(key)
            source = "interpreter" if runtime.interpreting() else "fused default"
            seen.append({"kernel": name, "config": used, "source": source})
        return original(kernel, grid, cfg, device, *args, **constexprs)

    fused_launch.launch_fused = launch

    def restore():
        fused_launch.launch_fused = original

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
