"""The backend names, and which one a device resolves to (the front door, ``glai_kernels.dispatch``, asks).

``"torch"`` is the PyTorch reference (any device, any float dtype). ``"triton"`` runs the Triton kernels (the
fused path where the front door's rule allows, else the per-layer one) on CUDA tensors, or on CPU tensors under
Triton's interpreter (``TRITON_INTERPRET=1``). ``"auto"`` takes Triton for CUDA tensors when its kernels import,
and the reference otherwise.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

from . import runtime

BACKENDS = ("auto", "torch", "triton")

_triton_ops: ModuleType | None = None
_triton_error: str | None = None


def check_backend_name(backend) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


@torch.compiler.assume_constant_result
def _load_triton_ops() -> bool:
    """Import the Triton ops once. Under ``torch.compile`` this runs eagerly at trace time (Dynamo cannot
    trace an import) and only its result enters the graph, so a model compiled before its first eager call
    still compiles to one graph."""
    global _triton_ops, _triton_error
    if _triton_ops is None and _triton_error is None:
        try:
            _triton_ops = importlib.import_module("glai_kernels.per_layer_ops")
        except Exception as exc:  # no Triton, a Triton without a driver, no kernels yet: fall back
            _triton_error = f"{type(exc).__name__}: {exc}"
    return _triton_ops is not None


def per_layer_ops() -> ModuleType | None:
    """The Triton ops module, or None when Triton or its kernels cannot be imported here."""
    _load_triton_ops()
    return _triton_ops


def triton_available() -> bool:
    return per_layer_ops() is not None


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend (``"torch"`` or ``"triton"``) for tensors on ``device``."""
    check_backend_name(backend)
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if backend == "triton":
        if per_layer_ops() is None:
            raise RuntimeError(
                f"backend='triton' was requested but the Triton kernels are unavailable ({_triton_error})"
            )
        if device.type != "cuda" and not runtime.interpreting():
            raise ValueError(
                f"backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for the CPU interpreter), "
                f"got tensors on {device}; use backend='torch' or 'auto' on this device"
            )
    return backend
