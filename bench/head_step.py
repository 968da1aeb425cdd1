"""A training step of a classification head: the one definition the CPU benchmarks and the GPU check share.

The CPU benchmarks (``pytest bench/ --benchmark-only --glai-grid head``, ``python -m bench.run --grid head``,
through :mod:`bench.heads`) and the GPU check (``bench/gpu_check.py``, through :mod:`bench.gpu.steps`) time
the same step of the same variants at points of the same grid, and count its bytes and FLOPs alike, so a CPU
row and a GPU row of ``head_steps.csv`` differ only in the device.

**The step** is the whole step a user runs: ``zero_grad``, forward, cross-entropy against integer labels,
backward, optimizer step.

**The optimizer is Adam** (``foreach=True``, lr 1e-3) for every variant. A head is what users train with Adam
(or AdamW, which moves the same bytes), and the GPU check's headline is the figure users ask for first: a
step timed with SGD would flatter every variant alike and hide how much of a head's step the optimizer is.

**The byte floor** (:func:`min_bytes`) is the least a step can move through device memory whatever the
implementation: the input and the labels read once, every parameter and both Adam moments read and written
once, plus what the variant needs besides (the cached pattern words, or the frozen structure's weights).
Activations and gradients are not counted: a fused step could keep them on chip. A floor that counts what
one implementation happens to move (its activations, say) would rank that implementation, not the step; this
one holds for every variant, so ``floor / time`` (the CSV's ``pct_mem`` against the copy rate of the same run,
the GPU report's ``pct_of_floor``) says how close each comes to the same bound.

**Variants** (:data:`VARIANTS`): the plain MLP (eager, and under ``torch.compile``) and GLAI in either phase,
per-layer or on the fused head path, with patterns cached or recomputed from the structure. **Grid**
(:func:`grid_points`): widths 32, 64, 128, 256 x depth 2, 3 x in_features 64, 512 x out_features 10, 128 x batch
1024, 16384, 131072 in bf16 (96 heads), plus one fp16 and one TF32 head. The GPU check times a subset of it
within its deadline (``bench/gpu/plan.py``); the CPU benchmarks take the eager variants at its small batches.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.dtypes import DTYPES


@dataclass(frozen=True)
class Variant:
    """One way to run a training step. ``model``: "mlp" or "glai"; GLAI: ``phase`` "structural" or
    "quantitative", ``patterns`` "cached" (computed once, passed in) or "structure" (each step), ``fused``
    False for the per-layer kernels and True for the fused head path; ``compile``: a torch.compile mode."""

    name: str  # as recorded in the GPU check's JSONL
    short: str  # a table column, a CSV provider, part of a benchmark id
    model: str
    phase: str | None = None
    patterns: str | None = None
    fused: bool | None = None
    compile: str | None = None


# fmt: off
VARIANTS = (
    Variant("mlp eager", "eager", "mlp"),
    Variant("glai per-layer, quantitative, cached patterns", "q-cache", "glai", "quantitative", "cached",
            False),
    Variant("glai per-layer, quantitative, patterns from structure", "q-struct", "glai", "quantitative",
            "structure", False),
    # The structural phase without the fused path is the ReLU MLP S in PyTorch: the MLP step, plus the model.
    Variant("glai structural, not fused", "struct", "glai", "structural", None, False),
    Variant("glai fused, structural", "f-struct", "glai", "structural", None, True),
    Variant("glai fused, quantitative, cached patterns", "f-qcache", "glai", "quantitative", "cached", True),
    Variant("glai fused, quantitative, patterns from structure", "f-qstruct", "glai", "quantitative",
            "structure", True),
    # The eager MLP timed again after the others: the ratio of the two is the timing noise of that head.
    Variant("mlp eager, timed again", "eager2", "mlp"),
    Variant("mlp torch.compile default", "c-dflt", "mlp", compile="default"),
    Variant("mlp torch.compile reduce-overhead", "c-ro", "mlp", compile="reduce-overhead"),
    Variant("glai fused, quantitative, cached patterns, torch.compile default", "c-glai", "glai",
            "quantitative", "cached", True, compile="default"),
)
# fmt: on


@dataclass(frozen=True)
class Point:
    """A head ``in_f -> width x depth -> out_f`` at ``batch`` rows in ``dtype`` ("tf32": fp32 under TF32)."""

    dtype: str
    batch: int
    in_f: int
    width: int
    depth: int
    out_f: int

    @property
    def widths(self) -> tuple[int, ...]:
        return (self.in_f, *(self.width,) * self.depth, self.out_f)

    @property
    def label(self) -> str:
        """The head in tables and case ids of the GPU check."""
        return f"B{self.batch} {self.in_f}-{self.width}x{self.depth}-{self.out_f}"

    @property
    def shape(self) -> str:
        """The head as a CSV shape key and in benchmark ids (no spaces)."""
        return f"B{self.batch}xI{self.in_f}xW{self.width}x{self.depth}xO{self.out_f}"


# The grid's axes (bf16), and the heads of the other dtypes.
BATCHES = (1024, 16384, 131072)
IN_FEATURES = (64, 512)
WIDTHS = (32, 64, 128, 256)
DEPTHS = (2, 3)
OUT_FEATURES = (10, 128)
OTHER_DTYPES = (Point("float16", 16384, 512, 128, 2, 10), Point("tf32", 16384, 512, 128, 2, 10))


def grid_points() -> list[Point]:
    """Every head of the grid: the bf16 product of its axes, then :data:`OTHER_DTYPES`."""
    return [
        Point("bfloat16", b, i, w, d, o)
        for w in WIDTHS
        for d in DEPTHS
        for i in IN_FEATURES
        for o in OUT_FEATURES
        for b in BATCHES
    ] + list(OTHER_DTYPES)


def unavailable(variant: Variant) -> str | None:
    """Why the variant cannot run with this GLAIMLP, or None. Decided from the signature alone."""
    if variant.fused:
        from glai.nn import GLAIMLP

        if "fused" not in inspect.signature(GLAIMLP).parameters:
            return "unavailable: GLAIMLP takes no fused= keyword (no fused head path in this checkout)"
    return None


def mlp(widths, device, dtype) -> torch.nn.Sequential:
    """The plain ReLU MLP of ``widths``."""
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(torch.nn.Linear(a, b, device=device, dtype=dtype))
        if i < len(widths) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def model(variant: Variant, point: Point, device, backend: str | None = None) -> torch.nn.Module:
    """The model ``variant`` trains at ``point`` (a GLAIMLP frozen for the quantitative phase)."""
    dtype = DTYPES[point.dtype]
    if variant.model == "mlp":
        return mlp(point.widths, device, dtype)
    from glai.nn import GLAIMLP

    kwargs = {} if backend is None else {"backend": backend}
    if "fused" in inspect.signature(GLAIMLP).parameters:
        kwargs["fused"] = bool(variant.fused)
    net = GLAIMLP(
        point.in_f, point.width, point.out_f, depth=point.depth, device=device, dtype=dtype, **kwargs
    )
    return net.freeze() if variant.phase == "quantitative" else net


def optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-3, foreach=True)


def patterns(net, variant: Variant, x: torch.Tensor):
    """The patterns a ``cached`` variant passes in (computed once per input), else None."""
    return net.patterns(x) if variant.patterns == "cached" else None


def make_step(net, variant: Variant, compile=None, graphs: bool = False):
    """``step(x, y, cached)``: one training step of ``net`` (optimizer included) on inputs ``x``, labels ``y``
    and the patterns of :func:`patterns`. ``compile(fn, mode)`` compiles the loss of a compiled variant;
    ``graphs``: the compiled loss runs as CUDA graphs (``reduce-overhead`` on CUDA)."""
    opt = optimizer(net.parameters())

    def loss(a, b, cached):
        return F.cross_entropy(net(a) if cached is None else net(a, cached), b)

    if variant.compile:
        loss = compile(loss, variant.compile)

    def step(x, y, cached=None):
        if graphs:  # a new step: CUDA-graph outputs of the previous one may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        opt.zero_grad(set_to_none=True)
        loss(x, y, cached).backward()
        opt.step()

    return step


def min_bytes(point: Point, variant: Variant) -> int:
    """The byte floor of a step (see the module's docstring)."""
    from glai_kernels.layout import words_for

    size = DTYPES[point.dtype].itemsize
    layers = list(zip(point.widths[:-1], point.widths[1:]))
    params = sum(a * b + b for a, b in layers)
    total = point.batch * point.in_f * size + point.batch * 8 + 6 * params * size
    if variant.model == "glai" and variant.phase == "quantitative":
        if variant.patterns == "cached":
            total += point.batch * sum(words_for(point.width) for _ in range(point.depth)) * 4
        else:
            total += sum(a * b + b for a, b in layers[:-1]) * size
    return total


def flops(point: Point) -> int:
    """The nominal FLOPs of the MLP's step (forward and backward), the same for every variant."""
    from glai_kernels import costs

    return costs.train_step_flops(point.batch, point.widths)
