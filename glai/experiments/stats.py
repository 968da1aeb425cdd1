"""Summaries across seeds and the paired tests of GLAI against the MLP.

Pairing is by seed: a GLAI run is compared with the MLP run of the same seed (same data order, same initial
weights). Its time target is that MLP run's best test score minus a tolerance: 0.5 accuracy point for the
study's classifications, the task's own for a user's data (``tolerance``; 0.01 of R² for a regression).

Time to target is often "never" for GLAI, so the time comparison uses the exact sign test: a seed is a GLAI win
when GLAI reached the target sooner than the MLP did, a loss when later or never; ties do not count. Accuracy
differences are compared with the Wilcoxon signed-rank test (exact for these sample sizes). Both are
computed here in plain Python, so the study needs no scipy. With five seeds the
smallest two-sided p either test can give is 0.0625, so no result here is "significant" at 5 %: the p-values
say how one-sided the seeds were, nothing more, and with fewer than five seeds none is given at all.

Timing noise is measured, not assumed: ``MLP again`` repeats the MLP run of every seed (identical work, identical
accuracies), and the noise of a setting is the largest ratio between the two runs' times to the target over its
seeds. A variant is called faster (or slower) only when its median speedup is beyond that ratio, and "within
noise" otherwise; faster also needs every seed to have reached the target ("mixed" when some never did).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict

from .common import Record
from .task import ACCURACY_TOLERANCE
from .variants import MLP, MLP_AGAIN

TOLERANCE = ACCURACY_TOLERANCE  # accuracy points under the MLP's best that count as "reached"
MIN_SEEDS_FOR_P = 5  # fewer paired seeds give no p-value: the smallest possible one is then 0.125 or more


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact binomial p-value of ``wins`` against ``losses`` under p = 1/2 (1.0 with no decisions)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


def wilcoxon_p(diffs: list[float]) -> float | None:
    """Two-sided exact Wilcoxon signed-rank p-value of paired differences (zeros dropped, tied magnitudes get
    their average rank, the null distribution enumerated over all sign patterns); ``None`` with fewer than two
    non-zero differences. Exact enumeration keeps the study free of a scipy dependency; beyond 16 pairs the
    normal approximation is used."""
    nonzero = [d for d in diffs if abs(d) > 1e-12]
    n = len(nonzero)
    if n < 2:
        return None
    order = sorted(range(n), key=lambda i: abs(nonzero[i]))
    ranks = [0.0] * n
    i = 0
    while i < n:
        j = i
        while j + 1 < n and abs(nonzero[order[j + 1]]) == abs(nonzero[order[i]]):
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    observed = sum(r for r, d in zip(ranks, nonzero) if d > 0)
    if n > 16:
        mean = n * (n + 1) / 4
        sd = math.sqrt(sum(r * r for r in ranks) / 4)
        z = abs(observed - mean) / sd
        return min(1.0, math.erfc(z / math.sqrt(2)))
    low = high = 0
    for mask in range(2**n):
        w = sum(ranks[k] for k in range(n) if mask >> k & 1)
        low += w <= observed + 1e-9
        high += w >= observed - 1e-9
    return min(1.0, 2 * min(low, high) / 2**n)


def timing_noise(
    mlp: dict[int, Record], again: dict[int, Record], tolerance: float = TOLERANCE
) -> list[float]:
    """Per seed, ``max(a, b) / min(a, b) - 1`` for the times ``a`` and ``b`` of the two identical MLP runs to
    their target (empty without a repeat)."""
    ratios = []
    for seed, first in mlp.items():
        second = again.get(seed)
        if second is None:
            continue
        target = first.result.best_acc - tolerance
        a, b = first.result.time_to(target), second.result.time_to(target)
        if a and b:
            ratios.append(max(a, b) / min(a, b) - 1.0)
    return ratios


def verdict(speedup: float | None, reached: int, paired: int, noise: float | None) -> str:
    """``faster`` / ``slower`` only beyond the measured timing noise. ``faster`` also needs every seed to have
    reached the target (a median over seeds that never got there hides them): ``mixed`` otherwise. ``never``
    when no seed reached it."""
    if speedup is None or paired == 0:
        return "-"
    if reached == 0:
        return "never"
    if noise is None:
        return "no noise measure"
    if speedup > 1.0 + noise:
        return "faster" if reached == paired else "mixed"
    if speedup < 1.0 / (1.0 + noise):
        return "slower"
    return "within noise"


def summarize(records: list[Record], tolerance: float = TOLERANCE) -> list[dict]:
    """One row per (setting, variant) with the measures of the study, in the order the variants were run; a run
    reached the target when its test score came within ``tolerance`` of its seed's MLP best."""
    by_key: dict[tuple[str, str], dict[int, Record]] = defaultdict(dict)
    for rec in records:
        by_key[(rec.setting, rec.variant)][rec.seed] = rec
    spreads = {
        setting: timing_noise(runs, by_key.get((setting, MLP_AGAIN), {}), tolerance)
        for (setting, variant), runs in by_key.items()
        if variant == MLP
    }
    noise = {setting: max(r) if r else None for setting, r in spreads.items()}
    rows = []
    for (setting, variant), runs in by_key.items():
        mlp_runs = by_key.get((setting, MLP), {})
        seeds = sorted(runs)
        acc = [runs[s].result.best_acc for s in seeds]
        total = [runs[s].result.total_time for s in seeds]
        row = {
            "setting": setting,
            "variant": variant,
            "seeds": len(seeds),
            "params": runs[seeds[0]].result.params,
            "best_acc_mean": _mean_std(acc)[0],
            "best_acc_std": _mean_std(acc)[1],
            "total_time_mean": _mean_std(total)[0],
            "total_time_std": _mean_std(total)[1],
            "epochs": runs[seeds[0]].result.epochs,
            "lr": runs[seeds[0]].extra.get("lr"),
            "lr_scale": runs[seeds[0]].extra.get("lr_scale"),
            "timing_noise": noise.get(setting),
            "timing_noise_median": statistics.median(spreads[setting]) if spreads.get(setting) else None,
        }
        for part in ("structural", "cache", "quantitative"):
            row[f"cost_{part}_mean"] = _mean_std([runs[s].result.cost[part] for s in seeds])[0]
        freezes = [runs[s].result.freeze_epoch for s in seeds]
        frozen = [f for f in freezes if f is not None]
        # What the quantitative phase itself reached: with reduction > 1 the best accuracy may belong to the
        # narrower structural net, whose weights are dropped at the freeze.
        after = [
            max(runs[s].result.test_acc[f:])
            for s, f in zip(seeds, freezes)
            if f is not None and f < len(runs[s].result.test_acc)
        ]
        row["after_freeze_best_mean"] = statistics.fmean(after) if after else None
        # The flip rate measured over the last structural epoch: how settled the patterns were when frozen.
        at_freeze = [
            runs[s].result.flip_history[f - 1]
            for s, f in zip(seeds, freezes)
            if f is not None and len(runs[s].result.flip_history) >= f
        ]
        row["flip_at_freeze_mean"] = statistics.fmean(at_freeze) if at_freeze else None
        row["final_acc_mean"] = _mean_std([runs[s].result.test_acc[-1] for s in seeds])[0]
        row["freeze_epoch_mean"] = statistics.fmean(frozen) if frozen else None
        glai = runs[seeds[0]].extra.get("model", "mlp" if variant == MLP else "glai") == "glai"
        row["model"] = "glai" if glai else "mlp"
        row["never_froze"] = sum(f is None for f in freezes) if glai else 0
        times, speedups, diffs, wins, losses, reached = [], [], [], 0, 0, 0
        for s in seeds:
            mlp = mlp_runs.get(s)
            if mlp is None:
                continue
            target = mlp.result.best_acc - tolerance
            t_mlp, t = mlp.result.time_to(target), runs[s].result.time_to(target)
            diffs.append(runs[s].result.best_acc - mlp.result.best_acc)
            if t is not None:
                reached += 1
                times.append(t)
                speedups.append(t_mlp / t if t > 0 else math.inf)
            else:
                speedups.append(0.0)  # never reached: no speedup at all
            if variant == MLP:
                continue
            if t is not None and t < t_mlp:
                wins += 1
            elif t is None or t > t_mlp:
                losses += 1
        paired = len(diffs)
        tested = variant != MLP and paired >= MIN_SEEDS_FOR_P
        speedup = statistics.median(speedups) if speedups else None
        row.update(
            acc_diff_mean=_mean_std(diffs)[0] if diffs else None,
            reached=reached,
            paired=paired,
            time_to_target_median=statistics.median(times) if times else None,
            speedup_median=speedup,
            verdict=verdict(speedup, reached, paired, noise.get(setting)) if variant != MLP else "-",
            wins=wins,
            losses=losses,
            sign_p=sign_test(wins, losses) if tested else None,
            wilcoxon_acc_p=wilcoxon_p(diffs) if tested else None,
        )
        rows.append(row)
    return rows
