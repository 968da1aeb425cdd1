"""Facts about where this process runs, one answer each: whether Triton's interpreter is asked for and whether
our kernels were defined for it, ``tl.dot``'s precision for a dtype, a CUDA device's compute capability and
multiprocessor count, and how a launch runs on the device its operands live on.

A leaf: it imports no other module of the package at import time (only :func:`kernels_interpreted` looks at a
kernel, when first asked), and never Triton, so every layer can ask it.
"""

from __future__ import annotations

import functools
import os

import torch


def interpreting() -> bool:
    """True when Triton's CPU interpreter is asked for (``TRITON_INTERPRET``), read now: whether CPU tensors may
    take the Triton backend. Triton reads the same variable once, when it defines a kernel
    (:func:`kernels_interpreted`), so it must be set before the kernels are imported."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def kernels_interpreted() -> bool:
    """Whether Triton defined our kernels for its interpreter (fixed when they were imported; imports them): what
    a launch's arguments must follow (fp32 operands and IEEE products there). False without Triton."""
    try:
        from triton.runtime.interpreter import InterpretedFunction

        from .kernels.tiles import grouped_tile
    except ImportError:
        return False
    return isinstance(grouped_tile, InterpretedFunction)


def torch_dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s ``input_precision`` that PyTorch's own matmuls would use for operands of ``dtype``: TF32 for
    fp32 where ``torch.backends.cuda.matmul`` allows it (off by default), ``"ieee"`` otherwise; ``"tf32"``
    for 16-bit operands, where the argument does not matter. Read on every fp32 call, so it is kept cheap."""
    if dtype != torch.float32:
        return "tf32"
    # torch >= 2.9 has `fp32_precision` ("ieee" | "tf32" | "none" = not set through the new API); reading the
    # legacy flag after the new API was used raises there, so the new one is read first. The C getters are
    # what `torch.backends.cuda.matmul`'s attributes call, without their Python dispatch (microseconds).
    new = _fp32_precision() if _fp32_precision is not None else "none"
    if new in ("ieee", "tf32"):
        return new
    allow = _allow_tf32() if _allow_tf32 is not None else torch.backends.cuda.matmul.allow_tf32
    return "tf32" if allow else "ieee"


_getter = getattr(torch._C, "_get_fp32_precision_getter", None)
_fp32_precision = (lambda: _getter("cuda", "matmul")) if _getter is not None else None
_allow_tf32 = getattr(torch._C, "_get_cublas_allow_tf32", None)


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s ``input_precision`` for operands of ``dtype`` as the dispatch rule and the lookup read it
    before any kernel is imported: PyTorch's setting (:func:`torch_dot_precision`), and ``"ieee"`` when the
    interpreter is asked for (:func:`interpreting`), whose operands are fp32."""
    return "ieee" if interpreting() else torch_dot_precision(dtype)


def launch_precision(dtype: torch.dtype) -> str:
    """:func:`dot_precision` as a launch passes it: the interpreter's ``"ieee"`` follows how the kernels were
    defined (:func:`kernels_interpreted`, a constant once known, where the environment costs a microsecond a
    read). The two agree unless ``TRITON_INTERPRET`` changed after the kernels were imported."""
    return "ieee" if kernels_interpreted() else torch_dot_precision(dtype)


_DEVICES: dict[int, tuple[tuple[int, int], int]] = {}


def device_info(index: int) -> tuple[tuple[int, int], int]:
    """``(compute capability, multiprocessor count)`` of CUDA device ``index`` (memoised)."""
    info = _DEVICES.get(index)
    if info is None:
        props = torch.cuda.get_device_properties(index)
        info = _DEVICES[index] = ((props.major, props.minor), props.multi_processor_count)
    return info


def device_index(device) -> int | None:
    """The CUDA device a launch on ``device`` runs on (None: the current one, when there is a GPU), or None
    without a GPU."""
    if device is not None:
        device = torch.device(device)
        if device.type != "cuda":
            return None
        return device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.current_device() if torch.cuda.is_available() else None


def multiprocessor_count(device: torch.device) -> int | None:
    """The multiprocessor count of the CUDA device ``device``; None for any other device."""
    index = device_index(device) if device.type == "cuda" else None
    return None if index is None else device_info(index)[1]


def capability_key(device: torch.device) -> int | None:
    """The compute capability of ``device`` as the fused dispatch table keys it (``10 * major + minor``, e.g.
    90); None under the interpreter or off CUDA."""
    if interpreting() or device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def launch_on(device: torch.device, run, args: tuple, kwargs: dict) -> None:
    """``run(*args, **kwargs)`` (a kernel with its grid), on ``device``: Triton launches on the current CUDA
    device, so it is switched only when the operands live on another one."""
    if device.type == "cuda" and device.index is not None and device.index != torch.cuda.current_device():
        with torch.cuda.device(device):
            run(*args, **kwargs)
    else:
        run(*args, **kwargs)
