"""The GPU check's training-step cases: the head step of :mod:`bench.head_step` timed on the run's target.

The step, its variants, optimizer (Adam), byte floor and FLOPs are :mod:`bench.head_step`'s, shared with the
CPU benchmarks. A variant that needs a keyword ``GLAIMLP`` does not take (the fused head path's ``fused=``) is
recorded as skipped, never run. ``floor_ms`` is the step's byte floor over the copy rate measured in the same
run; ``pct_of_floor`` how close the step comes to it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench import head_step
from bench.dtypes import DTYPES, precision
from bench.gpu import configs
from bench.gpu.journal import Case
from bench.head_step import VARIANTS, Point, Variant


def build(target, variant: Variant, point: Point, seed: int = 0):
    """``(step, model)``: one training step of ``variant`` at ``point`` on ``target``, ready to call."""
    gen = target.generator(seed)
    x = target.randn(point.batch, point.in_f, dtype=DTYPES[point.dtype], gen=gen)
    y = target.randint(point.out_f, point.batch, gen=gen)
    torch.manual_seed(seed)
    model = head_step.model(variant, point, target.device, target.backend)
    cached = head_step.patterns(model, variant, x)
    key = (variant.model, point.widths, point.dtype, point.batch)
    run = head_step.make_step(
        model, variant, compile=lambda fn, mode: target.compile(fn, mode, key=key),
        graphs=variant.compile == "reduce-overhead" and target.kind == "cuda",
    )  # fmt: skip
    return (lambda: run(x, y, cached)), model


def step_case(target, variant: Variant, point: Point, state: dict) -> Case:
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
        nbytes = head_step.min_bytes(point, variant)
        gbps = state.get("memory_gbps")
        floor = nbytes / (gbps * 1e6) if gbps else None
        flops = head_step.flops(point)
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
    return Case(
        f"step {variant.short} {point.dtype} {point.label}", run, base, head_step.unavailable(variant)
    )


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
