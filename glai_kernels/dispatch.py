"""The front door: every call to a GLAI stack is checked here, once per signature, and sent down one path.

**The rule.** A call runs on exactly one of three paths:

- **fused** (``glai_kernels.fused``): the whole stack in three launches a training step. Taken when the
  backend resolves to ``"triton"`` (CUDA tensors, or Triton's interpreter), ``fused`` is not False, the stack
  has a hidden layer, the operands are float32, float16 or bfloat16 (after autocast), and every hidden width,
  quantitative and structural, is at most the dispatch table's widest (``glai_kernels.fused_table``) for the
  device's architecture, the dtype, the dot precision (float32 with TF32 or IEEE products, as PyTorch's matmul
  setting says) and the mode. ``fused=True`` where it cannot run raises a ValueError naming the limit.
- **per-layer** (``glai_kernels.per_layer``): one Triton launch a layer and a pass. Taken on the ``"triton"``
  backend when the fused path is not, for given patterns (:func:`glai_mlp`) and for the structural gate
  (:func:`structural_patterns`).
- **torch** (``glai_kernels.reference``): plain differentiable PyTorch ops, any device and float dtype.
  Taken when the backend resolves to ``"torch"`` (``"auto"`` off CUDA or without Triton).

The structural phase (:func:`structural_mlp`) has only the fused path here: elsewhere it is a plain ReLU MLP,
which the caller runs with its own layers. A frozen structure's patterns (:func:`frozen_mlp`) are computed in
the fused launch, or else by :func:`structural_patterns` and passed to :func:`glai_mlp`.

A launch the compiler refuses (``glai_kernels.fallback``) moves its signature one path down, fused to
per-layer to torch, with one warning; ``GLAI_STRICT=1`` raises instead.

**Host cost.** Arguments are validated once per signature (shapes, strides, dtypes, devices, autocast state,
flags: ``glai_kernels.signature``) and the verdict remembered, so a step builds a key and does a dictionary
lookup: no checks, no host synchronisation, no CPU tensor. The fused path's verdict is a
:class:`~glai_kernels.fused_plan.FusedPlan`, which keeps its launches; the others are the backend's name.
"""

from __future__ import annotations

import contextlib

import torch

from . import backend as _backend
from . import fused as _fused
from . import fused_table, per_layer, reference, runtime
from .checks import check_devices, check_input, check_patterns, check_reduction, check_stack, match_dtypes
from .dropout import active, check_rates
from .fallback import fall_back, stack_case
from .fused_plan import FROM_STRUCTURE, GIVEN, STRUCTURAL, FusedPlan
from .signature import Verdicts

FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_F32 = torch.float32
_NO_OP = contextlib.nullcontext()
# Whether autocast is on for any device: one C call, where the device's own query needs x.device first.
_any_autocast = getattr(torch._C, "_is_any_autocast_enabled", lambda: True)
_PLANS = Verdicts()  # call signature -> verdict: a FusedPlan, or the per-layer path's backend name


# ----------------------------------------------------------------------------- the rule
def check_fused_flag(fused) -> None:
    if fused is not None and not isinstance(fused, bool):
        raise TypeError(f"fused must be None (auto), True or False, got {fused!r}")


def check_fused_request(fused, hidden, structural=()) -> None:
    """What a model can check when it is built: ``fused`` is None, True or False, and with True the hidden
    widths fit the widest the fused path takes on any device (the device's own limit is checked per call)."""
    check_fused_flag(fused)
    if fused:
        problem = width_problem(hidden, structural)
        if problem:
            raise ValueError(f"fused=True: {problem}")


def width_problem(hidden, structural=(), limit: int = fused_table.MAX_WIDTH, where: str = "") -> str | None:
    """Why these hidden widths cannot take the fused path, or None (``where``: the case the limit is for)."""
    if limit == 0:
        return f"the fused path takes no hidden width{where}"
    for what, widths in (("hidden", hidden), ("structural", structural)):
        for i, n in enumerate(widths):
            if n > limit:
                return f"the fused path takes hidden widths up to {limit}{where}, got {what} width {n} at layer {i}"
    return None


def why_not_fused(
    backend_name: str, n_layers: int, dtype, hidden, structural=(), device=None, mode: int = GIVEN,
    precision: str | None = None,
) -> str | None:  # fmt: skip
    """Why a stack cannot take the fused path (one sentence naming the limit and the value), or None.
    ``device`` None: only the widest width of any case is checked (what a model can know when it is built);
    ``precision``: ``tl.dot``'s for float32 (``"tf32"``/``"ieee"``), None for the current setting."""
    if backend_name != "triton":
        return (
            f"the fused path runs on the 'triton' backend, but the backend resolved to {backend_name!r} here"
        )
    if n_layers < 2:
        return "the fused path needs at least one hidden layer, got a single linear layer"
    if dtype not in FUSED_DTYPES:
        return f"the fused path takes float32, float16 or bfloat16 operands, got {dtype}"
    if device is None:
        return width_problem(hidden, structural)
    precision = runtime.dot_precision(dtype) if precision is None else precision
    limit, case = _fused_width(str(device), str(dtype).replace("torch.", ""), precision, mode)
    return width_problem(hidden, structural, limit, f" for {case} ({device})")


@torch.compiler.assume_constant_result
def _fused_width(device: str, dtype: str, precision: str, mode: int) -> tuple[int, str]:
    """The dispatch table's widest hidden layer for this case, and the case in words; a constant to
    torch.compile (which cannot trace the CUDA query)."""
    capability = runtime.capability_key(torch.device(device))
    dt = getattr(torch, dtype)
    return fused_table.fused_width(capability, dt, precision, mode), fused_table.describe(
        capability, dt, precision, mode
    )


# ----------------------------------------------------------------------------- verdicts
def verdict(mode, x, weights, biases, patterns, structure, reduction, backend, fused):
    """``(verdict, autocast dtype or None)`` of a call: a :class:`FusedPlan`, or the name of the backend
    (``"torch"`` or ``"triton"``) the per-layer path runs on. A call is checked in full the first time its
    signature (``glai_kernels.signature``) comes, and whenever ``torch.compile`` traces it."""
    autocast = None
    if _any_autocast():
        kind = x.device.type if isinstance(x, torch.Tensor) else "cpu"
        autocast = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None
    checks = (x, weights, biases, patterns, structure, mode, reduction, backend, fused, autocast)
    if torch.compiler.is_compiling():  # traced: checked in full, nothing remembered
        return _validate(*checks), autocast
    key = _key(mode, x, weights, biases, patterns, structure, reduction, backend, fused, autocast)
    found = _PLANS.get(key)
    if found is None:
        found = _validate(*checks)
        _PLANS.put(key, found)
    elif type(found) is FusedPlan and found.down is not None:  # a launch was refused: the path below
        return found.down, autocast
    return found, autocast


def _key(mode, x, weights, biases, patterns, structure, reduction, backend, fused, autocast):
    extra_w, extra_b = (), ()
    if mode == GIVEN:
        extra_w = patterns
    elif mode == FROM_STRUCTURE:  # a malformed structure gives no key (0 is no group): the checks name it
        pair = isinstance(structure, (tuple, list)) and len(structure) == 2
        extra_w, extra_b = structure if pair else (0, 0)
    # float32's fused limit and configuration follow the TF32 setting: part of the key (a C call a step).
    precision = (
        runtime.dot_precision(_F32) if autocast is None and getattr(x, "dtype", None) is _F32 else None
    )
    return _PLANS.key(
        (mode, reduction, backend, fused, autocast, precision), x, weights, biases, extra_w, extra_b
    )


def _validate(x, weights, biases, patterns, structure, mode, reduction, backend, fused, autocast):
    """The full checks (errors as the per-layer path gives them), then the verdict: a FusedPlan, or the
    per-layer path's backend name."""
    check_fused_flag(fused)
    _backend.check_backend_name(backend)
    weights, biases = check_stack(weights, biases)
    check_input(x, weights[0].shape[1])
    hidden = [w.shape[0] for w in weights[:-1]]
    lead = tuple(x.shape[:-1])
    structural_hidden = hidden if mode == STRUCTURAL else [n // reduction for n in hidden]
    if mode == STRUCTURAL:
        if reduction != 1:
            raise ValueError(
                f"the structural phase makes its patterns at full width: reduction must be 1, got {reduction}"
            )
    else:
        check_reduction(reduction, hidden)
    if mode == GIVEN:
        check_patterns(patterns, hidden, reduction, lead, x.device)
    elif mode == FROM_STRUCTURE and hidden:
        if not isinstance(structure, (tuple, list)) or len(structure) != 2:
            raise TypeError(
                f"structure must be a pair (weights, biases) of the frozen hidden layers, got {structure!r}"
            )
        s_w, s_b = check_stack(*structure)
        shapes = [tuple(w.shape) for w in s_w]
        ins = [x.shape[-1]] + structural_hidden[:-1]
        expected = [(n, k) for n, k in zip(structural_hidden, ins)]
        if shapes != expected:
            raise ValueError(
                f"the frozen structure must have hidden layers of shapes {expected} (widths / reduction), got {shapes}"
            )
        check_devices(x, s_w, s_b)
        if autocast is None:
            match_dtypes(x, s_w, s_b)
    check_devices(x, weights, biases)
    dtype = autocast if autocast is not None else x.dtype
    if autocast is None:
        match_dtypes(x, weights, biases)
    name = _backend.resolve_backend(backend, x.device)
    if fused is False:
        return name
    reason = why_not_fused(name, len(weights), dtype, hidden, structural_hidden, x.device, mode)
    if reason is None:
        return FusedPlan(mode, 1 if mode == STRUCTURAL else reduction, [b is not None for b in biases])
    if fused:
        raise ValueError(f"fused=True: {reason}")
    return name


# ----------------------------------------------------------------------------- entries
def fused_mlp(
    x, weights, biases, *, patterns=None, structure=None, structural=False, reduction=1, backend="auto",
    fused=None, dropout=None,
):  # fmt: skip
    """The stack's output through the fused path, or None where another path must run instead.

    Exactly one of: ``patterns`` (the quantitative phase with given patterns, as :func:`glai_mlp`),
    ``structure`` (``(weights, biases)`` of the frozen structure's hidden layers: its patterns are computed in
    the same launch) or ``structural=True`` (the structural phase: ReLU, patterns made in the forward).
    ``dropout``: None or the checked rates of the hidden layers.
    """
    if fused is False:
        return None
    if fused is None and (backend == "torch" or (backend == "auto" and not getattr(x, "is_cuda", False))):
        return None  # resolves to the torch backend: decided without building a signature
    mode = STRUCTURAL if structural else (FROM_STRUCTURE if structure is not None else GIVEN)
    plan, autocast = verdict(mode, x, weights, biases, patterns, structure, reduction, backend, fused)
    if type(plan) is not FusedPlan:
        return None
    return _fused.run(plan, x, weights, biases, patterns, structure, autocast, dropout)


def structural_mlp(x, weights, biases, *, backend="auto", fused=None, dropout=None):
    """The structural phase's output through the fused path, or None: the caller then runs its own
    ``Linear``/``ReLU`` layers (the structural phase is a plain ReLU MLP off the fused path)."""
    return fused_mlp(x, weights, biases, structural=True, backend=backend, fused=fused, dropout=dropout)


def frozen_mlp(x, weights, biases, structure, *, reduction=1, backend="auto", fused=None, dropout=None):
    """The quantitative phase with the patterns of a frozen ``structure`` (``(weights, biases)`` of its hidden
    layers): computed in the fused launch where the rule allows, else by :func:`structural_patterns` and
    passed to :func:`glai_mlp`."""
    y = fused_mlp(
        x, weights, biases, structure=structure, reduction=reduction, backend=backend, fused=fused,
        dropout=dropout,
    )  # fmt: skip
    if y is not None:
        return y
    patterns = structural_patterns(x, *structure, backend=backend)
    return glai_mlp(
        x, weights, biases, patterns, reduction=reduction, backend=backend, fused=fused, dropout=dropout
    )


def glai_mlp(
    x, weights, biases, patterns, *, reduction: int = 1, backend: str = "auto", fused: bool | None = None,
    dropout=None,
) -> torch.Tensor:  # fmt: skip
    """Quantitative forward of a GLAI stack with fixed patterns, differentiable in ``x``, weights and biases.

    Args:
        x: input ``(*, in_features)``, floating point.
        weights: ``L`` tensors ``[n_l, n_{l-1}]`` (the last one is the ungated output layer).
        biases: ``None`` or ``L`` tensors ``[n_l]`` / ``None``.
        patterns: ``L - 1`` int32 tensors ``(*, ceil(n_l / reduction / 32))`` from :func:`pack_patterns`,
            at structural width: quantitative unit ``j`` reads bit ``j // reduction``.
        reduction: structural reduction factor ``r``; must divide every hidden width.
        backend: ``"auto"``, ``"torch"`` or ``"triton"``.
        fused: ``None`` runs the whole stack in three launches a step (``glai_kernels.fused``) when the backend
            resolves to ``"triton"`` and the stack fits that path's limits; ``True`` forces it (a ValueError
            names the limit where it cannot); ``False`` keeps the per-layer kernels.
        dropout: None, or inverted dropout on every hidden output ``h_l``, one rate or one per hidden layer
            (``glai_kernels.dropout``): always applied when given (it is the caller's training mode that
            decides, as for ``F.dropout(training=True)``). The ``"torch"`` backend draws with ``F.dropout``, the
            Triton kernels in the kernel from one seed a step.

    Returns ``(*, out_features)``. No gradient flows to ``patterns``.
    """
    if dropout is not None:
        dropout = check_rates(dropout, len(weights) - 1)
        dropout = dropout if active(dropout) else None
    path, autocast = verdict(GIVEN, x, weights, biases, patterns, None, reduction, backend, fused)
    if type(path) is FusedPlan:
        y = _fused.run(path, x, weights, biases, patterns, None, autocast, dropout)
        if y is not None:
            return y
        path = path.down  # the fused launch was refused (glai_kernels.fallback): the path below
    # The call was checked (once per signature): the per-layer path on `path`.
    L = len(weights)
    biases = [None] * L if biases is None else biases
    if autocast is not None:  # the casts are part of the autograd graph: fp32 master weights get gradients
        x, weights, biases = match_dtypes(x, list(weights), list(biases))
    x2, flat = x, patterns
    if x.dim() != 2:
        x2 = x.reshape(-1, x.shape[-1])
        flat = [p.reshape(-1, p.shape[-1]) for p in patterns]
    # Autocast off inside (the operands are cast already); entering the context costs microseconds of host
    # time a step, so it is entered only when autocast is on.
    with torch.autocast(x.device.type, enabled=False) if autocast is not None else _NO_OP:
        y = None
        if path == "triton":
            try:
                y = per_layer.run(x2, weights, biases, flat, reduction, dropout)
            except Exception as exc:  # a refused launch: this signature takes the torch path from now on
                if torch.compiler.is_compiling():
                    raise
                fall_back(exc, stack_case([w.shape[0] for w in weights], x2.dtype, x2.device, "given"),
                          "per-layer", "torch")  # fmt: skip
                key = _key(GIVEN, x, weights, biases, patterns, None, reduction, backend, fused, autocast)
                _PLANS.put(key, "torch")
        if y is None:  # autograd over plain ops: a C++ backward, gates unpacked once
            y = reference.stack(x2, weights, biases, flat, reduction, dropout)
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], y.shape[-1])


@torch.no_grad()
def structural_patterns(x, weights, biases=None, *, backend: str = "auto") -> list[torch.Tensor]:
    """Packed patterns ``(*, ceil(n_l / 32))`` of every layer of a structural ReLU stack.

    ``weights``/``biases`` are the structural net's hidden layers (the output layer gates nothing).
    """
    _backend.check_backend_name(backend)
    weights, biases = check_stack(weights, biases)
    check_input(x, weights[0].shape[1])
    check_devices(x, weights, biases)
    x, weights, biases = match_dtypes(x, weights, biases)
    return per_layer.patterns(x, weights, biases, _backend.resolve_backend(backend, x.device))
