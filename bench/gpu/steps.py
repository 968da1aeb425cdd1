"""Training steps of a classification head: the plain MLP (eager and compiled) against the GLAI variants.

A step is the whole step a user runs: ``zero_grad``, forward, cross-entropy, backward, ``Adam(foreach=True)``
(the same optimizer for every variant). A variant is one entry of :data:`VARIANTS`; an entry that needs a
keyword ``GLAIMLP`` does not take (the fused head path's ``fused=``) is recorded as skipped, never run.

Bytes: ``min_bytes`` is the least a step can move through device memory whatever the implementation: the
input and the labels read once, every parameter and both Adam moments read and written once, plus what the
variant needs besides (the cached pattern words, or the frozen structure's weights). Activations and gradients
are not counted: a fused step could keep them on chip. ``floor_ms`` is that over the copy rate measured in
the same run; ``pct_of_floor`` how close the step comes to it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.gpu import configs
from bench.gpu.journal import Case
from bench.gpu.kernels import DTYPES, precision


@dataclass(frozen=True)
class Variant:
    """One way to run a training step. ``model``: "mlp" or "glai"; GLAI: ``phase`` "structural" or
    "quantitative", ``patterns`` "cached" (computed once, passed in) or "structure" (each step), ``fused``
    False for the per-layer kernels and True for the fused head path; ``compile``: a torch.compile mode."""

    name: str  # as recorded in the JSONL
    short: str  # a table column and a CSV provider
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
        return f"B{self.batch} {self.in_f}-{self.width}x{self.depth}-{self.out_f}"


def unavailable(variant: Variant) -> str | None:
    """Why the variant cannot run with this GLAIMLP, or None. Decided from the signature alone."""
    if variant.fused:
        from glai.nn import GLAIMLP

        if "fused" not in inspect.signature(GLAIMLP).parameters:
            return "unavailable: GLAIMLP takes no fused= keyword (no fused head path in this checkout)"
    return None


def _glai_kwargs(variant: Variant) -> dict:
    from glai.nn import GLAIMLP

    if "fused" in inspect.signature(GLAIMLP).parameters:
        return {"fused": bool(variant.fused)}
    return {}


def mlp(widths, device, dtype) -> torch.nn.Sequential:
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(torch.nn.Linear(a, b, device=device, dtype=dtype))
        if i < len(widths) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def min_bytes(point: Point, variant: Variant) -> int:
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


def build(target, variant: Variant, point: Point, seed: int = 0):
    """``(step, model)``: one training step of ``variant`` at ``point``, ready to call."""
    dtype, dev = DTYPES[point.dtype], target.device
    gen = target.generator(seed)
    x = target.randn(point.batch, point.in_f, dtype=dtype, gen=gen)
    y = target.randint(point.out_f, point.batch, gen=gen)
    torch.manual_seed(seed)
    if variant.model == "mlp":
        model = mlp(point.widths, dev, dtype)
    else:
        from glai.nn import GLAIMLP

        model = GLAIMLP(point.in_f, point.width, point.out_f, depth=point.depth, backend=target.backend,
                        device=dev, dtype=dtype, **_glai_kwargs(variant))  # fmt: skip
        if variant.phase == "quantitative":
            model.freeze()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=True)
    cached = model.patterns(x) if variant.patterns == "cached" else None

    def loss(a, b):
        return F.cross_entropy(model(a) if cached is None else model(a, cached), b)

    if variant.compile:
        loss = target.compile(
            loss, variant.compile, key=(variant.model, point.widths, point.dtype, point.batch)
        )
    graphs = variant.compile == "reduce-overhead" and target.kind == "cuda"

    def step():
        if graphs:  # a new step: CUDA-graph outputs of the previous one may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        opt.zero_grad(set_to_none=True)
        loss(x, y).backward()
        opt.step()

    return step, model


def step_case(target, variant: Variant, point: Point, state: dict) -> Case:
    from glai_kernels import costs

    def measure(emit):
        with precision(point.dtype):
            try:
                with configs.recording() as seen:
                    step, _ = build(target, variant, point)
                    first = target.first_call(step)
            except ValueError as exc:
                if not variant.fused:
                    raise
                # fused=True names the limit a shape exceeds: not applicable here, not a failure
                emit("step", ok=None, status="skipped", error=f"not applicable: {exc}")
                return
            for _ in range(target.step_warmup - 1):
                step()
            target.sync()
            ms = target.time_loop(step)
        nbytes = min_bytes(point, variant)
        gbps = state.get("memory_gbps")
        floor = nbytes / (gbps * 1e6) if gbps else None
        flops = costs.train_step_flops(point.batch, point.widths)
        config, source = configs.summary(seen)
        emit("step", value=ms[0], unit="ms", p20=ms[1], p80=ms[2], first_call_s=first,
             tflops=flops / ms[0] / 1e9, min_bytes=nbytes, floor_ms=floor,
             pct_of_floor=100.0 * floor / ms[0] if floor else None, variant=variant.short,
             compile=variant.compile, compile_backend=target.compile_backend if variant.compile else None,
             batch=point.batch, in_features=point.in_f, width=point.width, depth=point.depth,
             out_features=point.out_f, config=config, config_source=source)  # fmt: skip

    def run(emit):
        try:
            measure(emit)
        finally:
            if variant.compile and target.kind != "replay":
                torch._dynamo.reset()  # each head compiles afresh; no recompile limit is ever reached
            target.release()

    base = {"what": variant.name, "shape": point.label, "dtype": point.dtype}
    return Case(f"step {variant.short} {point.dtype} {point.label}", run, base, unavailable(variant))


def gradient_determinism_case(target, width: int, batch: int) -> Case:
    """A whole GLAI stack's backward (bf16, per-layer kernels) twice on the same batch: bit-identical
    gradients."""

    def run(emit):
        point = Point("bfloat16", batch, width, width, 2, width)
        variant = next(v for v in VARIANTS if v.patterns == "structure" and v.fused is False)
        with configs.recording() as seen:
            _, model = build(target, variant, point)
            x = target.randn(batch, width, dtype=torch.bfloat16, gen=target.generator(3))
            y = target.randn(batch, width, dtype=torch.bfloat16, gen=target.generator(4))
            grads = []
            for _ in range(2):
                model.zero_grad(set_to_none=True)
                F.mse_loss(model(x), y).backward()
                grads.append([p.grad.clone() for p in model.parameters()])
        same = all(target.equal(a, b) for a, b in zip(*grads))
        config, source = configs.summary(seen)
        emit(ok=same, value=float(same), unit="bit-identical", config=config, config_source=source)

    shape = Point("bfloat16", batch, width, width, 2, width).label
    base = {"what": "glai training-step gradients", "shape": shape, "dtype": "bfloat16"}
    return Case(f"determinism glai step gradients bfloat16 {shape}", run, base)


def compiled_glai_case(target, width: int, batch: int) -> Case:
    """``torch.compile`` of a frozen GLAIMLP on the Triton backend (fp32, every kernel an opaque custom op)
    against the same model eager: outputs and gradients."""

    def run(emit):
        torch.manual_seed(0)
        from glai.nn import GLAIMLP

        model = GLAIMLP(width, [width, width], width, backend=target.backend, device=target.device,
                        dtype=torch.float32).freeze()  # fmt: skip
        x = target.randn(batch, width, dtype=torch.float32, gen=target.generator(1))
        y = target.randn(batch, width, dtype=torch.float32, gen=target.generator(2))
        key = ("glai", (width,) * 4, "float32", batch)
        compiled = target.compile(model, "default", key=key, fullgraph=True)
        results = []
        try:
            with configs.recording() as seen:
                for m in (model, compiled):
                    model.zero_grad(set_to_none=True)
                    out = m(x)
                    F.mse_loss(out, y).backward()
                    results.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
        finally:
            if target.kind != "replay":
                torch._dynamo.reset()
        (y0, g0), (y1, g1) = results
        config, source = configs.summary(seen)
        err_y = target.rel_err(y1, y0)
        err_g = max(target.rel_err(a, b) for a, b in zip(g1, g0))
        extra = {"unit": "rel_err", "tol": 1e-5, "compile_backend": target.compile_backend, "config": config,
                 "config_source": source}  # fmt: skip
        emit(what="torch.compile(GLAIMLP) output vs eager", ok=err_y <= 1e-5, value=err_y, **extra)
        emit(what="torch.compile(GLAIMLP) gradients vs eager", ok=err_g <= 1e-5, value=err_g, **extra)

    shape = Point("float32", batch, width, width, 2, width).label
    base = {"what": "torch.compile(GLAIMLP)", "shape": shape, "dtype": "float32"}
    return Case(f"compiled glai vs eager float32 {shape}", run, base)
