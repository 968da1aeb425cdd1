"""``glai-experiment``: the time-to-accuracy study of MLP vs GLAI heads over four offline settings."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from ..cli_checks import ArgumentParser, check_environment, check_output_folder, device_name
from ..demo import int_at_least, pick_device, set_threads
from ..monitor import NonFiniteError
from . import backbone, cli_data, fewshot, scratch, simclr
from .common import PRESETS, environment
from .report import load_records, merge_results, write_all
from .stats import summarize
from .variants import MLP

MODULES = {"scratch": scratch, "backbone": backbone, "simclr": simclr, "few-shot": fewshot}
SETTINGS = tuple(MODULES)
# Fresh, git-ignored folders by default: the committed results under bench/results/experiments are written
# only when asked for by name, with --overwrite.
DEFAULT_ROOT = Path("glai-experiment-out")


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(prog="glai-experiment", description=__doc__.splitlines()[0].replace("``", ""))
    p.add_argument("--quick", action="store_true", help="the quick preset (a few minutes on 2 CPU cores)")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None, help="sizes (default: full, or quick)")
    p.add_argument(
        "--settings", default=None, help=f"comma-separated subset of {','.join(SETTINGS)} (default: all)"
    )
    p.add_argument(
        "--variants", default=None, help="comma-separated variant names to run (with the MLP); default: all"
    )
    p.add_argument(
        "--seeds", type=int_at_least(1), default=None, help="number of seeds (0..N-1) instead of the preset's"
    )
    p.add_argument("--device", type=device_name, default="cpu", help="cpu, cuda, ... or auto")
    p.add_argument(
        "--threads",
        type=int_at_least(1),
        default=1,
        help="torch CPU threads (small heads gain little from more)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"output folder, new or empty unless --overwrite (default: a new {DEFAULT_ROOT}/<preset>-<time>)",
    )
    p.add_argument("--overwrite", action="store_true", help="write into a --out folder that holds files")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--from-json",
        type=Path,
        nargs="+",
        default=None,
        help="summarise and plot saved results.json files again, no training (several: one study whose "
        "settings ran as separate processes; default --out: the first file's folder)",
    )
    cli_data.add_arguments(p)
    args = p.parse_args(argv)
    settings_given = args.settings is not None
    args.settings = args.settings if settings_given else ",".join(SETTINGS)
    if args.quick and args.preset not in (None, "quick"):
        p.error(f"argument --quick: conflicts with --preset {args.preset} (--quick means --preset quick)")
    args.preset = args.preset or ("quick" if args.quick else "full")
    args.variants = (
        None if args.variants is None else {v.strip() for v in args.variants.split(",") if v.strip()}
    )
    args.settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    if not args.settings or args.variants == set():
        p.error("--settings and --variants need at least one name each when given")
    unknown = sorted(set(args.settings) - set(SETTINGS))
    if unknown:
        p.error(f"unknown settings {unknown}; choose from {list(SETTINGS)}")
    cli_data.check(p, args, settings_given)
    if args.variants is not None and args.data is None:
        # A misspelt name would otherwise select nothing and leave a study of the MLP alone.
        preset = PRESETS[args.preset]
        known = {v for s in args.settings for v in MODULES[s].variants_for(preset)} - {MLP}
        unknown = sorted(args.variants - known)
        if unknown:
            p.error(
                f"unknown variants {unknown} for the {preset.name} preset and settings {args.settings}; "
                f"choose from {sorted(known)}"
            )
    args.loaded = None if args.from_json is None else _load_all(p, args.from_json)
    if args.out is not None:
        check_output_folder(p, "--out", args.out, overwrite=args.overwrite)
    check_environment(p)
    return args


def _load_results(p: argparse.ArgumentParser, path: Path):
    """``(meta, records)`` of a results.json that this command wrote; one error line otherwise."""
    where = f"argument --from-json: expected a results.json written by glai-experiment, got {str(path)!r}"
    try:
        payload = json.loads(path.read_bytes())
    except IsADirectoryError:
        p.error(f"{where}, which is a folder")
    except OSError as exc:
        p.error(f"{where}, which cannot be read ({exc.strerror})")
    except ValueError as exc:
        p.error(f"{where}, which is not JSON ({exc})")
    try:
        meta = payload["meta"]
        env = meta["environment"]
        meta["preset"]["name"], meta["preset"]["seeds"], meta["study_seconds"]
        env["device"], env["device_name"], env["torch_threads"], env["versions"]["torch"], env["date"]
        if not isinstance(payload["runs"], list):
            raise TypeError("runs is not a list")
        meta, records = load_records(path)
        summarize(records)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        what = f"no {exc.args[0]!r} field" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
        p.error(f"{where}, which is not one ({what})")
    return meta, records


def _load_all(p: argparse.ArgumentParser, paths: list[Path]):
    """``(meta, records)`` of one or more results.json merged into one study (settings run as separate
    processes); one error line naming the file or the clash otherwise."""
    for path in paths:
        _load_results(p, path)
    try:
        return merge_results(paths)
    except ValueError as exc:
        p.error(f"argument --from-json: {exc}")


def _fresh_folder(preset: str) -> Path:
    """A new folder under the git-ignored default root, named by preset and time."""
    stem = DEFAULT_ROOT / f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    for n in range(1, 1000):
        folder = stem if n == 1 else stem.with_name(f"{stem.name}-{n}")
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
    raise FileExistsError(f"no free folder name under {DEFAULT_ROOT} for {stem.name}")


def _finish(out: Path, meta: dict, records: list) -> None:
    if "task" in meta:  # a comparison on a user's data (--data): its own table, the same statistics
        from .compare import add_rmse
        from .compare_report import write_comparison

        summary = summarize(records, tolerance=meta["task"]["tolerance"])
        if meta["task"]["kind"] == "regression":
            add_rmse(summary, records, meta["data"]["test_target_std"])
        files = write_comparison(out, meta, records, summary)
        print((out / "RESULTS.md").read_text())
        print(f"wall time {meta['study_seconds']:.0f}s; files:")
        for path in files.values():
            print(f"  {path}")
        return
    files = write_all(out, meta, records, summarize(records))
    print((out / "RESULTS.md").read_text())
    print(f"study wall time {meta['study_seconds']:.0f}s; files:")
    for path in files.values():
        print(f"  {path}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.make_example is not None:
        return cli_data.write_example(args)
    if args.loaded is not None:
        meta, records = args.loaded
        _finish(args.out or args.from_json[0].parent, meta, records)
        return 0
    try:
        if args.data is not None:
            set_threads(args.threads)
            command = "glai-experiment " + " ".join(sys.argv[1:] if argv is None else argv)
            out = args.out or _fresh_folder(args.data.stem)
            return cli_data.run(args, out, command, pick_device(args.device))
        return _study(args, argv)
    except NonFiniteError as exc:
        print(f"glai-experiment: error: {exc}", file=sys.stderr)
        return 1


def _study(args: argparse.Namespace, argv) -> int:
    set_threads(args.threads)
    device = pick_device(args.device)
    preset = PRESETS[args.preset]
    if args.seeds is not None:
        preset = replace(preset, seeds=tuple(range(args.seeds)))
    out = args.out or _fresh_folder(preset.name)
    started = time.perf_counter()

    total = sum(MODULES[name].count(preset, args.variants) for name in args.settings)
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="runs", disable=args.no_progress, file=sys.stderr)
    records, info, phase_seconds = [], {}, {}
    encoder = None
    for name in args.settings:
        bar.set_postfix(setting=name)
        t0 = time.perf_counter()
        if name in ("backbone", "few-shot") and encoder is None:
            encoder, info = backbone.train_backbone(preset, device)
        if name == "scratch":
            records += scratch.run(preset, device, tick=bar.update, only=args.variants)
        elif name == "backbone":
            records += backbone.run(preset, device, encoder, info, tick=bar.update, only=args.variants)
        elif name == "few-shot":
            records += fewshot.run(preset, device, encoder, info, tick=bar.update, only=args.variants)
        else:
            records += simclr.run(preset, device, tick=bar.update, only=args.variants)
        phase_seconds[name] = time.perf_counter() - t0
    bar.close()

    meta = {
        "command": "glai-experiment " + " ".join(sys.argv[1:] if argv is None else argv),
        "preset": preset.to_dict(),
        "settings": args.settings,
        "environment": environment(device),
        "backbone": info,
        "setting_seconds": phase_seconds,
        "study_seconds": time.perf_counter() - started,
    }
    _finish(out, meta, records)
    return 0
