"""No training step crashes on a resource limit: a launch that the GPU's compiler refuses falls to the next path.

The dispatch table (``fused_table``) sends a call only to kernels proven to compile on its architecture (by
lowering, without a GPU). A Triton or driver that was never lowered with may still refuse one: Triton raises
``OutOfResources`` (more shared memory or registers than the device has) or a compile error. Then that call
signature runs on the next path down, fused -> per-layer -> torch, with one warning naming the case (widths,
dtype, device, mode) and the compiler's message, and the choice is remembered for the signature.

``GLAI_STRICT=1`` (or any value but ``0`` and empty) raises instead: the test suite and the GPU check run
strict, so a refused launch there is a failure, never a silent slower path.
"""

from __future__ import annotations

import os
import warnings

# Triton's exceptions for a kernel the target cannot take, by class name (Triton is not imported here).
RESOURCE_ERRORS = ("OutOfResources", "CompilationError", "CompileTimeAssertionFailure", "PTXASError")


def strict() -> bool:
    """Whether ``GLAI_STRICT`` asks for a refused launch to raise."""
    return os.environ.get("GLAI_STRICT", "") not in ("", "0")


def is_resource_error(exc: BaseException) -> bool:
    """Whether ``exc`` is Triton refusing to compile or launch a kernel on this device."""
    return any(
        cls.__name__ in RESOURCE_ERRORS and cls.__module__.split(".")[0] == "triton"
        for cls in type(exc).__mro__
    )


def fall_back(exc: BaseException, case: str, path: str, to: str) -> None:
    """Re-raise ``exc`` unless it is a resource error and strict mode is off; else warn (once per remembered
    choice: the caller remembers ``to`` for the signature) that ``case`` leaves ``path`` for ``to``."""
    if strict() or not is_resource_error(exc):
        raise exc
    message = " ".join(f"{type(exc).__name__}: {exc}".split())
    warnings.warn(
        f"the {path} launch of {case} was refused by the compiler ({message[:600]}); this call signature runs on "
        f"the {to} path from now on (GLAI_STRICT=1 raises instead)",
        RuntimeWarning,
        stacklevel=3,
    )


def stack_case(widths, dtype, device, mode: str) -> str:
    """A call in words for :func:`fall_back`: ``"widths [300, 100, 130], float32, cuda:0, mode given"``."""
    return f"widths {list(widths)}, {str(dtype).replace('torch.', '')}, {device}, mode {mode}"
