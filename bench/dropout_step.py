"""What dropout costs a training step on CPU, and the fused step's launch count with dropout on.

    python -m bench.dropout_step [--iters 400] [--batch 256] [--hidden 128 128] [--threads 1]

Times a torch-backend training step (forward, backward, SGD) of ``GLAIMLP(dropout=0.1)`` against the same
model with ``dropout=0``, in each phase, interleaved (one step of each in turn, so drifts of a shared machine hit
both alike) and reported as medians with the spread of the p=0 steps timed twice (the noise of this run). Then
counts the kernel launches of one fused step with dropout on under Triton's interpreter. Prints one line per
figure and writes ``bench/results/dropout_step_cpu.json``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel module is imported: the launch count

import torch  # noqa: E402

from glai.nn import GLAIMLP  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "dropout_step_cpu.json"


def _step(model, opt, x, target):
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.mse_loss(model(x), target).backward()
    opt.step()


def step_times(phase: str, iters: int, batch: int, hidden, features: int = 64, out: int = 10) -> dict:
    """Median microseconds of a step with p=0.1 and with p=0 (twice: the second p=0 column is the noise)."""
    torch.manual_seed(0)
    models = {}
    for name, p in (("p0", 0.0), ("p0.1", 0.1), ("p0 again", 0.0)):
        m = GLAIMLP(features, hidden, out, dropout=p, backend="torch")
        models[name] = m.freeze() if phase == "quantitative" else m
    opts = {k: torch.optim.SGD(m.parameters(), lr=1e-3) for k, m in models.items()}
    x, target = torch.randn(batch, features), torch.randn(batch, out)
    times = collections.defaultdict(list)
    for i in range(iters + 20):
        for name, m in models.items():
            start = time.perf_counter()
            _step(m, opts[name], x, target)
            if i >= 20:  # warm-up
                times[name].append((time.perf_counter() - start) * 1e6)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "phase": phase, "batch": batch, "hidden": list(hidden), "in": features, "out": out, "iters": iters,
        "median_us": {k: round(v, 1) for k, v in med.items()},
        "dropout_cost": round(med["p0.1"] / med["p0"] - 1, 3),
        "noise_same_work": round(abs(med["p0 again"] / med["p0"] - 1), 3),
    }  # fmt: skip


def fused_launches(hidden) -> dict:
    """Kernel launches of one fused training step with dropout on (interpreter, CPU tensors), counted at the
    two host functions every launch goes through."""
    from glai_kernels import fused_launch, per_layer_launch

    counts = collections.Counter()
    originals = {(fused_launch, "launch_fused"): fused_launch.launch_fused,
                 (per_layer_launch, "launch_plan"): per_layer_launch.launch_plan}  # fmt: skip

    def counting(original):
        def launch(kernel, *args, **kwargs):
            counts[getattr(kernel, "__name__", None) or kernel.fn.__name__] += 1
            return original(kernel, *args, **kwargs)

        return launch

    for (module, name), original in originals.items():
        setattr(module, name, counting(original))
    try:
        result = {}
        for phase in ("structural", "quantitative"):
            model = GLAIMLP(13, hidden, 5, dropout=0.1, backend="triton", fused=True)
            if phase == "quantitative":
                model.freeze()
            counts.clear()
            model(torch.randn(33, 13)).square().sum().backward()
            result[phase] = dict(counts)
        return result
    finally:
        for (module, name), original in originals.items():
            setattr(module, name, original)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=400)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--hidden", type=int, nargs="+", default=[128, 128])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [
        step_times(phase, args.iters, args.batch, args.hidden) for phase in ("structural", "quantitative")
    ]
    for r in rows:
        print(json.dumps(r), flush=True)
    launches = fused_launches([17, 33])
    print(json.dumps({"fused_step_launches_with_dropout": launches}), flush=True)
    OUT.write_text(json.dumps({
        "device": "cpu", "machine": platform.processor() or platform.machine(), "threads": args.threads,
        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "steps": rows, "fused_step_launches_with_dropout": launches,
    }, indent=1) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
