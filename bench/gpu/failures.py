"""What a crashed case says: the innermost exception and our own line, and whether the CUDA context survived.

A kernel that fails under Triton is re-raised a few times on its way out (the interpreter wraps each error
into another, ``raise ... from``), so the outermost message is a repr of a repr of a repr and its trace ends
inside Triton. The line kept is the innermost exception of the ``__cause__``/``__context__`` chain, and the
deepest frame of any traceback in that chain whose file is ours (``glai_kernels/`` or ``bench/``): under the
interpreter that is the kernel's own source line, on a GPU the launch that raised.

Some CUDA errors are sticky: once a kernel has made an illegal memory access (or hit a device-side assert,
...), every later call in the process fails with the same error. :func:`poisoned` tells those apart, by the
message and, on a GPU, by a one-element probe, so the run records the first one and skips the rest.
"""

from __future__ import annotations

import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OURS = tuple(str(ROOT / d) + "/" for d in ("glai_kernels", "bench"))
MAX_ERROR = 400  # characters of a crash line's error

# Errors after which the CUDA context is unusable for the rest of the process (CUDA's "sticky" errors).
STICKY = (
    "illegal memory access",
    "an illegal address",
    "unspecified launch failure",
    "misaligned address",
    "illegal instruction",
    "device-side assert",
    "hardware stack error",
    "uncorrectable ecc",
    "cuda_error_illegal_address",
    "cuda_error_launch_failed",
)


def chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from, outermost first (cycles cut)."""
    out: list[BaseException] = []
    while exc is not None and all(exc is not e for e in out):
        out.append(exc)
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return out


def innermost(exc: BaseException) -> str:
    """``"Type: first line of the message"`` of the innermost exception of the chain."""
    inner = chain(exc)[-1]
    lines = str(inner).strip().splitlines()
    text = f"{type(inner).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text[:MAX_ERROR]


def our_line(exc: BaseException) -> str | None:
    """``"glai_kernels/kernels/tiles.py:77 in tile_dot: for k in range(...)"``: the deepest frame whose file is
    in ``glai_kernels/`` or ``bench/``, looked for from the innermost exception outwards; None if none is."""
    for e in reversed(chain(exc)):
        frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename.startswith(OURS)]
        if frames:
            f = frames[-1]
            where = f"{Path(f.filename).relative_to(ROOT)}:{f.lineno} in {f.name}"
            return f"{where}: {f.line.strip()}" if f.line else where
    return None


def trace(exc: BaseException, limit: int = 8) -> list[str]:
    """The last ``limit`` lines of the innermost exception's own traceback (not the whole chain's)."""
    inner = chain(exc)[-1]
    return "".join(traceback.format_exception(type(inner), inner, inner.__traceback__, chain=False)).strip(
    ).splitlines()[-limit:]  # fmt: skip


def describe(exc: BaseException) -> dict:
    """The fields of a crash line: ``error`` (innermost), ``where`` (our line), ``raised_as`` (the outermost
    type when it differs), ``trace``."""
    fields = {"error": innermost(exc), "where": our_line(exc), "trace": trace(exc)}
    if chain(exc)[-1] is not exc:
        fields["raised_as"] = type(exc).__name__
    return fields


def poisoned(exc: BaseException, probe=None) -> str | None:
    """Why the CUDA context can no longer be used after ``exc``, or None. A sticky error's message decides at
    once; any other error naming CUDA is confirmed by ``probe()`` (a tiny op and a synchronisation on the GPU,
    returning the error it met or None). Errors that leave the context usable (out of memory, a compile
    failure, a wrong result) return None."""
    messages = [str(e) for e in chain(exc)]
    text = "\n".join(messages).lower()
    if any(s in text for s in STICKY):
        return innermost(exc)
    if probe is not None and "cuda" in text:
        failed = probe()
        if failed:
            return f"{innermost(exc)} (then the device failed a one-element op: {failed})"[:MAX_ERROR]
    return None
