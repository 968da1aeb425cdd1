"""The report of a GPU run, the whole pipeline: its JSONL as tables, CSV rows and plots.

``python -m bench.gpu_report DIR/gpu_check.jsonl`` (``bench/gpu_report.py`` is only the entry point).

Writes, under ``--results`` (default ``bench/results``), named after the device of the run:

- ``gpu/<device>.md``: the Markdown tables (kernels against cuBLAS, the memory rate, training steps of a head,
  failures) and the run's status, including what a cut-short run is missing; printed as well;
- ``gpu/<device>.jsonl``: the run's lines, as they came;
- rows merged into ``microbench.csv`` (each kernel as provider ``triton``, the same GEMM through cuBLAS as
  ``cublas``, ``F.linear`` as ``gemm``, the copy as ``copy``) and ``head_steps.csv`` (op ``head_step``, one
  provider per variant, ``gbps`` from the step's byte floor: the columns the CPU benchmarks' head steps have),
  by ``bench.harness``'s writer and columns; a row replaces the one of the same device, op, provider, shape
  and dtype;
- plots (``bench.plot``): ``plots/<device>-<dtype>-rate.png`` and ``-time.png`` of the kernels, and
  ``plots/<device>-head-steps.png``.

The tables themselves, and the reading of a run's lines, are :mod:`bench.gpu.tables` (``gpu_check`` prints
them while it runs).

A file cut short by a killed run is read up to its last complete line. A dry run's file is refused unless
``--results`` names where its rows may go: its figures are not measurements.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from bench import harness
from bench.gpu import tables
from bench.gpu.tables import num
from bench.head_step import Point

PROG = "gpu_report"


class Parser(argparse.ArgumentParser):
    def error(self, message):
        sys.stderr.write(f"{PROG}: {message} (see --help)\n")
        raise SystemExit(2)


def _provenance(pre: dict) -> dict:
    fields = {"device": "gpu", "torch": "torch", "triton": "triton", "date": "date"}
    return {k: str(pre.get(v, "")) for k, v in fields.items()}


def csv_rows(records, pre: dict) -> int:
    """Queue the run's rows in ``bench.harness`` (written by ``harness.write_results``); how many."""
    prov = _provenance(pre)
    n = 0
    for r in records:
        if r.get("status") != "ok":
            continue
        dtype = r.get("dtype")
        if r.get("kind") == "timing" and r.get("what") == "copy":
            elements = int(num(r.get("bytes")) // 4)  # bf16 elements: bytes read + written over 2 x 2
            times = (num(r.get("ms")), num(r.get("p20")), num(r.get("p80")))
            harness.record(
                "copy", "torch", elements // 4096, 4096, 4096, 1, dtype, times, None, provenance=prov
            )
            n += 1
        elif r.get("kind") == "timing":
            shape = (r["batch"], r["in_features"], r["out_features"], 1)
            ours = (num(r["value"]), num(r.get("p20")), num(r.get("p80")))
            theirs = (num(r["baseline_ms"]), num(r.get("baseline_p20")), num(r.get("baseline_p80")))
            harness.record(r["what"], "triton", *shape, dtype, ours, None, provenance=prov)
            harness.record(r["what"], "cublas", *shape, dtype, theirs, None, provenance=prov)
            if r["what"] == "masked_forward":  # F.linear(x, W): the GEMM the percentages refer to
                harness.record("gemm", "torch", *shape, dtype, theirs, None, provenance=prov)
            n += 2 + (r["what"] == "masked_forward")
        elif r.get("kind") == "step":
            point = Point(dtype, r["batch"], r["in_features"], r["width"], r["depth"], r["out_features"])
            times = (num(r["value"]), num(r.get("p20")), num(r.get("p80")))
            flops = round(num(r["tflops"]) * num(r["value"]) * 1e9)
            sizes = (r["batch"], r["in_features"], r["out_features"], 1)
            harness.record("head_step", r["variant"], *sizes, dtype, times, None, file=harness.HEAD_CSV,
                           shape=point.shape, flops=flops, nbytes=r.get("min_bytes"),
                           provenance=prov)  # fmt: skip
            n += 1
    return n


def main(argv=None) -> int:
    ap = Parser(prog="python -m bench.gpu_report", description=__doc__.split("\n\n")[0])
    ap.add_argument("jsonl", type=Path, help="the gpu_check.jsonl of a run")
    ap.add_argument(
        "--results", type=Path, default=None, help="folder of the CSV files (default bench/results)"
    )
    ap.add_argument("--no-plots", action="store_true", help="write no PNG files")
    args = ap.parse_args(argv)
    if not args.jsonl.is_file():
        sys.stderr.write(
            f"{PROG}: expected the gpu_check.jsonl of a run, got {str(args.jsonl)!r} (no such file)\n"
        )
        return 2
    records, bad = tables.read(args.jsonl)
    pre = tables.first(records, "preflight")
    if pre is None:
        sys.stderr.write(f"{PROG}: {args.jsonl} has no preflight line: expected a gpu_check JSONL\n")
        return 2
    if pre.get("dry_run") and args.results is None:
        sys.stderr.write(f"{PROG}: {args.jsonl} is a dry run's (its figures are not measurements): expected "
                         "--results DIR to say where its rows may go, got none\n")  # fmt: skip
        return 2
    results = args.results or harness.RESULTS
    from bench.plot import plot_heads, plot_ops, slug

    device = pre.get("gpu", "unknown")
    folder = results / "gpu"
    folder.mkdir(parents=True, exist_ok=True)
    md = folder / f"{slug(device)}.md"
    md.write_text(tables.markdown(records, bad, source=str(args.jsonl)) + "\n")
    copy = folder / f"{slug(device)}.jsonl"
    if copy.resolve() != args.jsonl.resolve():
        shutil.copyfile(args.jsonl, copy)
    print(md.read_text())
    written = [md, copy]
    if csv_rows(records, pre):
        written += harness.write_results(results)
    if not args.no_plots:
        try:
            plots = results / "plots"
            plots.mkdir(parents=True, exist_ok=True)
            rows = [r for r in harness.read_csv(results / harness.OPS_CSV) if r["device"] == device]
            for dtype in sorted({r["dtype"] for r in rows}):
                group = [r for r in rows if r["dtype"] == dtype]
                written += [plot_ops(group, device, dtype, metric, plots) for metric in ("rate", "time")]
            steps = [r for r in harness.read_csv(results / harness.HEAD_CSV) if r["device"] == device]
            head = plot_heads(steps, device, plots)
            written += [head] if head else []
        except ImportError as exc:  # matplotlib missing: the tables and CSV rows are written all the same
            print(f"{PROG}: no plots ({exc})")
    for path in written:
        print(f"{PROG}: wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
