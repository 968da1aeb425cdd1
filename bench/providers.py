"""What each benchmark times: every op under each provider, on random inputs of one grid shape.

Providers:
    triton             the fused kernels of ``glai_kernels.per_layer_ops`` (CUDA only), configs from ``config_for``
    torch              the PyTorch reference of the same op (``glai_kernels.reference``)
    baseline           what a user would run instead: ``F.linear`` + ReLU, its autograd backward, a plain MLP step
    baseline_compiled  the plain MLP training step under ``torch.compile`` (CUDA only)
    *_cached           a GLAI training step with patterns from the pattern cache (no structural pass)

A layer is ``in_features -> out_features`` with ``batch`` rows; reduction ``r`` narrows the structural layer to
``out_features / r`` units. ``train_step`` runs the stack of ``costs.mlp_widths``: forward and backward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench import head_step
from glai_kernels import backend, costs, reference
from glai_kernels.layout import pack_patterns

PROVIDERS = {
    "gemm": ("torch",),
    "copy": ("torch",),
    "gate": ("triton", "torch", "baseline"),
    "masked_forward": ("triton", "torch", "baseline"),
    "backward_data": ("triton", "torch", "baseline"),
    "backward_weights": ("triton", "torch"),
    "pack": ("torch",),
    "gate_epilogue": ("torch", "baseline"),
    "train_step": ("triton", "triton_cached", "torch", "torch_cached", "baseline", "baseline_compiled"),
}


@dataclass(frozen=True)
class Case:
    op: str
    provider: str
    batch: int
    in_f: int
    out_f: int
    r: int
    dtype: str

    @property
    def id(self) -> str:
        return f"{self.op}-{self.provider}-B{self.batch}xI{self.in_f}xO{self.out_f}r{self.r}-{self.dtype}"


def depends_on_r(op: str, provider: str) -> bool:
    """Whether the reduction changes what is timed; the other cases run at ``r = 1`` only."""
    return not provider.startswith("baseline") and op not in ("gemm", "copy", "backward_weights")


def cases(grid: dict) -> list[Case]:
    out = []
    for dtype in grid["dtypes"]:
        for batch, in_f, out_f in grid["shapes"]:
            for r in grid["r"]:
                for op, providers in PROVIDERS.items():
                    for provider in providers:
                        if r == 1 or depends_on_r(op, provider):
                            out.append(Case(op, provider, batch, in_f, out_f, r, dtype))
    return out


def memory_cases(grid: dict) -> list[Case]:
    """Training steps whose device memory is measured: GLAI (patterns from the structure, or cached) and the MLP."""
    out = []
    for dtype in grid["dtypes"]:
        for batch, in_f, out_f in grid["shapes"]:
            for r in grid["r"]:
                for provider in ("glai", "glai_cached") + (("baseline",) if r == 1 else ()):
                    out.append(Case("train_step", provider, batch, in_f, out_f, r, dtype))
    return out


def skip_reason(case: Case, device: torch.device) -> str | None:
    if case.provider.startswith("triton"):
        if device.type != "cuda":
            return "Triton kernels are timed on CUDA only; no CUDA device here (the PyTorch providers run)"
        if backend.per_layer_ops() is None:
            return f"the Triton kernels cannot be imported ({backend._triton_error})"
    if case.provider == "baseline_compiled" and device.type != "cuda":
        return (
            "the torch.compile baseline is timed on CUDA only (compiling it on CPU outlasts the whole suite)"
        )
    return None


def _ops(provider: str):
    return backend.per_layer_ops() if provider.startswith("triton") else reference


def build(case: Case, device: torch.device):
    """``(fn, make)``: ``fn(*make())`` runs the op once."""
    dtype = getattr(torch, case.dtype)
    B, n_in, n_out, r = case.batch, case.in_f, case.out_f, case.r
    op, provider = case.op, case.provider

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, device=device, dtype=dtype) * scale

    def words(n):
        return pack_patterns(torch.rand(B, n, device=device) < 0.5)

    if op == "train_step":
        return _train_step(case, device, dtype)
    if op == "gemm":
        return (lambda x, w: F.linear(x, w)), lambda: (randn(B, n_in), randn(n_out, n_in))
    if op == "copy":
        return (lambda x, y: y.copy_(x)), lambda: (randn(B, n_out), randn(B, n_out))
    if op == "pack":
        return pack_patterns, lambda: (torch.rand(B, n_out // r, device=device) < 0.5,)
    if op == "gate_epilogue":
        if provider == "baseline":
            return torch.relu, lambda: (randn(B, n_out),)
        return (lambda z: (torch.relu(z), pack_patterns(z > 0))), lambda: (randn(B, n_out // r),)
    scale = n_in**-0.5
    if op == "gate":
        n = n_out if provider == "baseline" else n_out // r
        fn = (
            (lambda a, w, b: torch.relu(F.linear(a, w, b))) if provider == "baseline" else _ops(provider).gate
        )
        return fn, lambda: (randn(B, n_in), randn(n, n_in, scale=scale), randn(n))
    if op == "masked_forward":
        if provider == "baseline":
            fn = lambda h, w, b, p, r_: torch.relu(F.linear(h, w, b))  # noqa: E731
        else:
            fn = _ops(provider).masked_forward
        return fn, lambda: (
            randn(B, n_in),
            randn(n_out, n_in, scale=scale),
            randn(n_out),
            words(n_out // r),
            r,
        )
    if op == "backward_data":
        if provider == "baseline":  # what autograd runs for Linear + ReLU: a GEMM, then ReLU's backward
            fn = lambda g, w, a: torch.ops.aten.threshold_backward(g @ w, a, 0)  # noqa: E731
            return fn, lambda: (randn(B, n_out), randn(n_out, n_in, scale=scale), randn(B, n_in).relu())
        fn = _ops(provider).backward_data
        return fn, lambda: (randn(B, n_out), randn(n_out, n_in, scale=scale), words(n_in // r), r)
    if op == "backward_weights":
        return _ops(provider).backward_weights, lambda: (randn(B, n_out, scale=B**-0.5), randn(B, n_in), True)
    raise ValueError(f"no benchmark for op {op!r}")


def glai_model(widths, r: int, backend_name: str, device, dtype):
    from glai.nn import GLAIMLP

    model = GLAIMLP(
        widths[0],
        list(widths[1:-1]),
        widths[-1],
        reduction=r,
        backend=backend_name,
        device=device,
        dtype=dtype,
    )
    return model.freeze()


def _train_step(case: Case, device: torch.device, dtype: torch.dtype):
    """One forward and backward of the stack (the optimizer step is the same for every provider and left out)."""
    widths = costs.mlp_widths(case.in_f, case.out_f)
    B = case.batch
    if case.provider.startswith("baseline"):
        model = head_step.mlp(widths, device, dtype)
        forward = torch.compile(model) if case.provider == "baseline_compiled" else model
        uses_patterns = False
    else:
        model = glai_model(
            widths, case.r, "triton" if case.provider.startswith("triton") else "torch", device, dtype
        )
        forward = model
        uses_patterns = case.provider.endswith("_cached")
    params = list(model.parameters())

    def make():
        x = torch.randn(B, widths[0], device=device, dtype=dtype)
        extra = (model.patterns(x),) if uses_patterns else ()
        return (x, torch.randn(B, widths[-1], device=device, dtype=dtype), *extra)

    def step(x, dy, *patterns):
        for p in params:
            p.grad = None
        y = forward(x, patterns[0]) if patterns else forward(x)
        y.backward(dy)

    return step, make


def step_memory(case: Case, device: torch.device):
    """``(provider, saved_mib, peak_mib, step)`` of one training step of a :func:`memory_cases` case on CUDA.

    ``saved``: what the forward leaves allocated for the backward (the output included); ``peak``: the high-water
    mark of forward + backward. Both are above the parameters and their gradients, allocated beforehand.
    """
    dtype = getattr(torch, case.dtype)
    widths = costs.mlp_widths(case.in_f, case.out_f)
    if case.provider == "baseline":
        model, name = head_step.mlp(widths, device, dtype), "baseline"
    else:
        model = glai_model(widths, case.r, "auto", device, dtype)
        name = backend.resolve_backend("auto", device) + (
            "_cached" if case.provider.endswith("_cached") else ""
        )
    params = list(model.parameters())
    x = torch.randn(case.batch, widths[0], device=device, dtype=dtype)
    dy = torch.randn(case.batch, widths[-1], device=device, dtype=dtype)
    extra = (model.patterns(x),) if case.provider.endswith("_cached") else ()

    def step():
        for p in params:
            p.grad = None
        model(x, *extra).backward(dy)
        torch.cuda.synchronize()

    step()  # allocator pools, kernel compilation
    for p in params:
        p.grad = torch.zeros_like(
            p
        )  # gradients accumulate into these: only the step's own memory is measured
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    y = model(x, *extra)
    saved = (torch.cuda.memory_allocated() - base) / float(1 << 20)
    y.backward(dy)
    del y
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / float(1 << 20)
    return name, saved, peak, step
