"""``glai-experiment --data FILE``: the flags of a comparison on a user's data, their checks and the run.

Every flag and the data itself are checked in :func:`check`, before the output folder is created: a refusal is one
line on stderr, exit status 2, and nothing written.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..demo import int_at_least
from .compare import compare, seconds, variants_for
from .examples import KINDS, make_example
from .userdata import TASKS, DataError, load, prepare
from .variants import MLP

DATA_FLAGS = ("target", "task", "no_standardize", "hidden", "epochs", "batch_size", "test_fraction")


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(v) for v in text.split(","))
    except ValueError:
        widths = ()
    if not widths or min(widths) < 2:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated widths of at least 2, e.g. 256,256, got {text!r}"
        )
    return widths


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.05 <= value <= 0.5:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0.05, 0.5], got {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("your data (--data FILE: the study's protocol on your features)")
    g.add_argument(
        "--data", type=Path, default=None, help=".npz (X, y[, X_test, y_test]), .pt (same keys) or .csv"
    )
    g.add_argument("--target", default=None, help="target column of a .csv (default: the last)")
    g.add_argument(
        "--task", choices=TASKS, default=None, help="default auto (labels with few values: classes)"
    )
    g.add_argument("--no-standardize", action="store_true", help="keep the features as given")
    g.add_argument(
        "--hidden", type=_widths, default=None, help="head widths, e.g. 256,256 (default: the study's)"
    )
    g.add_argument(
        "--epochs", type=int_at_least(1), default=None, help="epochs per run (default: the preset's)"
    )
    g.add_argument("--batch-size", type=int_at_least(1), default=None)
    g.add_argument(
        "--test-fraction", type=_fraction, default=None, help="hold-out without a test split (0.2)"
    )
    g.add_argument(
        "--make-example",
        nargs=2,
        metavar=("KIND", "FILE"),
        default=None,
        help=f"write an example data set ({' or '.join(KINDS)}) to FILE (.csv, .npz or .pt) and exit",
    )


def check(p: argparse.ArgumentParser, args: argparse.Namespace, settings_given: bool) -> None:
    """Refuse flags that do not go together, then read and check the data (``args.prepared``)."""
    args.prepared = None
    if args.make_example is not None:
        kind, path = args.make_example
        if kind not in KINDS:
            p.error(f"argument --make-example: expected a kind in {list(KINDS)}, got {kind!r}")
        if Path(path).suffix.lower() not in (".csv", ".npz", ".pt"):
            p.error(f"argument --make-example: expected a FILE ending in .csv, .npz or .pt, got {path!r}")
        return
    if args.data is None:
        given = [f"--{f.replace('_', '-')}" for f in DATA_FLAGS if getattr(args, f) not in (None, False)]
        if given:
            p.error(f"argument {given[0]}: only applies with --data FILE")
        return
    if settings_given or args.from_json is not None:
        p.error("argument --data: runs on your data alone, not with --settings or --from-json")
    if args.preset not in ("quick", "full"):
        p.error(f"argument --data: expected the quick or full preset, got {args.preset!r}")
    if args.variants is not None:
        known = set(variants_for()) - {MLP}
        unknown = sorted(args.variants - known)
        if unknown:
            p.error(f"unknown variants {unknown} for --data; choose from {sorted(known)}")
    try:
        arrays = load(args.data, args.target)
        args.prepared = prepare(
            *(arrays.get(k) for k in ("X", "y", "X_test", "y_test")),
            task=args.task or "auto",
            standardize=not args.no_standardize,
            test_fraction=args.test_fraction or 0.2,
        )
    except DataError as exc:
        p.error(f"argument --data: {exc}")
    if args.batch_size is not None and args.batch_size > args.prepared.info["train_samples"]:
        n = args.prepared.info["train_samples"]
        p.error(f"argument --batch-size: expected at most the {n} training samples, got {args.batch_size}")


def write_example(args: argparse.Namespace) -> int:
    kind, path = args.make_example
    try:
        written = make_example(kind, path)
    except (OSError, ValueError) as exc:
        print(f"glai-experiment: error: argument --make-example: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {written}; try: glai-experiment --data {written} --quick")
    return 0


def run(args: argparse.Namespace, out: Path, command: str, device) -> int:
    """The comparison on ``args.prepared``; the table on stdout and the files in ``out``."""
    started = time.perf_counter()
    result = compare(
        None,
        None,
        quick=args.preset == "quick",
        hidden=args.hidden,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seeds=args.seeds,
        variants=args.variants,
        device=device,
        out=out,
        overwrite=True,  # checked by the command line before the folder was made
        progress=not args.no_progress,
        name=args.data.stem,
        source=str(args.data),
        command=command,
        prepared=args.prepared,
    )
    print(result.table())
    print(
        f"wall time {time.perf_counter() - started:.0f} s (estimated {seconds(result.meta['estimated_seconds'])}); files:"
    )
    for path in result.files.values():
        print(f"  {path}")
    return 0
