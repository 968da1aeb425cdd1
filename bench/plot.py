"""Draw the benchmark results as PNG files: ``python -m bench.plot`` (``--help`` for the options).

Per device and dtype in ``bench/results/microbench.csv``:

- ``<device>-<dtype>-rate.png``: one panel per op, TFLOP/s (GB/s for the memory-bound ops) against the op's size
  in FLOPs (bytes), one line per provider (dashed: reduction r > 1); the GEMM panels also draw ``F.linear`` at
  the same shapes, the rate the percentages in the CSV refer to;
- ``<device>-<dtype>-time.png``: the same panels in milliseconds, with the 20-80 percentile band;
- ``<device>-<dtype>-memory.png`` from ``memory.csv`` (CUDA runs): peak and saved memory of a training step.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

from bench.harness import MEMORY_CSV, OPS_CSV, RESULTS, op_bytes, read_csv
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


def plot_ops(rows, device: str, dtype: str, metric: str, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

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
    fig.tight_layout()
    path = out / f"{slug(device)}-{dtype}-{metric}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_memory(rows, device: str, dtype: str, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    path = out / f"{slug(device)}-{dtype}-memory.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.plot", description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=str(RESULTS), help="folder of microbench.csv and memory.csv")
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
    if not groups and not memory:
        print(f"no results under {results} (run `pytest bench/ --benchmark-only` first)")
        return 1
    metrics = ("rate", "time") if args.metric == "both" else (args.metric,)
    for (device, dtype), rows in sorted(groups.items()):
        for metric in metrics:
            print(plot_ops(rows, device, dtype, metric, out))
    for (device, dtype), rows in sorted(memory.items()):
        print(plot_memory(rows, device, dtype, out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
