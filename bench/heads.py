"""The head grid: a full training step of a head-sized MLP (forward, backward, optimizer) per variant.

Variants, all with the same optimizer (SGD with momentum, PyTorch's default implementation):

    glai_fused_structural     GLAIMLP in the structural phase on the fused path (relu as p z, patterns made)
    glai_fused_quantitative   frozen GLAIMLP on the fused path, patterns from the pattern cache
    glai_per_layer            the same frozen GLAIMLP on the per-layer kernels (fused=False)
    mlp_eager                 the plain ReLU MLP of the same widths, eager PyTorch
    mlp_compiled              that MLP under torch.compile (default mode)
    mlp_compiled_ro           that MLP under torch.compile(mode="reduce-overhead") (CUDA graphs)

``bytes`` is what an ideal fused step must move through device memory (see :func:`step_bytes`); the CSV row's
``gbps`` is that over the measured time, and ``pct_mem`` compares it with the copy rate measured in the same
run (a ``copy`` row per dtype is part of the grid). The dtype ``tf32`` is float32 with TF32 products allowed.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from glai_kernels import backend, costs
from glai_kernels.layout import words_for

VARIANTS = (
    "glai_fused_structural",
    "glai_fused_quantitative",
    "glai_per_layer",
    "mlp_eager",
    "mlp_compiled",
    "mlp_compiled_ro",
)
CPU_MAX_BATCH = 1024
NO_HEADS = {"batches": (), "in": (), "widths": (), "depths": (), "out": (), "dtype": "bfloat16", "extra": []}
COPY_BATCH, COPY_WIDTH = 131072, 512  # the copy that gives each dtype's memory rate: 128 MiB in bf16


@dataclass(frozen=True)
class HeadCase:
    variant: str
    batch: int
    in_f: int
    width: int
    depth: int
    out_f: int
    dtype: str  # "bfloat16", "float16" or "tf32"

    @property
    def shape(self) -> str:
        return f"B{self.batch}xI{self.in_f}xH{self.width}x{self.depth}xO{self.out_f}"

    @property
    def id(self) -> str:
        return f"head-{self.variant}-{self.shape}-{self.dtype}"

    @property
    def widths(self) -> tuple[int, ...]:
        return (self.in_f, *([self.width] * self.depth), self.out_f)


def head_cases(heads: dict) -> list[HeadCase]:
    """Every variant on the product of the grid's shapes in its main dtype, plus its extra (dtype, shape)s."""
    shapes = [
        (b, i, w, d, o, heads["dtype"])
        for b in heads["batches"]
        for i in heads["in"]
        for w in heads["widths"]
        for d in heads["depths"]
        for o in heads["out"]
    ] + [(b, i, w, d, o, dt) for dt, (b, i, w, d, o) in heads["extra"]]
    return [HeadCase(v, b, i, w, d, o, dt) for b, i, w, d, o, dt in shapes for v in VARIANTS]


def copy_dtypes(heads: dict) -> list[str]:
    """The dtypes (as tensor dtypes: TF32 cases copy float32) whose copy rate the head grid measures."""
    names = [heads["dtype"]] + [dt for dt, _ in heads["extra"]] if heads["batches"] or heads["extra"] else []
    return sorted({"float32" if n == "tf32" else n for n in names})


def skip_reason(case: HeadCase, device: torch.device) -> str | None:
    if device.type != "cuda":
        if case.variant != "mlp_eager":
            return "fused, per-layer and compiled head steps are timed on CUDA only; no CUDA device here"
        if case.batch > CPU_MAX_BATCH:
            return f"on CPU the eager MLP head step runs up to batch {CPU_MAX_BATCH} only"
        return None
    if case.variant.startswith("glai") and backend.per_layer_ops() is None:
        return f"the Triton kernels cannot be imported ({backend._triton_error})"
    return None


def _dtype(name: str) -> torch.dtype:
    return torch.float32 if name == "tf32" else getattr(torch, name)


@contextlib.contextmanager
def precision(name: str):
    """TF32 products for the ``tf32`` cases, IEEE fp32 restored afterwards."""
    if name != "tf32":
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def build(case: HeadCase, device: torch.device):
    """``(step, make)``: ``step(*make())`` runs one training step, optimizer included."""
    from bench.providers import plain_mlp
    from glai.nn import GLAIMLP

    dtype, widths = _dtype(case.dtype), case.widths
    patterns = False
    if case.variant.startswith("mlp"):
        model = plain_mlp(widths, device, dtype)
        mode = {"mlp_compiled": "default", "mlp_compiled_ro": "reduce-overhead"}.get(case.variant)
        forward = torch.compile(model, mode=mode) if mode else model
    else:
        fused = case.variant != "glai_per_layer"
        model = GLAIMLP(
            case.in_f, [case.width] * case.depth, case.out_f, fused=fused, device=device, dtype=dtype
        )
        if case.variant != "glai_fused_structural":
            model.freeze()
            patterns = True
        forward = model
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def make():
        x = torch.randn(case.batch, case.in_f, device=device, dtype=dtype)
        dy = torch.randn(case.batch, case.out_f, device=device, dtype=dtype)
        return (x, dy, *((model.patterns(x),) if patterns else ()))

    def step(x, dy, *cached):
        opt.zero_grad(set_to_none=True)
        y = forward(x, *cached)
        y.backward(dy)
        opt.step()

    return step, make


def step_bytes(case: HeadCase) -> int:
    """Bytes an ideal fused GLAI step reads and writes once each: forward reads ``x``, writes every hidden
    output, its pattern words and ``y``; the data chain reads ``dy`` and the words, writes every hidden
    gradient; the weight gradients read the gradients and the layer inputs; the optimizer reads and writes the
    weights, their gradients and momenta. Weights are re-read from L2, not counted again per row block."""
    item = _dtype(case.dtype).itemsize
    B, widths = case.batch, case.widths
    hidden = widths[1:-1]
    words = sum(words_for(n) for n in hidden) * 4 * B
    forward = B * (widths[0] + sum(hidden) + widths[-1]) * item + words
    data = B * (widths[-1] + sum(hidden)) * item + words
    weights = B * (sum(widths[1:]) + sum(widths[:-1])) * item
    params = sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
    return forward + data + weights + params * item * 5


def step_flops(case: HeadCase) -> int:
    return costs.train_step_flops(case.batch, case.widths)
