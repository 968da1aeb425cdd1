"""Draw the benchmark results as PNG files: ``python -m bench.plot`` (``--help`` for the options).

Per device and dtype in ``bench/results/microbench.csv``:

- ``<device>-<dtype>-rate.png``: one panel per op, TFLOP/s (GB/s for the memory-bound ops) against the op's size
  in FLOPs (bytes), one line per provider (dashed: reduction r > 1); the GEMM panels also draw ``F.linear`` at
  the same shapes, the rate the percentages in the CSV refer to;
- ``<device>-<dtype>-time.png``: the same panels in milliseconds, with the 20-80 percentile band;
- ``<device>-<dtype>-memory.png`` from ``memory.csv`` (CUDA runs): peak and saved memory of a training step.

Per device in ``head_steps.csv`` (the CPU benchmarks' head grid and the GPU report's training steps alike):

- ``<device>-head-steps.png``: every head on one chart, each variant's time over the eager MLP's.

``bench.gpu_report`` draws a GPU run's plots with these same functions.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

from bench.harness import HEAD_CSV, MEMORY_CSV, OPS_CSV, RESULTS, op_bytes, read_csv
from glai_kernels import costs

OP_ORDER = (
    "gate", "masked_forward", "backward_data", "backward_weights", "train_step",
    "gemm", "pack", "gate_epilogue", "copy",
)  # fmt: skip
GEMM_PANELS = ("gate", "masked_forward", "backward_data", "backward_weights", "train_step")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48]


def _size(row) -> float:
    """The x coordinate of a row: its FLOPs, or its bytes for a memory-bound op."""
    b, i, o, r = (int(row[k]) for k in ("batch", "in_features", "out_features", "r"))
    if row["op"] in costs.MEMORY_OPS:
        return op_bytes(row["op"], b, i, o, r, row["dtype"])
    return costs.op_flops(row["op"], b, i, o, r)


def _lines(rows):
    """``{label: [(x, row), ...]}`` sorted by x: one line per provider and reduction."""
    lines = defaultdict(list)
    for row in rows:
        label = row["provider"] + (f" r={row['r']}" if row["r"] not in ("", "1") else "")
        lines[label].append((_size(row), row))
    return {k: sorted(v, key=lambda t: t[0]) for k, v in sorted(lines.items())}


def _style(label: str) -> dict:
    colors = {"triton": "C0", "triton_cached": "C4", "torch": "C1", "torch_cached": "C5", "baseline": "C2"}
    colors["baseline_compiled"] = "C3"
    provider = label.split(" ")[0]
    return {"color": colors.get(provider, "C7"), "linestyle": "--" if " r=" in label else "-", "marker": "o"}


def _pyplot():
    """matplotlib's pyplot on the file-only backend (no display on the machines that plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_ops(rows, device: str, dtype: str, metric: str, out: Path) -> Path:
    import matplotlib.ticker

    plt = _pyplot()

    by_op = defaultdict(list)
    for row in rows:
        by_op[row["op"]].append(row)
    ops = [op for op in OP_ORDER if op in by_op] + sorted(set(by_op) - set(OP_ORDER))
    cols = 3
    nrows = (len(ops) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 3.8 * nrows), squeeze=False)
    for ax, op in zip(axes.flat, ops):
        memory_bound = op in costs.MEMORY_OPS
        lines = _lines(by_op[op])
        if op in GEMM_PANELS and op != "train_step" and "gemm" in by_op:
            # F.linear at the same layer shapes: the same FLOPs as the op at r = 1, so it shares the x axis.
            lines["F.linear (GEMM)"] = sorted(((_size(r), r) for r in by_op["gemm"]), key=lambda t: t[0])
        for label, points in lines.items():
            xs = [x for x, _ in points]
            style = (
                _style(label)
                if label != "F.linear (GEMM)"
                else {"color": "0.5", "linestyle": ":", "marker": "."}
            )
            if metric == "rate":
                field = "gbps" if memory_bound else "tflops"
                pts = [(x, float(r[field])) for x, r in points if r.get(field)]
                if pts:
                    ax.plot(*zip(*pts), label=label, **style)
            else:
                med = [float(r["median"]) for _, r in points]
                ax.plot(xs, med, label=label, **style)
                lo, hi = [float(r["p20"]) for _, r in points], [float(r["p80"]) for _, r in points]
                ax.fill_between(xs, lo, hi, color=style["color"], alpha=0.15)
                ax.set_yscale("log")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # decade labels only: no overlaps
        if metric == "rate":
            ax.set_ylim(bottom=0)
        ax.set_title(op + (" (nominal MLP FLOPs)" if op == "train_step" else ""))
        ax.set_xlabel("bytes moved" if memory_bound else "FLOPs")
        ax.set_ylabel(("GB/s" if memory_bound else "TFLOP/s") if metric == "rate" else "ms (median, p20-p80)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(ops) :]:
        ax.axis("off")
    versions = {(r["torch"], r["triton"]) for r in rows}
    cpu = device.startswith("CPU")
    note = "\nCPU figures: the PyTorch providers only; the Triton kernels are timed on CUDA" if cpu else ""
    what = "rate" if metric == "rate" else "time"
    fig.suptitle(f"{device}, {dtype}: {what} per op (torch/triton {sorted(versions)}){note}")
    return _save(fig, out / f"{slug(device)}-{dtype}-{metric}.png")


def plot_memory(rows, device: str, dtype: str, out: Path) -> Path:
    plt = _pyplot()
    shapes = sorted({r["shape"] for r in rows}, key=lambda s: [int(v) for v in re.findall(r"\d+", s)])
    providers = sorted({r["provider"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, op in zip(axes, ("train_step_peak", "train_step_saved")):
        width = 0.8 / max(len(providers), 1)
        for j, provider in enumerate(providers):
            values = {
                r["shape"]: float(r["median"]) for r in rows if r["op"] == op and r["provider"] == provider
            }
            xs = [i + j * width for i, s in enumerate(shapes) if s in values]
            ax.bar(xs, [values[s] for s in shapes if s in values], width, label=provider)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(shapes))], shapes, rotation=30, fontsize=7)
        ax.set_ylabel("MiB")
        ax.set_title(op.replace("_", " "))
        ax.legend(fontsize=8)
    fig.suptitle(f"{device}, {dtype}: device memory of a training step")
    return _save(fig, out / f"{slug(device)}-{dtype}-memory.png")


def plot_heads(rows, device: str, out: Path) -> Path | None:
    """Every head of ``head_steps.csv`` rows on one chart: each variant's time over the eager MLP's at the same
    head and dtype (below 1: faster), against the eager MLP's time; None without a variant to compare."""
    eager, series = {}, defaultdict(list)
    for row in rows:
        key = (row["shape"], row["dtype"])
        if row["provider"] == "eager":
            eager[key] = float(row["median"])
        else:
            series[row["provider"]].append((key, float(row["median"])))
    points = {v: [(eager[k], ms / eager[k]) for k, ms in pts if k in eager] for v, pts in series.items()}
    if not any(points.values()):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (variant, pts) in enumerate(sorted(points.items())):
        if pts:
            ax.scatter(*zip(*pts), label=variant, color=f"C{i}", s=18)
    ax.axhline(1.0, color="0.4", linestyle=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("eager MLP step, ms")
    ax.set_ylabel("variant time / eager MLP time (below 1: faster)")
    ax.set_title(f"{device}\ntraining steps of a head (forward, backward, Adam)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out / f"{slug(device)}-head-steps.png")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.plot", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--results", default=str(RESULTS), help="folder of microbench.csv, memory.csv and head_steps.csv"
    )
    ap.add_argument("--out", help="folder of the PNG files (default: <results>/plots)")
    ap.add_argument("--device", default="", help="only devices whose name contains this text")
    ap.add_argument("--metric", choices=("rate", "time", "both"), default="both")
    args = ap.parse_args(argv)
    results = Path(args.results)
    out = Path(args.out) if args.out else results / "plots"
    out.mkdir(parents=True, exist_ok=True)
    groups = defaultdict(list)
    for row in read_csv(results / OPS_CSV):
        if args.device.lower() in row["device"].lower():
            groups[(row["device"], row["dtype"])].append(row)
    memory = defaultdict(list)
    for row in read_csv(results / MEMORY_CSV):
        if args.device.lower() in row["device"].lower():
            memory[(row["device"], row["dtype"])].append(row)
    heads = defaultdict(list)
    for row in read_csv(results / HEAD_CSV):
        if args.device.lower() in row["device"].lower():
            heads[row["device"]].append(row)
    if not groups and not memory and not heads:
        print(f"no results under {results} (run `pytest bench/ --benchmark-only` first)")
        return 1
    metrics = ("rate", "time") if args.metric == "both" else (args.metric,)
    for (device, dtype), rows in sorted(groups.items()):
        for metric in metrics:
            print(plot_ops(rows, device, dtype, metric, out))
    for (device, dtype), rows in sorted(memory.items()):
        print(plot_memory(rows, device, dtype, out))
    for device, rows in sorted(heads.items()):
        path = plot_heads(rows, device, out)
        if path:
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
