"""The run, in order: correctness, determinism, kernel timings, step timings, compiled baselines last.

Sizes differ between the GPU and the dry run; the plan does not. The head grid of the training steps:

- ``full``: widths 32, 64, 128, 256 x depth 2, 3 x in_features 64, 512 x out_features 10, 128 x batch 1024,
  16384, 131072 in bf16 (96 heads), plus one fp16 and one TF32 head; every variant at every head. Its
  compiled baselines alone are 196 ``torch.compile`` builds, half an hour (``--count-compiles --grid full``).
- ``subset`` (the default): the eager and GLAI variants at every width and batch for one input and output
  size (in 512, out 10, depth 2: 12 heads), the depth-3, in-64 and out-128 corners at width 128 and batch
  16384 (3 heads), and the fp16 and TF32 heads; the compiled baselines at three heads only (width 32 and 256
  at batch 16384, width 128 at batch 131072). CONTRIBUTING.md gives the compile-count estimate behind it.
- ``dry``: three tiny heads (bf16, fp16, TF32) with every variant, for ``--dry-run``.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.gpu.fused import DRY_HEADS, DRY_STEP_HEAD, GPU_HEADS, GPU_STEP_HEAD
from bench.gpu.journal import Section

# Names known before torch is imported: flags are checked in a fraction of a second.
SECTIONS = ("correctness", "determinism", "kernels", "steps", "compiled")
GRIDS = ("subset", "full")


@dataclass(frozen=True)
class Sizes:
    check_shapes: (
        tuple  # (batch, in, out, reduction): one aligned shape, one with nothing a multiple of a tile
    )
    narrow: int  # units of a narrow (output) layer
    kernel_shapes: tuple  # (batch, in, out) of the kernel timings
    copy_elements: int  # bf16 elements of the memory-rate copy
    model: tuple  # (width, batch) of the whole-model checks
    fused_heads: tuple  # (batch, in, width, depth, out) of the fused path's correctness checks
    fused_batches: tuple  # (determinism batch: many weight-gradient splits, batch of the graph/sync checks)
    fused_step_head: tuple  # (in, width, out) of the fused determinism, no-sync, graph and compile checks


GPU = Sizes(
    check_shapes=((8192, 4096, 4096, 1), (3001, 1000, 1500, 4)),
    narrow=10,
    kernel_shapes=((8192, 4096, 4096), (8192, 1024, 1024)),
    copy_elements=1 << 29,  # 1 GiB read and 1 GiB written: far past the 60 MB L2
    model=(1024, 4096),
    fused_heads=GPU_HEADS,
    fused_batches=(131072, 4096),
    fused_step_head=GPU_STEP_HEAD,
)
DRY = Sizes(
    check_shapes=((33, 48, 48, 1), (17, 40, 36, 4)),
    narrow=10,
    kernel_shapes=((17, 32, 32), (9, 16, 16)),
    copy_elements=1 << 16,
    model=(32, 9),
    fused_heads=DRY_HEADS,
    fused_batches=(40, 9),
    fused_step_head=DRY_STEP_HEAD,
)
KERNEL_DTYPES = ("bfloat16", "float16", "tf32")


def head_points(grid: str) -> list:
    from bench.gpu.steps import Point

    if grid == "dry":
        return [
            Point("bfloat16", 19, 24, 16, 2, 10),
            Point("float16", 19, 24, 16, 3, 10),
            Point("tf32", 19, 24, 16, 2, 10),
        ]
    odd = [Point("float16", 16384, 512, 128, 2, 10), Point("tf32", 16384, 512, 128, 2, 10)]
    if grid == "full":
        return [
            Point("bfloat16", b, i, w, d, o)
            for w in (32, 64, 128, 256)
            for d in (2, 3)
            for i in (64, 512)
            for o in (10, 128)
            for b in (1024, 16384, 131072)
        ] + odd
    if grid != "subset":
        raise ValueError(f"unknown head grid {grid!r}; expected one of {GRIDS}")
    corners = [
        Point("bfloat16", 16384, 512, 128, 3, 10),
        Point("bfloat16", 16384, 64, 128, 2, 10),
        Point("bfloat16", 16384, 512, 128, 2, 128),
    ]
    return _main_subset() + corners + odd


def _main_subset() -> list:
    from bench.gpu.steps import Point

    return [Point("bfloat16", b, 512, w, 2, 10) for w in (32, 64, 128, 256) for b in (1024, 16384, 131072)]


# At the subset's corner, fp16 and TF32 heads, the variants that answer what those heads ask (does depth, a
# narrow input, a wide output or another dtype change the ratios?). Patterns from the structure, which add a
# forward specialisation each, are timed at the main heads only: compile time is what bounds the subset.
CORNER_VARIANTS = ("eager", "q-cache", "struct", "f-struct", "f-qcache", "eager2")


def variants_at(point, grid: str, variants) -> list:
    """The eager variants timed at ``point`` of ``grid``."""
    if grid != "subset" or point in _main_subset():
        return list(variants)
    return [v for v in variants if v.short in CORNER_VARIANTS]


def compiled_points(grid: str) -> list:
    from bench.gpu.steps import Point

    if grid == "full":
        return head_points("full")
    if grid == "dry":
        return head_points("dry")
    return [
        Point("bfloat16", 16384, 512, 32, 2, 10),
        Point("bfloat16", 16384, 512, 256, 2, 10),
        Point("bfloat16", 131072, 512, 128, 2, 10),
    ]


def build(target, ops, ref, sizes: Sizes, grid: str, state: dict, only=SECTIONS, no_compile: bool = False):
    """The sections to run, in order. ``only``: the section names kept; ``no_compile``: the compiled section's
    cases are kept in the plan but recorded as skipped."""
    from bench.gpu import fused, kernels, steps

    eager = [v for v in steps.VARIANTS if not v.compile]
    compiled = [v for v in steps.VARIANTS if v.compile]
    width, batch = sizes.model
    make = {
        "correctness": lambda: (
            kernels.correctness_cases(target, ops, ref, sizes.check_shapes, sizes.narrow)
            + fused.correctness_cases(target, sizes.fused_heads)
        ),
        "determinism": lambda: (
            kernels.determinism_cases(target, ops, sizes.check_shapes[0])
            + [steps.gradient_determinism_case(target, width, batch)]
            + [fused.determinism_case(target, sizes.fused_batches[0], sizes.fused_step_head)]
            + fused.no_sync_cases(target, sizes.fused_batches[1], sizes.fused_step_head)
            + [fused.graph_case(target, sizes.fused_batches[1], sizes.fused_step_head)]
        ),
        "kernels": lambda: (
            [kernels.memory_rate_case(target, sizes.copy_elements, state)]
            + kernels.timing_cases(target, ops, sizes.kernel_shapes, KERNEL_DTYPES)
        ),
        "steps": lambda: [
            steps.step_case(target, v, p, state)
            for p in head_points(grid)
            for v in variants_at(p, grid, eager)
        ],
        "compiled": lambda: (
            [steps.step_case(target, v, p, state) for p in compiled_points(grid) for v in compiled]
            + [steps.compiled_glai_case(target, width, batch)]
            + [fused.compiled_case(target, sizes.fused_batches[1], sizes.fused_step_head)]
        ),
    }
    sections = [Section(name, make[name]()) for name in SECTIONS if name in only]
    if no_compile:
        for section in sections:
            if section.name == "compiled":
                for case in section.cases:
                    case.unavailable = "--no-compile"
    return sections


def describe(sections) -> dict:
    """The plan line of the JSONL: every case id per section, so a report can say what a killed run missed."""
    return {"sections": [{"name": s.name, "cases": [c.id for c in s.cases]} for s in sections]}
