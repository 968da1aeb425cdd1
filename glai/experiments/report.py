"""Files of a study: ``results.json`` (everything, curves included), ``summary.csv``, ``runs.csv``, one PNG per
setting and ``RESULTS.md``, the Markdown tables the README includes."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

from ..demo import plot_runs
from ..train import RunResult
from .common import Record
from .stats import MIN_SEEDS_FOR_P, TOLERANCE
from .variants import MLP, MLP_AGAIN

DERIVED = ("setting", "variant", "seed", "best_acc", "best_epoch", "total_time", "epochs")
RUN_COLUMNS = (
    "setting", "variant", "seed", "best_acc", "best_epoch", "total_time", "epochs", "freeze_epoch", "lr", "lr_scale",
)  # fmt: skip


def _num(value, fmt: str = ".2f", none: str = "-") -> str:
    if value is None:
        return none
    if isinstance(value, float) and value != value:  # NaN
        return none
    return format(value, fmt)


def write_json(path: Path, meta: dict, records: list[Record], summary: list[dict]) -> None:
    payload = {"meta": meta, "summary": summary, "runs": [r.to_dict() for r in records]}
    path.write_text(json.dumps(payload, indent=1, default=str))


def write_csv(folder: Path, records: list[Record], summary: list[dict]) -> None:
    if summary:
        with open(folder / "summary.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(summary[0]))
            writer.writeheader()
            writer.writerows(summary)
    with open(folder / "runs.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*RUN_COLUMNS, "time_structural", "time_cache", "time_quantitative", "extra"])
        for rec in records:
            d = rec.to_dict()
            cost = rec.result.cost
            writer.writerow(
                [d.get(c) for c in RUN_COLUMNS]
                + [f"{cost['structural']:.4f}", f"{cost['cache']:.4f}", f"{cost['quantitative']:.4f}"]
                + [json.dumps(rec.extra)]
            )


def _lr(row) -> str:
    if row.get("lr") is None:
        return "-"
    text = f"{row['lr']:g}"
    if row.get("lr_scale") not in (None, 1.0):
        text += f" (Q ×{row['lr_scale']:g})"
    return text


def markdown(meta: dict, summary: list[dict]) -> str:
    """Per setting: accuracy, time to the MLP's best minus 0.5 point, speedup against the measured timing noise,
    paired tests, cost split."""
    env = meta["environment"]
    seeds = list(meta["preset"]["seeds"])
    grid = meta["preset"].get("tune_grid") or ()
    tuning = (
        "Learning rates tuned per variant on a validation split, the same budget for each: the rates "
        f"{', '.join(f'{v:g}' for v in grid)}, then x0.5 and x2 of the best (for GLAI on its quantitative phase "
        "only, 'Q x'). "
        if grid
        else f"Every variant at lr {meta['preset']['lr']:g} (no tuning). "
    )
    p_note = "" if len(seeds) >= MIN_SEEDS_FOR_P else f" No p-value with fewer than {MIN_SEEDS_FOR_P} seeds."
    lines = [
        f"Preset `{meta['preset']['name']}`, seeds {seeds}, device {env['device']} "
        f"({env['device_name']}, {env['torch_threads']} torch thread(s)), torch {env['versions']['torch']}, "
        f"{env['date']}. Times are training seconds with evaluation excluded; the target is each seed's MLP best "
        f"minus {TOLERANCE} point. Speedup = MLP time to target / variant time to target (median over seeds, 0 "
        "when the variant never reached it); *verdict* calls it faster or slower only beyond the timing noise, "
        f"the largest time ratio of two identical MLP runs (`{MLP_AGAIN}`) over the seeds, and 'faster' also needs "
        f"every seed to reach the target ('mixed' otherwise). {tuning}Sign test on "
        f"who reached the target first; Wilcoxon on the accuracy difference.{p_note} 'best after freeze': best "
        "test accuracy of the quantitative phase alone (seeds that froze).",
        "",
    ]
    settings = []
    for row in summary:
        if row["setting"] not in settings:
            settings.append(row["setting"])
    head = (
        "| variant | lr | best acc % (mean ± std) | Δ acc vs MLP | best after freeze | reached target | "
        "time to target (s, median) | speedup | verdict | first (W/L) | sign p | Wilcoxon p (acc) | "
        "total time (s) | freeze epoch (mean) | flip rate at freeze | cost S / cache / Q (s) |"
    )
    for setting in settings:
        rows = [r for r in summary if r["setting"] == setting]
        noise = rows[0].get("timing_noise")
        lines += [f"#### {setting}", ""]
        if noise is not None:
            lines += [
                f"Timing noise (two identical MLP runs, time to target): ±{100 * noise:.1f} % at most over the "
                f"seeds, ±{100 * (rows[0].get('timing_noise_median') or 0.0):.1f} % median",
                "",
            ]
        lines += [head, "|" + " --- |" * 16]
        for r in rows:
            other = r["variant"] != MLP
            glai = r.get("model") == "glai"
            freeze = _num(r["freeze_epoch_mean"], ".1f")
            if glai and r["never_froze"]:
                freeze += f" ({r['never_froze']} never)"
            cost = "-"
            if glai:
                cost = " / ".join(_num(r[f"cost_{p}_mean"]) for p in ("structural", "cache", "quantitative"))
            lines.append(
                f"| {r['variant']} | {_lr(r)} | {r['best_acc_mean']:.2f} ± {r['best_acc_std']:.2f} | "
                f"{_num(r['acc_diff_mean'], '+.2f') if other else '-'} | {_num(r['after_freeze_best_mean'])} | "
                f"{r['reached']}/{r['paired']} | {_num(r['time_to_target_median'], '.2f', 'never')} | "
                f"{_num(r['speedup_median'], '.2f') if other else '1'} | {r.get('verdict', '-')} | "
                f"{str(r['wins']) + '/' + str(r['losses']) if other else '-'} | {_num(r['sign_p'], '.3f')} | "
                f"{_num(r['wilcoxon_acc_p'], '.3f')} | {r['total_time_mean']:.2f} | {freeze} | "
                f"{_num(r['flip_at_freeze_mean'], '.4f')} | {cost} |"
            )
        lines.append("")
    return "\n".join(lines)


def plot_setting(path: Path, setting: str, records: list[Record], max_variants: int = 7) -> None:
    """Test accuracy against training time of the first seed: the MLP and up to ``max_variants`` GLAI variants."""
    mine = [r for r in records if r.setting == setting]
    if not mine:
        return
    first = min(r.seed for r in mine)
    runs = [r for r in mine if r.seed == first][: max_variants + 1]
    mlp = next((r for r in runs if r.variant == MLP), None)
    target = None if mlp is None else mlp.result.best_acc - TOLERANCE
    plot_runs([r.result for r in runs], path, f"{setting}, seed {first} (star: freeze)", target)


def load_records(path: Path) -> tuple[dict, list[Record]]:
    """The metadata and runs of a ``results.json``, to summarise and plot again without training."""
    payload = json.loads(Path(path).read_text())
    fields = {f.name for f in dataclasses.fields(RunResult)}
    records = []
    for run in payload["runs"]:
        result = RunResult(**{k: v for k, v in run.items() if k in fields})
        extra = {k: v for k, v in run.items() if k not in fields and k not in DERIVED}
        records.append(Record(run["setting"], run["variant"], run["seed"], result, extra))
    return payload["meta"], records


def merge_results(paths) -> tuple[dict, list[Record]]:
    """The runs of several ``results.json`` of one preset (settings run as separate processes) as one study.

    The metadata is the first file's, with the settings, per-setting seconds and commands of all; the study's wall
    time is the longest of them (the processes ran side by side). A setting found in two files is refused."""
    meta, records = load_records(paths[0])
    meta = dict(meta, commands=[meta.get("command")], setting_seconds=dict(meta.get("setting_seconds", {})))
    for path in paths[1:]:
        other, more = load_records(path)
        if other["preset"] != meta["preset"]:
            raise ValueError(f"{path} was run with another preset than {paths[0]}")
        clash = set(other["settings"]) & set(meta["settings"])
        if clash:
            raise ValueError(f"{path} repeats the settings {sorted(clash)} of an earlier file")
        meta["settings"] = list(meta["settings"]) + list(other["settings"])
        meta["setting_seconds"].update(other.get("setting_seconds", {}))
        meta["commands"].append(other.get("command"))
        meta["study_seconds"] = max(meta.get("study_seconds", 0.0), other.get("study_seconds", 0.0))
        meta["backbone"] = meta.get("backbone") or other.get("backbone")
        records += more
    return meta, records


def write_all(folder: Path, meta: dict, records: list[Record], summary: list[dict]) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "results.json", meta, records, summary)
    write_csv(folder, records, summary)
    (folder / "RESULTS.md").write_text(markdown(meta, summary))
    files = {
        "json": folder / "results.json",
        "markdown": folder / "RESULTS.md",
        "csv": folder / "summary.csv",
    }
    for setting in dict.fromkeys(r.setting for r in records):
        png = folder / f"accuracy_vs_time_{setting.replace(' ', '_').replace('=', '')}.png"
        plot_setting(png, setting, records)
        files[f"plot:{setting}"] = png
    return files
