"""A whole training step at the demo's size on CPU: the plain MLP against GLAI with cached patterns.

Batch 64, 40 -> 256 -> 256 -> 10 (MNIST-1D), cross-entropy, backward and an Adam step, as ``glai-demo`` and
``glai-experiment`` time it; GLAI runs the PyTorch backend with its patterns given (from a pattern cache), at
reductions 1, 2 and 4. The cases of one run share a group, so pytest-benchmark prints them side by side, and the
ratio of each GLAI median to the MLP's is written at the end of the run (and kept in ``extra_info``).

    pytest bench/test_cpu_step.py --benchmark-only --glai-threads 1

Timings of a shared machine drift between cases run one after the other, so ``test_demo_step_ratio`` also
measures the ratios interleaved: blocks of 40 steps of each model in turn, 25 times, each block's time divided by
the MLP block next to it. It reports the median ratio and its 10th-90th percentile spread, with and without the
optimizer step (thread CPU time, so that waiting for the CPU does not count).
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch
import torch.nn.functional as F

from glai.nn import GLAIMLP
from glai.train import plain_mlp

BATCH, WIDTHS = 64, (40, 256, 256, 10)
ROUNDS, SETS = 600, 8
_medians: dict[str, float] = {}


def _step_fn(kind: str, r: int, optimizer: bool = True):
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(BATCH, WIDTHS[0], generator=gen) for _ in range(SETS)]
    ys = [torch.randint(0, WIDTHS[-1], (BATCH,), generator=gen) for _ in range(SETS)]
    torch.manual_seed(0)
    if kind == "mlp":
        model = plain_mlp(WIDTHS[0], WIDTHS[1:-1], WIDTHS[-1])
        extra = [{} for _ in xs]
    else:
        model = GLAIMLP(WIDTHS[0], list(WIDTHS[1:-1]), WIDTHS[-1], reduction=r, backend="torch").freeze()
        extra = [{"patterns": model.patterns(x)} for x in xs]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    state = {"i": 0}

    def setup():
        i = state["i"] = (state["i"] + 1) % SETS
        return (xs[i], ys[i], extra[i]), {}

    def step(x, y, kwargs):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x, **kwargs), y).backward()
        if optimizer:
            opt.step()

    return step, setup


@pytest.fixture(scope="module")
def report(request):
    yield _medians
    mlp = _medians.get("mlp")
    if not mlp:
        return
    plugins = request.config.pluginmanager
    writer, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        writer.write_line("")
        for name, median in _medians.items():
            if name != "mlp":
                writer.write_line(
                    f"cpu step B{BATCH} {'-'.join(map(str, WIDTHS))}: {name} / mlp = {median / mlp:.3f} "
                    f"(medians {median * 1e6:.0f} us / {mlp * 1e6:.0f} us)"
                )


@pytest.mark.parametrize("kind, r", [("mlp", 1), ("glai", 1), ("glai", 2), ("glai", 4)])
def test_demo_step(benchmark, report, kind, r):
    benchmark.group = f"cpu train step B{BATCH} {'-'.join(map(str, WIDTHS))}"
    step, setup = _step_fn(kind, r)
    for _ in range(50):  # warm-up: allocator, Adam's state
        step(*setup()[0])
    benchmark.pedantic(step, setup=setup, rounds=ROUNDS, warmup_rounds=10)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # absent under --benchmark-disable
        name = "mlp" if kind == "mlp" else f"glai r={r}"
        report[name] = statistics.median(stats.stats.data)
        if "mlp" in report and name != "mlp":
            benchmark.extra_info["ratio_to_mlp"] = round(report[name] / report["mlp"], 3)


def _interleaved(optimizer: bool, blocks: int = 25, steps: int = 40) -> dict[str, list[float]]:
    """Per block, GLAI's time over the MLP's, for r = 1, 2, 4; blocks of each model in turn."""
    kinds = {"mlp": ("mlp", 1), "glai r=1": ("glai", 1), "glai r=2": ("glai", 2), "glai r=4": ("glai", 4)}
    fns = {name: _step_fn(*kind, optimizer=optimizer) for name, kind in kinds.items()}
    times = {name: [] for name in fns}
    for step, setup in fns.values():
        for _ in range(50):
            step(*setup()[0])
    for _ in range(blocks):
        for name, (step, setup) in fns.items():
            args = [setup()[0] for _ in range(steps)]
            start = time.thread_time()
            for a in args:
                step(*a)
            times[name].append(time.thread_time() - start)
    return {name: [t / m for t, m in zip(times[name], times["mlp"])] for name in fns if name != "mlp"}


def test_demo_step_ratio(benchmark, request):
    benchmark.group = f"cpu train step ratio B{BATCH} {'-'.join(map(str, WIDTHS))} (interleaved)"
    lines = []

    def measure():
        for optimizer in (True, False):
            label = "forward+backward+Adam" if optimizer else "forward+backward"
            for name, ratios in _interleaved(optimizer).items():
                q = statistics.quantiles(ratios, n=10, method="inclusive")
                med = statistics.median(ratios)
                benchmark.extra_info[f"{name} {label}"] = [round(med, 3), round(q[0], 3), round(q[8], 3)]
                lines.append(f"{label:22s} {name} / mlp = {med:.3f} (10-90%: {q[0]:.3f}-{q[8]:.3f})")

    benchmark.pedantic(measure, rounds=1, iterations=1)
    plugins = request.config.pluginmanager
    with plugins.get_plugin("capturemanager").global_and_fixture_disabled():
        writer = plugins.get_plugin("terminalreporter")
        writer.write_line("")
        for line in lines:
            writer.write_line(f"cpu step B{BATCH} interleaved, {line}")
