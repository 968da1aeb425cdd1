"""The tuner: time every candidate launch configuration of a kernel at a grid of shapes on this GPU, keep the
fastest correct one per shape bucket, and persist it in the autotuning cache.

The third layer of the tuning code (see :mod:`glai_kernels.tuning`): it reads the space and defaults, the cache
and the kernels' host functions, and registers itself as the tuner that ``GLAI_AUTOTUNE=1`` calls on a miss
(:func:`launch_configs.set_miss_tuner`). The command line is :mod:`glai_kernels.tools.autotune`.

Before any GPU time is spent, each candidate is compiled for this GPU's architecture and dropped when
``lowering.refusal`` refuses it (a spill, or more shared memory than the GPU has: the same criterion as the
lowering tests; ``ptxas -v``, :mod:`glai_kernels.tools.lowering`): a spilling tile is never the fastest, and timing it is
waste. Each remaining candidate is then checked against the PyTorch reference on the same inputs; one that fails
to compile (e.g. more shared memory than the GPU has) or gives a wrong result is skipped, so the cache only ever
holds configurations that ran correctly here. The default configuration is always among the candidates, so a
tuned choice is never slower than the default at the measured shape.
"""

from __future__ import annotations

import itertools
import math

import torch

from .. import costs, launch_configs, reference, tuning
from .. import tuning_cache as cache
from ..layout import pack_patterns

DEVICE = "cuda"  # the current CUDA device
# Relative Frobenius error a candidate may have against the fp32 reference (run at the same fp32 precision), per
# dtype key: rounding of 16-bit outputs, of TF32's 10-bit mantissas, or only of fp32 accumulation order.
TOLERANCE = {"float16": 2e-2, "bfloat16": 2e-2, "tf32": 1e-2, "float32": 1e-4}
# Input sets rotated while timing, so small problems are not timed from a cache warmed by the previous call.
_ROTATION_BYTES = 256 << 20
describe = tuning.describe


def grid_shapes(kernel: str, batches, widths) -> list[tuple[int, int, int]]:
    """GEMM shapes ``(M, N, K)`` of ``kernel`` on square layers ``width -> width`` with ``batch`` rows."""
    return [costs.gemm_dims(kernel, b, w, w) for b in batches for w in widths]


def make_inputs(kernel: str, M: int, N: int, K: int, dtype, device) -> tuple:
    """Random arguments of ``kernel`` (``reduction=1``) whose GEMM is ``M x N x K`` (see ``costs``)."""

    def randn(*shape):
        return torch.randn(*shape, device=device, dtype=dtype)

    if kernel == "gate":
        return randn(M, K), randn(N, K) / K**0.5, randn(N)
    if kernel == "masked_forward":
        return (
            randn(M, K),
            randn(N, K) / K**0.5,
            randn(N),
            pack_patterns(torch.rand(M, N, device=device) < 0.5),
            1,
        )
    if kernel == "backward_data":
        return randn(M, K), randn(K, N) / K**0.5, pack_patterns(torch.rand(M, N, device=device) < 0.5), 1
    if kernel == "backward_weights":
        return randn(K, M) / K**0.5, randn(K, N), True
    raise ValueError(f"unknown kernel {kernel!r}")


def rel_error(out, ref) -> float:
    """Largest relative error over the float outputs; a packed-pattern output counts its fraction of flipped
    bits (units whose pre-activation rounds across 0 may flip, so a small fraction is tolerated)."""
    worst = 0.0
    outs = out if isinstance(out, (tuple, list)) else (out,)
    refs = ref if isinstance(ref, (tuple, list)) else (ref,)
    for o, r in zip(outs, refs):
        if r is None:
            continue
        if r.dtype == torch.int32:
            shifts = torch.arange(32, device=r.device, dtype=torch.int32)
            flipped = (((o ^ r).unsqueeze(-1) >> shifts) & 1).float().mean().item()
            worst = max(worst, flipped)
            continue
        r64, o64 = r.double(), o.double()
        err = ((o64 - r64).norm() / r64.norm().clamp_min(1e-30)).item()
        worst = max(worst, err if err == err else float("inf"))
    return worst


def _reference(kernel: str, args: tuple):
    up = tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)
    return getattr(reference, kernel)(*up)


def _do_bench(fn, rep_ms: float) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=max(5, int(rep_ms // 4)), rep=rep_ms, quantiles=[0.5])[0])


def _refusal(args) -> str | None:
    kernel, key, c, arch = args
    from . import lowering

    try:
        return lowering.refused(kernel, key, c, arch)
    except Exception:  # does not compile here: left to the timing loop, which reports why
        return None


def spill_check(capability: tuple[int, int], jobs: int | None = None):
    """A pruning rule for a GPU of compute ``capability``: ``rule(kernel, key, configs)`` maps the description
    of each configuration that ``lowering.refusal`` refuses when compiled for this architecture (a spill, more
    registers or shared memory than it has: the lowering tests' criterion) to why it is dropped. The
    compiles run in ``jobs`` fresh processes (they need no GPU; the parent's CUDA context is not forked), or in
    this one for ``jobs=1``."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    arch = capability[0] * 10 + capability[1]

    def rule(kernel: str, key: str, configs: list[dict]) -> dict[str, str]:
        workers = max(1, min(jobs or os.cpu_count() or 1, len(configs), 16))
        todo = [(kernel, key, c, arch) for c in configs]
        if workers == 1:
            refused = [_refusal(t) for t in todo]
        else:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                refused = list(pool.map(_refusal, todo))
        return {describe(c): why for c, why in zip(configs, refused) if why}

    return rule


def tune(
    kernel, shapes, dtype, *, ops, timer=None, rep_ms: float = 40.0, quiet: bool = False, device=None,
    capability=None, tma: bool = False, prune=None,
):  # fmt: skip
    """Tune ``kernel`` at each GEMM shape; returns one cache entry per shape bucket (of two shapes in one bucket,
    the one nearer the bucket's representative). ``timer(fn) -> ms`` defaults to ``do_bench``'s median.
    ``capability`` and ``tma``: the GPU's compute capability and whether it runs tensor descriptors (they pick
    the defaults and the candidates); ``prune(kernel, key, configs)``: ``{description: why}`` of the candidates
    to drop untimed (:func:`spill_check`). The default of a shape is never dropped.

    The entries' dtype key is the one the ops run now: fp32 is keyed ``"tf32"`` when ``ops.dot_precision`` says
    its products run as TF32 (PyTorch's matmul precision setting), as ``config_for`` keys its lookups."""
    timer = timer or (lambda fn: _do_bench(fn, rep_ms))
    device = device or DEVICE
    fn = getattr(ops, kernel)
    key = cache.dtype_key(dtype, ops.dot_precision(dtype))
    tol = TOLERANCE[key]
    say = (lambda *a: None) if quiet else print
    entries, distance = {}, {}
    # Tiles are compile-time constants: a candidate that does not compile (too much shared memory for this GPU)
    # or spills fails at every shape, so it is tried once per kernel and dtype.
    broken: set[str] = set()
    space = tuning.candidates(kernel, key, capability, tma)
    pruned = prune(kernel, key, space) if prune is not None else {}
    for name, why in pruned.items():
        say(f"  {kernel} {key} {name}: pruned, {why}")
    space = [c for c in space if describe(c) not in pruned]
    for M, N, K in shapes:
        bucket = tuning.bucket_of(M, N, K)
        default = tuning.default_config(kernel, M, N, K, key, capability, tma)
        candidates = [default] + [c for c in space if c != default]
        try:
            first = make_inputs(kernel, M, N, K, dtype, device)
            set_bytes = sum(a.numel() * a.element_size() for a in first if torch.is_tensor(a))
            extra = min(3, _ROTATION_BYTES // max(set_bytes, 1))
            sets = [first] + [make_inputs(kernel, M, N, K, dtype, device) for _ in range(extra)]
            ref = _reference(kernel, first)
        except torch.cuda.OutOfMemoryError:
            say(f"  {kernel} {M}x{N}x{K}: skipped, its inputs do not fit in device memory")
            continue
        results = []
        for c in candidates:
            if describe(c) in broken:
                continue
            try:
                err = rel_error(fn(*first, config=dict(c)), ref)
                if not err <= tol:
                    raise ValueError(f"relative error {err:.2e} above {tol:.0e}: a wrong result")
                rotation = itertools.cycle(sets)
                ms = timer(lambda c=c: fn(*next(rotation), config=dict(c)))
            except Exception as exc:  # out of resources, a compile error, a wrong result: not a candidate
                if type(exc).__name__ in ("OutOfResources", "CompilationError"):
                    broken.add(describe(c))
                say(f"  {kernel} {M}x{N}x{K} {describe(c)}: skipped ({type(exc).__name__}: {exc})"[:240])
                continue
            results.append((ms, c))
        del sets, first, ref
        if not results:
            continue
        ms, best = min(results, key=lambda t: t[0])
        default_ms = next((t for t, c in results if c == default), float("nan"))
        tflops = costs.gemm_flops(M, N, K) / (ms * 1e-3) / 1e12
        vs = f"({default_ms / ms:.2f}x the default)" if default_ms == default_ms else "(the default failed)"
        say(
            f"{kernel:17s} {key:9s} {tuning.bucket_label(bucket):34s} {M}x{N}x{K}: "
            f"{describe(best)}  {ms:.4f} ms  {tflops:.1f} TFLOP/s  {vs}"
        )
        rep = tuning.representative(bucket)
        d = sum(abs(math.log2(x / y)) for x, y in zip((M, N, K), rep))
        if bucket not in entries or d < distance[bucket]:
            distance[bucket] = d
            entries[bucket] = {
                "kernel": kernel,
                "dtype": key,
                "bucket": list(bucket),
                "shape": [M, N, K],
                "config": dict(best),
                "ms": round(ms, 6),
                "default_ms": round(default_ms, 6) if default_ms == default_ms else None,  # NaN: it failed
            }
    return list(entries.values())


def operand_dtype(key: str) -> torch.dtype:
    """The operand dtype of a cache dtype key (``tuning_cache.DTYPE_KEYS``). For the fp32 keys it also sets
    PyTorch's fp32 matmul precision, which the kernels follow (``per_layer_ops.dot_precision``), to IEEE or TF32 in
    this process, so the timed products are those the key names."""
    if key not in ("float32", "tf32"):
        return getattr(torch, key)
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9; its legacy flag is not to be mixed with it
        matmul.fp32_precision = "tf32" if key == "tf32" else "ieee"
    else:
        matmul.allow_tf32 = key == "tf32"
    return torch.float32


def kernel_ops():
    """The Triton ops module, or a RuntimeError saying why it cannot be imported."""
    try:
        from .. import per_layer_ops
    except Exception as exc:  # no Triton, a Triton without a driver
        raise RuntimeError(f"the Triton kernels cannot be imported ({type(exc).__name__}: {exc})") from exc
    return per_layer_ops


def gpu_setting() -> dict:
    """The keywords of :func:`tune` for the current CUDA device: its capability, whether it runs tensor
    descriptors, and the spill check of its architecture."""
    capability = launch_configs.device_info(torch.cuda.current_device())[0]
    tma = launch_configs.descriptors_available() and capability[0] >= 9
    return {"capability": capability, "tma": tma, "prune": spill_check(capability)}


def tune_and_save(kernel, shapes, dtype, *, quiet=False, rep_ms: float = 40.0):
    """Tune and merge the result into this GPU's cache file; returns the entries."""
    ident = cache.identity(torch.cuda.current_device())
    if ident is None:
        raise RuntimeError("autotuning needs Triton")
    entries = tune(kernel, shapes, dtype, ops=kernel_ops(), rep_ms=rep_ms, quiet=quiet, **gpu_setting())
    if entries:
        cache.save(ident, entries)
        launch_configs.reload()
    return entries


def _tune_missing(kernel, shapes, dtype, quiet=True):
    return tune_and_save(kernel, shapes, dtype, quiet=quiet)


launch_configs.set_miss_tuner(_tune_missing)
