"""The run, in order of value: the headline first, then everything else.

1. ``default-path``: correctness of the default path (``GLAIMLP(..., fused=None)``: whatever the dispatcher
   picks) at the headline heads, in every dtype the dispatcher sends to the fused path: bf16 at every head,
   fp16 at the widest, IEEE fp32 at fp32's widest fused width (TF32 there and IEEE fp32 at the widest head
   open the ``correctness`` section: their compile time would push the headline past the first third);
2. ``headline``: the memory rate, then at three heads (narrow, medium, the widest fused width; batch 16384) one
   training step each of the eager MLP, the fused GLAI head, the compiled MLP (default and reduce-overhead) and
   the compiled GLAI head: the comparison a user asks about first;
3. ``headline-kernels``: the masked forward and both backward kernels against cuBLAS at 8192 x 4096 x 4096,
   bf16;
4. then ``correctness``, ``determinism``, ``kernels``, ``steps``, ``compiled``: everything else, each case
   that an earlier section ran already left out.

``--plan`` prints this order with each case's estimated start (``bench/gpu/count.py``'s per-unit times); a
test holds every headline case to the first third of the default budget. Sizes differ between the GPU and the
dry run; the plan does not. The heads of the training steps, all from the grid of ``bench/head_step.py``:

- ``full``: that whole grid (96 bf16 heads, plus one fp16 and one TF32 head); every variant at every head. Its
  compiled baselines alone are about 300 ``torch.compile`` builds, most of an hour (``--count-compiles --grid
  full``).
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
from bench.head_step import OTHER_DTYPES, VARIANTS, Point, grid_points

SECTIONS = ("default-path", "headline", "headline-kernels", "correctness", "determinism", "kernels", "steps",
            "compiled")  # fmt: skip
HEADLINE_SECTIONS = SECTIONS[:3]
GRIDS = ("subset", "full")

# The deadline of the documented GPU command: a lent machine's call lasts at most 600 s, and its files must
# still come back after the run.
DEFAULT_DEADLINE_S = 540.0
TAIL_S = 60.0  # the last case started within the budget has this long (less the watchdog's margin) to end
PREFLIGHT_S = 10.0  # estimated: imports, CUDA start-up, the one-element kernel (--plan counts from its end)


def tail_s(deadline_s: float) -> float:
    return min(TAIL_S, deadline_s / 4)


def default_budget(deadline_s: float, preflight_s: float) -> float:
    """Seconds after the preflight in which a case may start: the deadline less the preflight and the tail."""
    return max(0.0, deadline_s - preflight_s - tail_s(deadline_s))


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
    headline: (
        tuple  # (batch, in, (narrow, medium, widest) widths, depth, out); None: headline.widest_fused_width
    )
    alternating: tuple  # (two batches with different weight-gradient split counts, steps alternating them)


GPU = Sizes(
    check_shapes=((8192, 4096, 4096, 1), (3001, 1000, 1500, 4)),
    narrow=10,
    kernel_shapes=((8192, 4096, 4096), (8192, 1024, 1024)),
    copy_elements=1 << 29,  # 1 GiB read and 1 GiB written: far past the 60 MB L2
    model=(1024, 4096),
    fused_heads=GPU_HEADS,
    fused_batches=(131072, 4096),
    fused_step_head=GPU_STEP_HEAD,
    headline=(16384, 512, (64, 256, None), 2, 10),
    alternating=((4096, 2048), 20),  # 8 and 4 splits of the first layer's weight gradient on 132 SMs
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
    headline=(19, 24, (8, 16, 32), 2, 10),
    alternating=((40, 9), 4),  # the interpreter splits nothing: the logic only, in fewer steps
)
KERNEL_DTYPES = ("bfloat16", "float16", "tf32")


def head_points(grid: str) -> list:
    if grid == "dry":
        return [
            Point("bfloat16", 19, 24, 16, 2, 10),
            Point("float16", 19, 24, 16, 3, 10),
            Point("tf32", 19, 24, 16, 2, 10),
        ]
    if grid == "full":
        return grid_points()
    if grid != "subset":
        raise ValueError(f"unknown head grid {grid!r}; expected one of {GRIDS}")
    corners = [
        Point("bfloat16", 16384, 512, 128, 3, 10),
        Point("bfloat16", 16384, 64, 128, 2, 10),
        Point("bfloat16", 16384, 512, 128, 2, 128),
    ]
    return _main_subset() + corners + list(OTHER_DTYPES)


def _main_subset() -> list:
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
    """The sections to run, in order; a case that an earlier section holds already is left out of the later
    one. ``only``: the section names kept; ``no_compile``: the cases that compile with ``torch.compile`` are
    kept in the plan but recorded as skipped."""
    from bench.gpu import fused, headline, kernels, steps

    eager = [v for v in VARIANTS if not v.compile]
    compiled = [v for v in VARIANTS if v.compile]
    width, batch = sizes.model
    make = {
        "default-path": lambda: headline.default_path_cases(target, sizes),
        "headline": lambda: headline.step_cases(target, sizes, state),
        "headline-kernels": lambda: headline.kernel_cases(target, ops, sizes),
        "correctness": lambda: (
            headline.default_path_cases(target, sizes, first=False)
            + kernels.correctness_cases(target, ops, ref, sizes.check_shapes, sizes.narrow)
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
            + [fused.alternating_case(target, *sizes.alternating, sizes.fused_step_head)]
        ),
    }
    sections, seen = [], set()
    for name in SECTIONS:
        if name not in only:
            continue
        cases = [c for c in make[name]() if c.id not in seen]
        seen.update(c.id for c in cases)
        sections.append(Section(name, cases))
    if no_compile:
        for section in sections:
            for case in section.cases:
                if section.name == "compiled" or "torch.compile" in case.base.get("what", ""):
                    case.unavailable = "--no-compile"
    return sections


def describe(sections) -> dict:
    """The plan line of the JSONL: every case id per section, so a report can say what a killed run missed."""
    return {"sections": [{"name": s.name, "cases": [c.id for c in s.cases]} for s in sections]}
