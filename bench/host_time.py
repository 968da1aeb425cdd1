"""Host (Python) time of one training step's forward + backward, with every kernel launch stubbed out.

    python -m bench.host_time [--iters 2000] [--hidden 128 128] [--batch 64] [--splits N] [--threads 1]

On a GPU a head-sized step is short enough that the Python between launches can be the step's length: this
measures that Python alone, on CPU, for the fused path (three launches a step) and the per-layer path (one
launch a layer forward, two backward, each behind its own checks). Launches are replaced by no-ops (the kernels'
outputs stay uninitialised), so only argument handling, validation, allocation and autograd are timed.
Triton's interpreter is switched on only so that the "triton" backend accepts CPU tensors; nothing is
interpreted. Figures are medians of several repeats; this machine's timing noise applies (10-20 %).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel module is imported

import torch  # noqa: E402

from glai.nn import GLAIMLP  # noqa: E402


def _stub_launches(splits: int | None = None) -> None:
    """No-op launches, and the fused path's sm_90 configuration instead of the interpreter's (whose small
    chunks would add staging buffers a GPU step does not allocate). ``splits``: the weight gradient's batch
    splits (on CPU the default is one, which needs no split-combine workspace; a GPU splits a long batch)."""
    from glai_kernels import fused_config, fused_launch, per_layer_launch

    fused_launch.launch_fused = lambda *args, **kwargs: None
    per_layer_launch.launch_plan = lambda *args, **kwargs: None
    config = fused_config.fused_defaults(90)
    if splits is not None:
        config["weights"]["SPLITS"] = splits
    fused_launch._CONFIGS[torch.device("cpu")] = config


def _median_us(step, iters: int, repeats: int = 5) -> tuple[float, float]:
    """Median wall and CPU (process) time of ``step`` in microseconds; on a shared machine the CPU time is the
    steadier estimate of the Python's own cost."""
    for _ in range(max(10, iters // 10)):  # warm-up: signatures validated, plans and allocator warm
        step()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(iters):
            step()
        wall.append((time.perf_counter() - start) / iters)
        cpu.append((time.process_time() - start_cpu) / iters)
    return statistics.median(wall) * 1e6, statistics.median(cpu) * 1e6


def measure(
    hidden, iters: int, batch: int = 64, in_f: int = 64, out_f: int = 10, splits: int | None = None
) -> list[tuple[str, tuple]]:
    _stub_launches(splits)
    rows = []
    x = torch.randn(batch, in_f)
    dy = torch.randn(batch, out_f)
    for phase in ("structural", "quantitative, patterns given", "quantitative, patterns from the structure"):
        for fused in (True, False):
            if phase == "structural" and not fused:
                continue  # nn.Linear + ReLU on CPU: its host time cannot be told from its compute here
            model = GLAIMLP(in_f, list(hidden), out_f, backend="triton", fused=fused)
            if phase != "structural":
                model.freeze()
            params = list(model.parameters())
            patterns = model.patterns(x) if phase.endswith("given") else None

            def step(model=model, params=params, patterns=patterns):
                for p in params:
                    p.grad = None
                y = model(x) if patterns is None else model(x, patterns)
                y.backward(dy)

            rows.append((f"{phase:42s} {'fused' if fused else 'per-layer':9s}", _median_us(step, iters)))
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--hidden", type=int, nargs="+", default=[128, 128])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--splits", type=int, default=None, help="weight-gradient batch splits (default: 1)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        f"host time of one forward + backward, launches stubbed, hidden {args.hidden}, batch {args.batch}, "
        f"splits {args.splits or 1} (median us: wall, CPU)"
    )
    for name, (wall, cpu) in measure(args.hidden, args.iters, args.batch, splits=args.splits):
        print(f"  {name} {wall:8.1f} {cpu:8.1f}")


if __name__ == "__main__":
    main()
