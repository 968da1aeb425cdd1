"""The head grid (``--glai-grid head``): a full training step per variant, and the copy rate it is compared
with (see ``bench/heads.py``)."""

import torch

from bench import harness, heads
from bench.dtypes import precision


def test_head_copy_rate(benchmark, head_copy, device):
    benchmark.group = f"head copy {head_copy}"
    dtype = getattr(torch, head_copy)
    n, width = heads.COPY_BATCH, heads.COPY_WIDTH

    def make():
        return torch.randn(n, width, device=device, dtype=dtype), torch.empty(
            n, width, device=device, dtype=dtype
        )

    times = harness.measure(benchmark, lambda x, y: y.copy_(x), [make(), make()], device)
    harness.record("copy", "torch", n, width, width, 1, head_copy, times, device)


def test_head_step(benchmark, head_case, device):
    case = head_case
    benchmark.group = f"head step {case.point.shape} {case.point.dtype}"
    with precision(case.point.dtype):
        step, make = heads.build(case, device)
        times = harness.measure(benchmark, step, harness.input_sets(make, device), device)
    row = heads.record(case, times, device)
    benchmark.extra_info.update({k: row[k] for k in ("median", "tflops", "gbps")})
