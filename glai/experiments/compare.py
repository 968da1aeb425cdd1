"""The study's protocol on a user's own data: :func:`compare` (Python) and ``glai-experiment --data FILE``.

The same code as the study's settings does the work: :func:`~.common.run_heads` tunes every variant's learning
rate on a validation split with the same budget and trains it for every seed, ``MLP again`` repeats the MLP to
measure the timing noise, and :func:`~.stats.summarize` pairs the runs by seed and gives the verdicts. What is
particular to a user's data is only the input (:mod:`.userdata`), the task (loss and test score, :mod:`.task`)
and the report (:mod:`.compare_report`).

Variants by default: the MLP (twice), GLAI with the study's flip-rate freeze rule at reduction 1 and at reduction
2 (quantitative net widened from the structural one), and an MLP of the structural width (the r = 2 structural
net trained alone), all with the head widths ``hidden``.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..cli_checks import folder_problem
from ..train import FreezePolicy, make_head, make_optimizer
from .common import PRESETS, Preset, Record, environment, run_heads
from .hyper_search import trial_count, validation_split
from .userdata import DataError, Prepared, prepare
from .variants import BASE_RULE, MLP, MLP_AGAIN, Plain, select

SETTING = "your data"
# The study's flip-rate rule (BASE) at reduction 1 and 2, named for a reader who has not seen the study.
GLAI_R1, GLAI_R2 = "GLAI r=1", "GLAI r=2"


def variants_for(preset: Preset | None = None) -> dict:
    """The MLP and its repeat, GLAI r = 1 and r = 2 under the flip-rate rule, and the MLP of width n / 2."""
    return {
        MLP: Plain(),
        MLP_AGAIN: Plain(again=True),
        GLAI_R1: FreezePolicy(**BASE_RULE),
        GLAI_R2: FreezePolicy(**BASE_RULE, reduction=2, init="widen"),
        "MLP n/2": Plain(divisor=2),
    }


@dataclass
class Comparison:
    """What :func:`compare` returns: ``meta`` (data, task, protocol, environment), the runs (``records``), one
    ``summary`` row per variant as the study's, and the files written (empty without ``out``)."""

    meta: dict
    records: list[Record]
    summary: list[dict]
    files: dict

    def row(self, variant: str) -> dict:
        return next(r for r in self.summary if r["variant"] == variant)

    def table(self) -> str:
        from .compare_report import markdown

        return markdown(self.meta, self.summary)


def make_preset(
    quick: bool = False,
    *,
    hidden=None,
    epochs: int | None = None,
    batch_size: int | None = None,
    seeds: int | None = None,
) -> tuple[Preset, int]:
    """The study's quick or full preset with the user's head widths, batch size and seed count, and the epochs of
    every run (the preset's head epochs unless given)."""
    preset = PRESETS["quick" if quick else "full"]
    if hidden is not None:
        hidden = tuple(int(h) for h in hidden)
        if not hidden or min(hidden) < 2:
            raise ValueError(f"expected hidden widths of at least 2 (r = 2 halves them), got {list(hidden)}")
        preset = replace(preset, hidden=hidden)
    if batch_size is not None:
        preset = replace(preset, batch_size=int(batch_size))
    if seeds is not None:
        preset = replace(preset, seeds=tuple(range(int(seeds))))
    return preset, int(epochs or preset.head_epochs)


def run_count(variants: dict, preset: Preset) -> tuple[int, int]:
    """``(tuning runs, measured runs)`` of a comparison."""
    return trial_count(variants, preset.tune_grid), len(preset.seeds) * len(variants)


def estimate_seconds(prepared: Prepared, variants: dict, preset: Preset, epochs: int, device) -> float:
    """Wall time of the whole comparison, from a few timed training steps of the MLP at the batch size: every run
    makes ``epochs * ceil(samples / batch)`` steps (tuning runs on four fifths of the training samples), and a GLAI
    step costs about an MLP step (the mask skips no work; r = 2 is cheaper before the freeze)."""
    split, task = prepared.split, prepared.task
    bs = min(preset.batch_size, split.x.shape[0])
    torch.manual_seed(0)
    model = make_head(split.in_features, preset.hidden, task.out_features, None, device)
    opt = make_optimizer(model.parameters(), 1e-3)
    xb, yb = split.x[:bs].to(device), split.y[:bs].to(device)

    def step():
        loss = task.loss(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # first-call overheads
    start, steps = time.perf_counter(), 0
    while steps < 5 or (time.perf_counter() - start < 0.2 and steps < 200):
        step()
        steps += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    per_step = (time.perf_counter() - start) / steps
    n = split.x.shape[0]
    tuning, measured = run_count(variants, preset)
    total_steps = epochs * (tuning * math.ceil(0.8 * n / bs) + measured * math.ceil(n / bs))
    return per_step * total_steps * 1.15  # about 15 % on top for evaluation, freeze checks and caches


def seconds(t: float) -> str:
    return f"{t:.0f} s" if t >= 10 else f"{t:.1f} s"


def plan_line(prepared: Prepared, variants: dict, preset: Preset, epochs: int, estimate: float) -> str:
    info, task = prepared.info, prepared.task
    tuning, measured = run_count(variants, preset)
    what = f"{len(info['classes'])} classes" if task.kind == "classification" else "regression"
    return (
        f"plan: {info['train_samples']} training / {info['test_samples']} test samples, {info['features']} "
        f"features, {what} ({info['task_reason']}); {info['holdout']}; heads {list(preset.hidden)}; variants "
        f"{', '.join(variants)}; {tuning} tuning + {measured} measured runs ({len(preset.seeds)} seeds) of {epochs} "
        f"epochs, batch {preset.batch_size}; estimated wall time {seconds(estimate)}"
    )


def progress_ticker(total: int, disable: bool) -> tuple[Callable[[], None], Callable[[], None]]:
    """``(tick, close)`` of a progress bar over ``total`` runs: tqdm's when installed (a demo extra), else a plain
    line rewritten on stderr."""
    if disable:
        return (lambda: None), (lambda: None)
    try:
        from tqdm.auto import tqdm
    except ImportError:
        done = [0]

        def tick():
            done[0] += 1
            print(
                f"\rruns {done[0]}/{total}", end="\n" if done[0] == total else "", file=sys.stderr, flush=True
            )

        return tick, (lambda: None)
    bar = tqdm(total=total, desc="runs", file=sys.stderr)
    return (lambda: bar.update(1)), bar.close


def add_rmse(summary: list[dict], records: list[Record], target_std: float) -> None:
    """The test RMSE at each run's best R² (``sqrt(1 - R²) * std(y_test)``, in the target's units), mean over
    seeds, added to every summary row as ``best_rmse_mean``."""
    for row in summary:
        r2 = [
            r.result.best_acc for r in records if r.setting == row["setting"] and r.variant == row["variant"]
        ]
        rmse = [math.sqrt(max(0.0, 1.0 - v)) * target_std for v in r2]
        row["best_rmse_mean"] = sum(rmse) / len(rmse)


def check_out(out, overwrite: bool) -> Path | None:
    """``out`` as a folder this comparison may write: missing, empty, or any with ``overwrite``."""
    if out is None:
        return None
    out = Path(out)
    problem = folder_problem(out)
    if problem:
        raise ValueError(f"expected an output folder (created if missing), got {str(out)!r}, {problem}")
    if not overwrite and out.is_dir() and any(out.iterdir()):
        raise ValueError(
            f"expected a new or empty output folder, got {str(out)!r}, which holds files (overwrite=True)"
        )
    return out


def compare(
    X,
    y,
    X_test=None,
    y_test=None,
    task: str = "auto",
    *,
    hidden=None,
    epochs: int | None = None,
    batch_size: int | None = None,
    seeds: int | None = None,
    quick: bool = False,
    variants=None,
    device="cpu",
    standardize: bool = True,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    out=None,
    overwrite: bool = False,
    progress: bool = True,
    plan: bool = True,
    name: str = SETTING,
    source: str | None = None,
    command: str | None = None,
    prepared: Prepared | None = None,
) -> Comparison:
    """Is GLAI worth it on this data? The study's protocol (tuning, seeds, timing noise, verdicts) on ``X``, ``y``
    (numpy arrays or torch tensors), tested on ``X_test``, ``y_test`` or a seeded hold-out of ``test_fraction``.

    Every input is checked first (:class:`~.userdata.DataError` or ``ValueError``, one line); files are written
    only when ``out`` is given (a new or empty folder unless ``overwrite``). ``plan``: print the plan and the
    estimated wall time on stderr first; ``progress``: a progress bar over the runs. ``variants``: names to run besides the
    MLP and its repeat (default all of :func:`variants_for`)."""
    device = torch.device(device)
    preset, epochs = make_preset(quick, hidden=hidden, epochs=epochs, batch_size=batch_size, seeds=seeds)
    chosen = variants_for(preset)
    if variants is not None:
        unknown = sorted(set(variants) - set(chosen) - {MLP})
        if unknown:
            raise ValueError(
                f"unknown variants {unknown}; choose from {sorted(set(chosen) - {MLP, MLP_AGAIN})}"
            )
        chosen = select(chosen, set(variants))
    folder = check_out(out, overwrite)
    if prepared is None:
        prepared = prepare(
            X,
            y,
            X_test,
            y_test,
            task=task,
            standardize=standardize,
            test_fraction=test_fraction,
            seed=split_seed,
        )
    data, kind = prepared.split.to(device), prepared.task
    estimate = estimate_seconds(prepared, chosen, preset, epochs, device)
    if plan:
        print(plan_line(prepared, chosen, preset, epochs, estimate), file=sys.stderr, flush=True)
    tick, close = progress_ticker(sum(run_count(chosen, preset)), disable=not progress)
    started = time.perf_counter()
    try:
        records = run_heads(
            name,
            data,
            chosen,
            preset=preset,
            epochs=epochs,
            tick=tick,
            tune_data=validation_split(data),
            task=kind,
            extra={"data_source": source} if source else None,
        )
    finally:
        close()
    from .stats import summarize

    summary = summarize(records, tolerance=kind.tolerance)
    if kind.kind == "regression":
        add_rmse(summary, records, prepared.info["test_target_std"])
    meta = {
        "command": command,
        "preset": preset.to_dict(),
        "epochs": epochs,
        "settings": [name],
        "data": {"source": source, **prepared.info},
        "task": kind.to_dict(),
        "environment": environment(device),
        "estimated_seconds": estimate,
        "study_seconds": time.perf_counter() - started,
    }
    files = {}
    if folder is not None:
        from .compare_report import write_comparison

        files = write_comparison(folder, meta, records, summary)
    return Comparison(meta, records, summary, files)


__all__ = ["Comparison", "DataError", "compare", "variants_for"]
