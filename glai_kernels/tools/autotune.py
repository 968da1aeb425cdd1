"""``glai-autotune`` (also ``python -m glai_kernels.tools.autotune``): tune the kernels for this GPU and persist the
fastest correct configuration per shape bucket in the autotuning cache that ``config_for`` reads.

    glai-autotune --list                 the search space, defaults, shape buckets, grid and cache; no GPU needed
    glai-autotune                        tune every kernel in bfloat16 and float32 over the default grid
    glai-autotune --quick                a 2 x 2 grid in bfloat16, about two minutes
    glai-autotune --kernels gate --dtypes float16 --batch 256,8192 --width 512
    glai-autotune --dtypes tf32          fp32 operands with TF32 products, tuned apart from IEEE fp32
    glai-autotune --dispatch sm_90       which path (fused, per-layer) each dtype, precision, mode and width
                                         takes on that architecture, and the lowering evidence; --json too

The command line of the tuning code's top layer (see :mod:`glai_kernels.tuning`); the tuning itself is
:mod:`glai_kernels.tools.tuner`. Every flag and ``GLAI_CACHE_DIR`` are checked before anything runs: a bad value gets
one line naming it, what was expected and what came, and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from .. import launch_configs, tuning
from .. import tuning_cache as cache
from . import dispatch_report, tuner

DEFAULT_DTYPES = ("bfloat16", "float32")
QUICK_DTYPES = ("bfloat16",)
GRID_BATCH = (64, 512, 4096, 16384)
GRID_WIDTH = (256, 1024, 4096)
QUICK_BATCH = (512, 8192)
QUICK_WIDTH = (1024, 4096)
PROG = "glai-autotune"


class UsageError(Exception):
    """A bad flag or environment value: one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, no usage block
        raise UsageError(message)


def _sizes(text: str) -> tuple[int, ...]:
    """Comma-separated positive integers."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers, got {text!r}"
        ) from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of milliseconds, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true", help="print the search space, buckets, grid and cache")
    ap.add_argument("--kernels", default=",".join(tuning.KERNELS), help="comma-separated kernels to tune")
    ap.add_argument(
        "--dtypes",
        help=f"comma-separated: {', '.join(cache.DTYPE_KEYS)} (tf32: fp32 operands, TF32 products; "
        f"default {','.join(DEFAULT_DTYPES)}; --quick: bfloat16)",
    )
    ap.add_argument(
        "--quick", action="store_true", help=f"grid batch {QUICK_BATCH} x width {QUICK_WIDTH}, bfloat16"
    )
    ap.add_argument("--batch", type=_sizes, help="comma-separated batch sizes of the grid (positive)")
    ap.add_argument("--width", type=_sizes, help="comma-separated layer widths of the grid (positive)")
    ap.add_argument(
        "--rep", type=_positive, default=40.0, help="milliseconds of timing per candidate (do_bench rep)"
    )
    ap.add_argument(
        "--cache-dir", help=f"cache root for this run (default: ${cache.ENV_DIR} or the user cache dir)"
    )
    ap.add_argument("--dry-run", action="store_true", help="time and print, but do not write the cache")
    ap.add_argument(
        "--dispatch", metavar="ARCH", help="print the fused path's dispatch table for ARCH (sm_90, 80)"
    )
    ap.add_argument("--json", action="store_true", help="with --dispatch: a JSON list of rows")
    return ap


def _names(flag: str, text: str, known: tuple[str, ...]) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UsageError(f"argument {flag}: expected one or more of {', '.join(known)}, got {text!r}")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(f"argument {flag}: unknown name {unknown[0]!r}; choose from {', '.join(known)}")
    return names


def parse(argv=None) -> argparse.Namespace:
    """The checked arguments, or :class:`UsageError` naming the first bad flag or environment value."""
    args = build_parser().parse_args(argv)
    args.kernels = _names("--kernels", args.kernels, tuning.KERNELS)
    default = ",".join(QUICK_DTYPES if args.quick else DEFAULT_DTYPES)
    args.dtypes = _names("--dtypes", default if args.dtypes is None else args.dtypes, cache.DTYPE_KEYS)
    problem = (
        cache.check_cache_dir(args.cache_dir, "--cache-dir") if args.cache_dir else cache.check_cache_dir()
    )
    if problem:
        raise UsageError(problem)
    if args.dispatch is not None:
        try:
            args.dispatch = dispatch_report.parse_arch(args.dispatch)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    elif args.json:
        raise UsageError("argument --json: only with --dispatch ARCH")
    args.batch = args.batch or (QUICK_BATCH if args.quick else GRID_BATCH)
    args.width = args.width or (QUICK_WIDTH if args.quick else GRID_WIDTH)
    return args


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
        for c in space:
            p(f"    {tuning.describe(c)}")
    p(f"  sm_90 and up, tensor-core dtypes: {len(tuning.HOPPER_SPACE)} Hopper tiles more, each also with the")
    p("  persistent TMA loop where Triton has tensor descriptors:")
    for c in tuning.HOPPER_SPACE:
        p(f"    {tuning.describe(c)}")
    p(f"  tf32, {' and '.join(tuning.K_MAJOR_KERNELS)}: every candidate also with K-major operand copies")
    p("  candidates that spill registers when compiled for the GPU are dropped before timing")
    p("defaults at 8192 x 4096 x 4096 (the tile shrinks for small outputs; N <= 32 gets a narrow tile):")
    for arch, capability in (("sm_90", (9, 0)), ("sm_80", (8, 0))):
        for key in ("bfloat16", "tf32", "float32"):
            c = tuning.default_config("masked_forward", 8192, 4096, 4096, key, capability, tma=True)
            p(f"  {arch} {key:9s} {tuning.describe(c)}")
    p(
        f"shape buckets ({len(tuning.all_buckets())} per kernel and dtype; M x N is the output, K the reduction):"
    )
    m_classes = (tuning.class_label("M", tuning.M_EDGES, i) for i in range(len(tuning.M_REPS)))
    p(f"  M classes: {', '.join(m_classes)}")
    nk_classes = (tuning.class_label("N", tuning.NK_EDGES, i) for i in range(len(tuning.NK_REPS)))
    p(f"  N, K classes: {', '.join(nk_classes)}")
    p("  an untuned bucket uses the nearest tuned one of the same kernel and dtype key, else the default")
    p(f"tuning grid: batch {list(batches)} x width {list(widths)} (square layers) per kernel:")
    for kernel in tuning.KERNELS:
        shapes = ", ".join(f"{M}x{N}x{K}" for M, N, K in tuner.grid_shapes(kernel, batches, widths))
        p(f"  {kernel}: {shapes}")
    folder = cache.cache_root() / "autotune"
    p(f"cache folder: {folder} (set {cache.ENV_DIR} to move it)")
    for f in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        table, problem, raw = cache.read(f, None)
        if problem:
            p(f"  {f.name}: unusable ({problem})")
        else:
            p(
                f"  {f.name}: {len(table)} entries for {raw['gpu']}, Triton {raw['triton']}, updated {raw.get('updated')}"
            )


def main(argv=None) -> int:
    try:
        args = parse(argv)
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    if args.cache_dir:
        os.environ[cache.ENV_DIR] = args.cache_dir
        launch_configs.reload()
    if args.list:
        print_space(args.batch, args.width)
        return 0
    if args.dispatch is not None:
        print(dispatch_report.report(args.dispatch, as_json=args.json))
        return 0
    if not torch.cuda.is_available():
        print(
            f"{PROG}: no CUDA GPU is visible (torch.cuda.is_available() is False). Autotuning times the kernels "
            f"on the GPU they will run on; run it there. `{PROG} --list` shows the search space here.",
            file=sys.stderr,
        )
        return 2
    ident = cache.identity(torch.cuda.current_device())
    if ident is None:
        print(f"{PROG}: Triton is not installed; there is nothing to tune.", file=sys.stderr)
        return 2
    try:
        ops = tuner.kernel_ops()
    except RuntimeError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    print(f"tuning on {ident.gpu}, Triton {ident.triton}, kernel source {ident.kernel_source[:12]}")
    setting = tuner.gpu_setting()
    saved = 0
    for d in args.dtypes:
        dtype = tuner.operand_dtype(d)
        for k in args.kernels:
            shapes = tuner.grid_shapes(k, args.batch, args.width)
            entries = tuner.tune(k, shapes, dtype, ops=ops, rep_ms=args.rep, **setting)
            if entries and not args.dry_run:
                try:
                    path = cache.save(ident, entries)
                except OSError as exc:
                    print(f"{PROG}: cannot write the cache ({exc}); set {cache.ENV_DIR}", file=sys.stderr)
                    return 1
                saved += len(entries)
            torch.cuda.empty_cache()
    launch_configs.reload()
    if args.dry_run:
        print("dry run: nothing written")
    elif saved:
        print(f"wrote {saved} entries to {path}")
    else:
        print(f"{PROG}: no candidate ran correctly; the cache is unchanged", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
