"""``glai-autotune`` (also ``python -m glai_kernels.autotune``): time every candidate launch configuration of
each kernel over a grid of shapes on this GPU, keep the fastest correct one per shape bucket, and persist it in
the autotuning cache that ``config_for`` reads.

    glai-autotune --list                 the search space, shape buckets, grid and cache file; no GPU needed
    glai-autotune                        tune every kernel in bfloat16 and float32 over the default grid
    glai-autotune --quick                a 2 x 2 grid in bfloat16, about two minutes
    glai-autotune --kernels gate --dtypes float16 --batch 256,8192 --width 512
    glai-autotune --dtypes tf32          fp32 operands with TF32 products, tuned apart from IEEE fp32

Each candidate is first checked against the PyTorch reference on the same inputs; one that fails to compile
(e.g. more shared memory than the GPU has) or gives a wrong result is skipped, so the cache only ever holds
configurations that ran correctly here. The default configuration is always among the candidates, so a tuned
choice is never slower than the default at the measured shape.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys

import torch

from . import costs, reference, tuning
from . import tuning_cache as cache
from .layout import pack_patterns

DEFAULT_DTYPES = ("bfloat16", "float32")
QUICK_DTYPES = ("bfloat16",)
DEVICE = "cuda"  # the current CUDA device
GRID_BATCH = (64, 512, 4096, 16384)
GRID_WIDTH = (256, 1024, 4096)
QUICK_BATCH = (512, 8192)
QUICK_WIDTH = (1024, 4096)
# Relative Frobenius error a candidate may have against the fp32 reference (run at the same fp32 precision), per
# dtype key: rounding of 16-bit outputs, of TF32's 10-bit mantissas, or only of fp32 accumulation order.
TOLERANCE = {"float16": 2e-2, "bfloat16": 2e-2, "tf32": 1e-2, "float32": 1e-4}
# Input sets rotated while timing, so small problems are not timed from a cache warmed by the previous call.
_ROTATION_BYTES = 256 << 20


def describe(cfg: dict) -> str:
    return (
        f"{cfg['BLOCK_M']}x{cfg['BLOCK_N']}x{cfg['BLOCK_K']} group {cfg['GROUP_M']} "
        f"warps {cfg['num_warps']} stages {cfg['num_stages']}"
    )


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


def tune(kernel, shapes, dtype, *, ops, timer=None, rep_ms: float = 40.0, quiet: bool = False, device=None):
    """Tune ``kernel`` at each GEMM shape; returns one cache entry per shape bucket (of two shapes in one bucket,
    the one nearer the bucket's representative). ``timer(fn) -> ms`` defaults to ``do_bench``'s median.

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
    # fails at every shape, so it is tried once per kernel and dtype.
    broken: set[str] = set()
    for M, N, K in shapes:
        bucket = tuning.bucket_of(M, N, K)
        default = tuning.default_config(kernel, M, N, K, dtype)
        candidates = [default] + [c for c in tuning.SEARCH_SPACE[kernel] if c != default]
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
        for cfg in candidates:
            if describe(cfg) in broken:
                continue
            try:
                err = rel_error(fn(*first, config=dict(cfg)), ref)
                if not err <= tol:
                    raise ValueError(f"relative error {err:.2e} above {tol:.0e}: a wrong result")
                rotation = itertools.cycle(sets)
                ms = timer(lambda cfg=cfg: fn(*next(rotation), config=dict(cfg)))
            except Exception as exc:  # out of resources, a compile error, a wrong result: not a candidate
                if type(exc).__name__ in ("OutOfResources", "CompilationError"):
                    broken.add(describe(cfg))
                say(f"  {kernel} {M}x{N}x{K} {describe(cfg)}: skipped ({type(exc).__name__}: {exc})"[:240])
                continue
            results.append((ms, cfg))
        del sets, first, ref
        if not results:
            continue
        ms, best = min(results, key=lambda t: t[0])
        default_ms = next((t for t, c in results if c == default), float("nan"))
        tflops = costs.gemm_flops(M, N, K) / (ms * 1e-3) / 1e12
        say(
            f"{kernel:17s} {key:9s} {tuning.bucket_label(bucket):34s} {M}x{N}x{K}: "
            f"{describe(best)}  {ms:.4f} ms  {tflops:.1f} TFLOP/s  "
            + (
                f"({default_ms / ms:.2f}x the default)"
                if default_ms == default_ms
                else "(the default failed)"
            )
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
                "default_ms": round(default_ms, 6)
                if default_ms == default_ms
                else None,  # NaN: default failed
            }
    return list(entries.values())


def operand_dtype(key: str) -> torch.dtype:
    """The operand dtype of a cache dtype key (``tuning_cache.DTYPE_KEYS``). For the fp32 keys it also sets
    PyTorch's fp32 matmul precision, which the kernels follow (``triton_ops.dot_precision``), to IEEE or TF32 in
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
    from . import backend

    ops = backend.triton_ops()
    if ops is None:
        raise RuntimeError(f"the Triton kernels cannot be imported ({backend._triton_error})")
    return ops


def tune_and_save(kernel, shapes, dtype, *, quiet=False, rep_ms: float = 40.0):
    """Tune and merge the result into this GPU's cache file; returns the entries."""
    ident = cache.identity(torch.cuda.current_device())
    if ident is None:
        raise RuntimeError("autotuning needs Triton")
    entries = tune(kernel, shapes, dtype, ops=kernel_ops(), rep_ms=rep_ms, quiet=quiet)
    if entries:
        cache.save(ident, entries)
        tuning.reload()
    return entries


def print_space(batches, widths) -> None:
    p = print
    p("search space (BLOCK_M x BLOCK_N x BLOCK_K, GROUP_M, num_warps, num_stages), the default always added:")
    shown: list[tuple] = []
    for kernel in tuning.KERNELS:
        space = tuning.SEARCH_SPACE[kernel]
        same = [k for k, s in shown if s == space]
        if same:
            p(f"  {kernel}: the same {len(space)} candidates as {same[0]}")
            continue
        shown.append((kernel, space))
        p(f"  {kernel}: {len(space)} candidates")
        for cfg in space:
            p(f"    {describe(cfg)}")
    p(f"default configuration: {describe(tuning._DEFAULT)} (BLOCK_M 64, 4 warps when M <= 64)")
    p(
        f"shape buckets ({len(tuning.all_buckets())} per kernel and dtype; M x N is the output, K the reduction):"
    )
    p(
        f"  M classes: {', '.join(tuning._class_label('M', tuning.M_EDGES, i) for i in range(len(tuning.M_REPS)))}"
    )
    p(
        f"  N, K classes: {', '.join(tuning._class_label('N', tuning.NK_EDGES, i) for i in range(len(tuning.NK_REPS)))}"
    )
    p("  an untuned bucket uses the nearest tuned one of the same kernel and dtype key, else the default")
    p(f"tuning grid: batch {list(batches)} x width {list(widths)} (square layers) per kernel:")
    for kernel in tuning.KERNELS:
        shapes = ", ".join(f"{M}x{N}x{K}" for M, N, K in grid_shapes(kernel, batches, widths))
        p(f"  {kernel}: {shapes}")
    p(f"cache folder: {cache.cache_root() / 'autotune'} (set {cache.ENV_DIR} to move it)")
    folder = cache.cache_root() / "autotune"
    for f in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        table, problem, raw = cache.read(f, None)
        if problem:
            p(f"  {f.name}: unusable ({problem})")
        else:
            p(
                f"  {f.name}: {len(table)} entries for {raw['gpu']}, Triton {raw['triton']}, updated {raw.get('updated')}"
            )


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="glai-autotune", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--list", action="store_true", help="print the search space, buckets, grid and cache; no GPU needed"
    )
    ap.add_argument("--kernels", default=",".join(tuning.KERNELS), help="comma-separated kernels to tune")
    ap.add_argument(
        "--dtypes",
        help=f"comma-separated: {', '.join(cache.DTYPE_KEYS)} (tf32: fp32 operands, TF32 products; "
        f"default {','.join(DEFAULT_DTYPES)}; --quick: bfloat16)",
    )
    ap.add_argument(
        "--quick", action="store_true", help=f"grid batch {QUICK_BATCH} x width {QUICK_WIDTH}, bfloat16 only"
    )
    ap.add_argument("--batch", type=_ints, help="comma-separated batch sizes of the grid")
    ap.add_argument("--width", type=_ints, help="comma-separated layer widths of the grid")
    ap.add_argument(
        "--rep", type=float, default=40.0, help="milliseconds of timing per candidate (do_bench rep)"
    )
    ap.add_argument(
        "--cache-dir", help=f"cache root for this run (default: ${cache.ENV_DIR} or the user cache dir)"
    )
    ap.add_argument("--dry-run", action="store_true", help="time and print, but do not write the cache")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.cache_dir:
        import os

        os.environ[cache.ENV_DIR] = args.cache_dir
        tuning.reload()
    batches = args.batch or (QUICK_BATCH if args.quick else GRID_BATCH)
    widths = args.width or (QUICK_WIDTH if args.quick else GRID_WIDTH)
    kernels = [k.strip() for k in args.kernels.split(",") if k.strip()]
    dtypes = [
        d.strip()
        for d in (args.dtypes or ",".join(QUICK_DTYPES if args.quick else DEFAULT_DTYPES)).split(",")
    ]
    dtypes = [d for d in dtypes if d]
    for what, names, known in (("kernel", kernels, tuning.KERNELS), ("dtype", dtypes, cache.DTYPE_KEYS)):
        unknown = [n for n in names if n not in known]
        if unknown:
            print(
                f"glai-autotune: unknown {what} {unknown[0]!r}; choose from {', '.join(known)}",
                file=sys.stderr,
            )
            return 2
    if args.list:
        print_space(batches, widths)
        return 0
    if not torch.cuda.is_available():
        print(
            "glai-autotune: no CUDA GPU is visible (torch.cuda.is_available() is False). Autotuning times the kernels "
            "on the GPU they will run on; run it there. `glai-autotune --list` shows the search space here.",
            file=sys.stderr,
        )
        return 2
    ident = cache.identity(torch.cuda.current_device())
    if ident is None:
        print("glai-autotune: Triton is not installed; there is nothing to tune.", file=sys.stderr)
        return 2
    try:
        ops = kernel_ops()
    except RuntimeError as exc:
        print(f"glai-autotune: {exc}", file=sys.stderr)
        return 2
    print(f"tuning on {ident.gpu}, Triton {ident.triton}, kernel source {ident.kernel_source[:12]}")
    saved = 0
    for d in dtypes:
        dtype = operand_dtype(d)
        for k in kernels:
            entries = tune(k, grid_shapes(k, batches, widths), dtype, ops=ops, rep_ms=args.rep)
            if entries and not args.dry_run:
                try:
                    path = cache.save(ident, entries)
                except OSError as exc:
                    print(
                        f"glai-autotune: cannot write the cache ({exc}); set {cache.ENV_DIR}", file=sys.stderr
                    )
                    return 1
                saved += len(entries)
            torch.cuda.empty_cache()
    tuning.reload()
    if args.dry_run:
        print("dry run: nothing written")
    elif saved:
        print(f"wrote {saved} entries to {path}")
    else:
        print("glai-autotune: no candidate ran correctly; the cache is unchanged", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
