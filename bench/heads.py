"""The head grid of the CPU benchmarks (``--glai-grid head``): the head step of :mod:`bench.head_step`, timed by
pytest-benchmark or ``bench.run`` through :mod:`bench.harness`.

Each case is one variant of :data:`bench.head_step.VARIANTS` at one point of the grid; the step, optimizer
(Adam), byte floor and FLOPs are :mod:`bench.head_step`'s, the same as the GPU check's. Rows go to
``head_steps.csv`` (op ``head_step``, the variant's short name as provider), the file the GPU report writes its
steps to; ``gbps`` is the byte floor over the measured time and ``pct_mem`` compares it with the copy rate of
the same run (a ``copy`` row per dtype is part of the grid). Calls rotate through several input sets, each with
its own cached patterns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench import harness, head_step
from bench.dtypes import DTYPES
from glai_kernels import backend

CPU_MAX_BATCH = 1024
COPY_BATCH, COPY_WIDTH = 131072, 512  # the copy that gives each dtype's memory rate: 128 MiB in bf16


@dataclass(frozen=True)
class HeadCase:
    variant: head_step.Variant
    point: head_step.Point

    @property
    def id(self) -> str:
        return f"head-{self.variant.short}-{self.point.shape}-{self.point.dtype}"


def head_cases(points) -> list[HeadCase]:
    """Every variant at every point (a grid's ``heads``)."""
    return [HeadCase(v, p) for p in points for v in head_step.VARIANTS]


def copy_dtypes(points) -> list[str]:
    """The dtypes (as tensor dtypes: TF32 heads copy float32) whose copy rate the head grid measures."""
    return sorted({"float32" if p.dtype == "tf32" else p.dtype for p in points})


def skip_reason(case: HeadCase, device: torch.device) -> str | None:
    variant, point = case.variant, case.point
    if device.type != "cuda":
        if variant.model != "mlp" or variant.compile:
            return "fused, per-layer and compiled head steps are timed on CUDA only; no CUDA device here"
        if point.batch > CPU_MAX_BATCH:
            return f"on CPU the eager MLP head step runs up to batch {CPU_MAX_BATCH} only"
        return None
    if variant.model == "glai" and backend.per_layer_ops() is None:
        return f"the Triton kernels cannot be imported ({backend._triton_error})"
    return head_step.unavailable(variant)


def build(case: HeadCase, device: torch.device):
    """``(step, make)``: ``step(*make())`` runs one training step, optimizer included."""
    variant, point = case.variant, case.point
    net = head_step.model(variant, point, device)
    step = head_step.make_step(
        net, variant, compile=lambda fn, mode: torch.compile(fn, mode=None if mode == "default" else mode),
        graphs=variant.compile == "reduce-overhead" and device.type == "cuda",
    )  # fmt: skip

    def make():
        x = torch.randn(point.batch, point.in_f, device=device, dtype=DTYPES[point.dtype])
        y = torch.randint(point.out_f, (point.batch,), device=device)
        return x, y, head_step.patterns(net, variant, x)

    return step, make


def record(case: HeadCase, times, device: torch.device) -> dict:
    """Queue the row of a timed case (``times`` = median, p20, p80 in ms) for ``harness.write_results``."""
    p = case.point
    nbytes = head_step.min_bytes(p, case.variant)
    return harness.record(
        "head_step", case.variant.short, p.batch, p.in_f, p.out_f, 1, p.dtype, times, device,
        file=harness.HEAD_CSV, shape=p.shape, flops=head_step.flops(p), nbytes=nbytes,
    )  # fmt: skip
