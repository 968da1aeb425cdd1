"""Timing, the shape grids and the result files of the microbenchmarks.

Times: on CUDA, ``triton.testing.do_bench`` (device events, warm-up, the L2 cache flushed between calls) gives
the median and the 20th / 80th percentiles; on CPU, pytest-benchmark's pedantic rounds. Either way the calls
rotate through several input sets, so a small problem is not timed from caches warmed by its previous call.

Rates use the counts of :mod:`glai_kernels.costs`: TFLOP/s for the GEMM ops, GB/s for the memory-bound ones,
each also as a percentage of a rate measured in the same run on the same device (the best ``F.linear`` rate of
that dtype, the best copy rate). Rows go to ``bench/results/*.csv``; a row replaces an earlier one with the same
device, op, provider, shape and dtype.
"""

from __future__ import annotations

import csv
import datetime
import itertools
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from bench import head_step
from glai_kernels import costs

RESULTS = Path(__file__).resolve().parent / "results"
OPS_CSV = "microbench.csv"
MEMORY_CSV = "memory.csv"
HEAD_CSV = "head_steps.csv"  # training steps of a head, CPU benchmarks and GPU check alike
COLUMNS = (
    "op", "provider", "shape", "batch", "in_features", "out_features", "r", "dtype",
    "median", "p20", "p80", "unit", "tflops", "pct_gemm", "gbps", "pct_mem",
    "device", "torch", "triton", "date",
)  # fmt: skip
KEY = ("device", "op", "provider", "shape", "dtype")

# Shapes (batch, in_features, out_features), reductions and dtypes of each grid. The CPU grid is small enough
# for `make bench` to finish in about a minute on two cores; the GPU grids reach sizes where the GPU is busy.
GRIDS = {
    "cpu": {
        "shapes": [(256, 256, 256), (512, 512, 512), (1024, 1024, 1024)],
        "r": (1, 4),
        "dtypes": ("float32",),
    },
    "gpu": {
        "shapes": [(b, w, w) for b in (1024, 4096, 16384) for w in (1024, 4096)],
        "r": (1, 4),
        "dtypes": ("bfloat16", "float32"),
    },
    "quick": {"shapes": [(4096, 1024, 1024), (16384, 4096, 4096)], "r": (1, 4), "dtypes": ("bfloat16",)},
    # Head-sized training steps (bench/heads.py): every head of the grid of bench/head_step.py (the GPU check's
    # "full" grid); a copy of each dtype gives the memory rate of the same run.
    "head": {"shapes": [], "r": (1,), "dtypes": (), "heads": head_step.grid_points()},
}
_ROTATION_BYTES = {"cuda": 512 << 20, "cpu": 32 << 20}


def grid(name: str, device: torch.device) -> dict:
    """The shape grid ``name`` of :data:`GRIDS`; ``"auto"`` is the GPU grid on CUDA and the CPU grid elsewhere."""
    if name == "auto":
        name = "gpu" if device.type == "cuda" else "cpu"
    return GRIDS[name]


_CPU_SECONDS = 0.3  # measuring time per CPU benchmark, after warm-up

_rows: list[tuple[str, dict]] = []


def shape_key(batch: int, in_f: int, out_f: int, r: int) -> str:
    return f"B{batch}xI{in_f}xO{out_f}r{r}"


def cpu_name() -> str:
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    threads = torch.get_num_threads()
    return f"CPU {name} ({threads} thread{'s' if threads != 1 else ''})"


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def triton_version() -> str:
    try:
        import triton
    except Exception:
        return ""
    return triton.__version__


def input_sets(make, device: torch.device) -> list[tuple]:
    """Distinct argument tuples from ``make()``: as many as fit a budget (1 to 4), so the rotation touches more
    memory than the caches hold for small problems and does not run out of memory for large ones."""
    first = make()
    size = sum(a.numel() * a.element_size() for a in first if torch.is_tensor(a))
    count = max(1, min(4, _ROTATION_BYTES[device.type] // max(size, 1)))
    return [first] + [make() for _ in range(count - 1)]


def _quantiles_ms(seconds: list[float]) -> tuple[float, float, float]:
    if len(seconds) < 2:
        return (seconds[0] * 1e3,) * 3
    q = statistics.quantiles(seconds, n=10, method="inclusive")
    return statistics.median(seconds) * 1e3, q[1] * 1e3, q[7] * 1e3


def measure(benchmark, fn, sets: list[tuple], device: torch.device) -> tuple[float, float, float]:
    """``(median, p20, p80)`` in milliseconds of ``fn(*args)`` over the rotating ``sets``."""
    rotation = itertools.cycle(sets)
    if device.type == "cuda":
        from triton.testing import do_bench

        med, p20, p80 = do_bench(lambda: fn(*next(rotation)), warmup=25, rep=100, quantiles=[0.5, 0.2, 0.8])

        def synced(*args):  # pytest-benchmark's own table: wall time per call, launch overhead included
            fn(*args)
            torch.cuda.synchronize()

        benchmark.pedantic(synced, setup=lambda: (next(rotation), {}), rounds=10, warmup_rounds=1)
        return float(med), float(p20), float(p80)
    start = time.perf_counter()
    for args in sets:  # warm-up, and an estimate of the time of one call
        fn(*args)
    per_call = (time.perf_counter() - start) / len(sets)
    rounds = int(min(50, max(5, _CPU_SECONDS / max(per_call, 1e-6))))
    benchmark.pedantic(fn, setup=lambda: (next(rotation), {}), rounds=rounds, warmup_rounds=1)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        return _quantiles_ms(list(stats.stats.data))
    times = []  # --benchmark-disable: pytest-benchmark ran fn once and kept nothing, so time it here
    for _ in range(rounds):
        args = next(rotation)
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return _quantiles_ms(times)


def op_bytes(op: str, batch: int, in_f: int, out_f: int, r: int, dtype: str) -> int:
    """:func:`glai_kernels.costs.op_bytes` for elements of the dtype named ``dtype`` (a CSV column)."""
    return costs.op_bytes(op, batch, in_f, out_f, r, getattr(torch, dtype).itemsize)


def record(
    op, provider, batch, in_f, out_f, r, dtype: str, times, device, *, unit="ms", file=OPS_CSV,
    shape: str | None = None, flops: int | None = None, nbytes: int | None = None, provenance: dict | None = None,
) -> dict:  # fmt: skip
    """Keep one result row for the end of the session (``times`` = median, p20, p80 in ``unit``).

    ``shape``, ``flops`` and ``nbytes`` replace the shape key and the counts of :mod:`glai_kernels.costs` for a
    case those do not describe (a head's training step); ``provenance`` (``device``, ``torch``, ``triton``,
    ``date``) replaces this process's for a result measured elsewhere (``bench.gpu_report`` reading a GPU run
    back), and ``device`` is then unused."""
    med, p20, p80 = times
    if provenance is None:
        provenance = dict(
            device=device_name(device), torch=torch.__version__, triton=triton_version(),
            date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        )  # fmt: skip
    prov = {k: provenance[k] for k in ("device", "torch", "triton", "date")}
    row = dict(
        op=op, provider=provider, shape=shape or shape_key(batch, in_f, out_f, r), batch=batch,
        in_features=in_f,
        out_features=out_f, r=r, dtype=dtype, median=f"{med:.6g}", p20=f"{p20:.6g}", p80=f"{p80:.6g}", unit=unit,
        tflops="", pct_gemm="", gbps="", pct_mem="", **prov,
    )  # fmt: skip
    if unit == "ms":
        flops = costs.op_flops(op, batch, in_f, out_f, r) if flops is None else flops
        if flops:
            row["tflops"] = f"{flops / (med * 1e-3) / 1e12:.6g}"
        if nbytes is None and op in costs.MEMORY_OPS:
            nbytes = op_bytes(op, batch, in_f, out_f, r, dtype)
        if nbytes:
            row["gbps"] = f"{nbytes / (med * 1e-3) / 1e9:.6g}"
    _rows.append((file, row))
    return row


def _best(rows, device: str, field: str, op: str, dtype: str | None = None) -> float:
    return max(
        (
            float(r[field])
            for r in rows
            if r["device"] == device and r["op"] == op and r[field] and dtype in (None, r["dtype"])
        ),
        default=0.0,
    )


def _fill_percentages(rows: list[dict], refs: list[dict]) -> None:
    """``pct_gemm``: TFLOP/s over the best ``F.linear`` rate of the same device and dtype; ``pct_mem``: GB/s over
    the best copy rate of the device. Both references come from ``refs``, the rows of ``microbench.csv``
    (hence the latest run's)."""
    for row in rows:
        if row.get("tflops"):
            ref = _best(refs, row["device"], "tflops", "gemm", row["dtype"])
            row["pct_gemm"] = f"{100 * float(row['tflops']) / ref:.1f}" if ref else ""
        if row.get("gbps"):
            ref = _best(refs, row["device"], "gbps", "copy")
            row["pct_mem"] = f"{100 * float(row['gbps']) / ref:.1f}" if ref else ""


def read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [dict(row) for row in csv.DictReader(f)]


def write_results(folder: Path = RESULTS) -> list[Path]:
    """Merge this session's rows into the CSV files (same key: the new row wins), written atomically.
    ``microbench.csv`` first: the percentages of ``head_steps.csv`` refer to its copy and GEMM rates."""
    written = []
    for name in sorted({file for file, _ in _rows}, key=lambda n: (n != OPS_CSV, n)):
        path = folder / name
        merged = {tuple(r.get(k, "") for k in KEY): r for r in read_csv(path)}
        for file, row in _rows:
            if file == name:
                merged[tuple(row[k] for k in KEY)] = row
        rows = sorted(
            merged.values(), key=lambda r: (r["device"], r["op"], r["dtype"], r["provider"], _size(r))
        )
        if name in (OPS_CSV, HEAD_CSV):
            _fill_percentages(rows, rows if name == OPS_CSV else read_csv(folder / OPS_CSV))
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
        written.append(path)
    _rows.clear()
    return written


def _size(row) -> tuple:
    return tuple(int(row.get(k) or 0) for k in ("batch", "in_features", "out_features", "r"))
