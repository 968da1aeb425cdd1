"""Files of a comparison on a user's data: ``RESULTS.md`` (the table the command prints), ``results.json``,
``summary.csv`` / ``runs.csv`` as the study writes them, and ``metric_vs_time.png``."""

from __future__ import annotations

from pathlib import Path

from .common import Record
from .report import _lr, _num, write_csv, write_json
from .variants import MLP, MLP_AGAIN


def _score(value, unit: str) -> str:
    return _num(value, ".2f" if unit == "%" else ".4f")


def markdown(meta: dict, summary: list[dict]) -> str:
    """The protocol in one paragraph, then one row per variant: best score, time to the target, speedup and the
    verdict beyond the measured timing noise."""
    task, data, env, preset = meta["task"], meta["data"], meta["environment"], meta["preset"]
    metric, unit, tol = task["metric"], task["unit"], task["tolerance"]
    regression = task["kind"] == "regression"
    shown = f"{metric} ({unit})" if unit else metric
    classes = ""
    if not regression:
        names = list(data["classes"])
        classes = f" Classes (label -> index): {', '.join(f'{k} -> {v}' for k, v in list(data['classes'].items())[:12])}"
        classes += ", ..." if len(names) > 12 else ""
        classes += "."
    grid = preset.get("tune_grid") or ()
    lines = [
        f"Data {data.get('source') or '(arrays)'}: {data['train_samples']} training and {data['test_samples']} test "
        f"samples, {data['features']} features, {task['kind']} ({data['task_reason']}); test set: {data['holdout']}; "
        f"features {'standardised with the training split' if data['standardized'] else 'as given'}.{classes} "
        f"Heads {list(preset['hidden'])}, {meta['epochs']} epochs, batch {preset['batch_size']}, seeds "
        f"{list(preset['seeds'])}, learning rates tuned per variant on a validation fifth of the training samples "
        f"(rates {', '.join(f'{v:g}' for v in grid)}, then x0.5 and x2 of the best; same budget for each). Device "
        f"{env['device']} ({env['device_name']}, {env['torch_threads']} torch thread(s)), torch "
        f"{env['versions']['torch']}, {env['date']}.",
        "",
        f"Score: test {metric}{' (RMSE in the target units at the best R²)' if regression else ''}. Target: each "
        f"seed's MLP best {metric} minus {tol:g}{' point' if unit == '%' else ''}. Speedup = MLP time to target / "
        "variant time to target (median over seeds, 0 when never reached); *verdict* says faster or slower only "
        f"beyond the timing noise, the largest time ratio of two identical MLP runs (`{MLP_AGAIN}`), and faster "
        "also needs every seed to reach the target ('mixed' otherwise). Times are training seconds, evaluation "
        "excluded.",
        "",
    ]
    noise = summary[0].get("timing_noise") if summary else None
    if noise is not None:
        lines += [f"Timing noise (two identical MLP runs): ±{100 * noise:.1f} % at most over the seeds.", ""]
    head = f"| variant | params | lr | best {shown} (mean ± std) |"
    head += " best RMSE |" if regression else ""
    head += " Δ vs MLP | reached target | time to target (s, median) | speedup | verdict | total time (s) | freeze epoch |"
    lines += [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in summary:
        other = r["variant"] != MLP
        freeze = _num(r["freeze_epoch_mean"], ".1f")
        if r.get("model") == "glai" and r["never_froze"]:
            freeze += f" ({r['never_froze']} never)"
        line = f"| {r['variant']} | {r['params']} | {_lr(r)} | {_score(r['best_acc_mean'], unit)} ± "
        line += f"{_score(r['best_acc_std'], unit)} |"
        line += f" {_num(r.get('best_rmse_mean'), '#.4g')} |" if regression else ""
        diff = _num(r["acc_diff_mean"], "+.2f" if unit == "%" else "+.4f") if other else "-"
        line += (
            f" {diff} | {r['reached']}/{r['paired']} | {_num(r['time_to_target_median'], '.2f', 'never')} | "
            f"{_num(r['speedup_median'], '.2f') if other else '1'} | {r.get('verdict', '-')} | "
            f"{r['total_time_mean']:.2f} | {freeze} |"
        )
        lines.append(line)
    lines.append("")
    return "\n".join(lines)


def plot(path: Path, meta: dict, records: list[Record]) -> Path:
    """Test score against training time for the first seed of every variant; stars at the freezes, the dashed line
    the MLP's target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task = meta["task"]
    first = min(r.seed for r in records)
    runs = [r for r in records if r.seed == first]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for rec in runs:
        res = rec.result
        (line,) = ax.plot(
            res.time, res.test_acc, marker=".", label=f"{rec.variant} (best {res.best_acc:.4g})"
        )
        if res.freeze_epoch is not None:
            i = res.freeze_epoch - 1
            ax.plot([res.time[i]], [res.test_acc[i]], marker="*", ms=14, color=line.get_color(), ls="none")
    mlp = next((r for r in runs if r.variant == MLP), None)
    if mlp is not None:
        target = mlp.result.best_acc - task["tolerance"]
        ax.axhline(
            target, color="grey", ls="--", lw=1, label=f"MLP best - {task['tolerance']:g} = {target:.4g}"
        )
        low = min(min(r.result.test_acc) for r in runs)
        ax.set_ylim(max(low, target - 10 * task["tolerance"] - 1e-9), None)
    ax.set_xlabel("training wall time (s, evaluation excluded)")
    ax.set_ylabel(f"test {task['metric']}" + (f" ({task['unit']})" if task["unit"] else ""))
    ax.set_title(f"{meta['settings'][0]}, seed {first} (star: freeze)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_comparison(folder: Path, meta: dict, records: list[Record], summary: list[dict]) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "results.json", meta, records, summary)
    write_csv(folder, records, summary)
    (folder / "RESULTS.md").write_text(markdown(meta, summary))
    files = {
        k: folder / n
        for k, n in (("json", "results.json"), ("markdown", "RESULTS.md"), ("csv", "summary.csv"))
    }
    files["plot"] = plot(folder / "metric_vs_time.png", meta, records)
    return files
