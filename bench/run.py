"""The benchmark grid without pytest: ``python -m bench.run [--grid quick] [-k text]``.

The same cases, timings and result files as ``pytest bench/ --benchmark-only``, for a machine that has torch and
Triton but no pytest-benchmark (a GPU box that reaches no package index). A stand-in for pytest-benchmark's
``pedantic`` times the CPU rounds; on CUDA the figures come from ``triton.testing.do_bench`` either way.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from bench import harness, providers
from bench.dtypes import precision


class Rounds:
    """The part of pytest-benchmark's fixture that ``harness.measure`` uses."""

    def __init__(self):
        self.extra_info, self.group, self.stats = {}, None, None

    def pedantic(self, target, args=(), kwargs=None, setup=None, rounds=1, warmup_rounds=0, iterations=1):
        data = []
        for i in range(warmup_rounds + rounds):
            a, k = setup() if setup else (args, kwargs or {})
            start = time.perf_counter()
            target(*a, **k)
            if i >= warmup_rounds:
                data.append(time.perf_counter() - start)
        self.stats = SimpleNamespace(stats=SimpleNamespace(data=data))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", choices=("auto", *harness.GRIDS), default="auto")
    ap.add_argument("-k", dest="select", default="", help="only cases whose id contains this text")
    ap.add_argument("--no-memory", action="store_true", help="skip the device-memory measurements")
    ap.add_argument("--results", default=str(harness.RESULTS), help="folder of the result CSV files")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    grid = harness.grid(args.grid, device)
    print(
        f"{harness.device_name(device)}: torch {torch.__version__}, triton {harness.triton_version() or '-'}"
    )
    skipped = {}
    for case in providers.cases(grid):
        if args.select not in case.id:
            continue
        reason = providers.skip_reason(case, device)
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        torch.manual_seed(0)
        fn, make = providers.build(case, device)
        times = harness.measure(Rounds(), fn, harness.input_sets(make, device), device)
        row = harness.record(
            case.op, case.provider, case.batch, case.in_f, case.out_f, case.r, case.dtype, times, device
        )
        rate = f"{row['tflops']} TFLOP/s" if row["tflops"] else (f"{row['gbps']} GB/s" if row["gbps"] else "")
        print(f"{case.id:60s} {times[0]:10.4f} ms  {rate}", flush=True)
        del fn, make
    if grid.get("heads"):
        from bench import heads

        for dtype in heads.copy_dtypes(grid["heads"]):
            dt = getattr(torch, dtype)
            sets = [
                (
                    torch.randn(heads.COPY_BATCH, heads.COPY_WIDTH, device=device, dtype=dt),
                    torch.empty(heads.COPY_BATCH, heads.COPY_WIDTH, device=device, dtype=dt),
                )
                for _ in range(2)
            ]
            times = harness.measure(Rounds(), lambda x, y: y.copy_(x), sets, device)
            row = harness.record(
                "copy", "torch", heads.COPY_BATCH, heads.COPY_WIDTH, heads.COPY_WIDTH, 1, dtype, times, device
            )
            print(f"head copy {dtype:49s} {times[0]:10.4f} ms  {row['gbps']} GB/s", flush=True)
        for case in heads.head_cases(grid["heads"]):
            if args.select not in case.id:
                continue
            reason = heads.skip_reason(case, device)
            if reason:
                skipped[reason] = skipped.get(reason, 0) + 1
                continue
            torch.manual_seed(0)
            with precision(case.point.dtype):
                step, make = heads.build(case, device)
                times = harness.measure(Rounds(), step, harness.input_sets(make, device), device)
            row = heads.record(case, times, device)
            print(f"{case.id:60s} {times[0]:10.4f} ms  {row['gbps']} GB/s", flush=True)
    if device.type == "cuda" and not args.no_memory:
        for case in providers.memory_cases(grid):
            if args.select in case.id:
                name, saved, peak, _ = providers.step_memory(case, device)
                shape = (case.batch, case.in_f, case.out_f, case.r, case.dtype)
                for op, value in (("train_step_saved", saved), ("train_step_peak", peak)):
                    harness.record(
                        op, name, *shape, (value,) * 3, device, unit="MiB", file=harness.MEMORY_CSV
                    )
                print(f"{case.id:60s} saved {saved:9.1f} MiB  peak {peak:9.1f} MiB", flush=True)
                torch.cuda.empty_cache()
    for reason, count in skipped.items():
        print(f"skipped {count}: {reason}")
    for path in harness.write_results(Path(args.results)):
        print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
