"""Up-front checks shared by the command lines (``glai-demo``, ``glai-experiment``).

Every bad flag or environment variable ends the command before any work, with exit status 2 and one line on
stderr that names the flag, what was expected and what came; never a traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import torch

CACHE_DIR_ENV, AUTOTUNE_ENV = "GLAI_CACHE_DIR", "GLAI_AUTOTUNE"


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` with a one-line error: ``prog: error: <message>`` and exit status 2, no usage block."""

    def error(self, message: str):
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def int_in(low: int, high: int | None = None):
    """An argparse type: an int in ``[low, high]`` (no upper bound when ``high`` is None)."""
    expected = f"an int >= {low}" if high is None else f"an int in [{low}, {high}]"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value

    return parse


def finite_float(accept, expected: str):
    """An argparse type: a finite float for which ``accept(value)`` holds; NaN and inf never do."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and accept(value)):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


def device_name(text: str) -> str:
    """An argparse type for ``--device``: a torch device this machine has, or ``auto``."""
    if text == "auto":
        return text
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"expected a torch device (cpu, cuda, cuda:1, ...) or auto, got {text!r}"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(
            f"expected a device this machine has, got {text!r}: CUDA is not available (try cpu)"
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(
            f"expected a device this machine has, got {text!r}: it has {torch.cuda.device_count()} CUDA device(s)"
        )
    return text


def folder_problem(path: Path) -> str | None:
    """Why ``path`` cannot be used as a folder that is created when missing, or None when it can."""
    if path.exists():
        if not path.is_dir():
            return "which is a file"
        if not os.access(path, os.W_OK | os.X_OK):
            return "which is not writable"
        return None
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"which cannot be created: {str(parent)!r} is a file"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"which cannot be created: {str(parent)!r} is not writable"
    return None


def check_output_folder(
    parser: argparse.ArgumentParser, flag: str, path: Path, *, overwrite: bool | None = None
):
    """``flag``'s folder must be usable; with ``overwrite=False`` it must also be missing or empty."""
    problem = folder_problem(path)
    if problem:
        parser.error(f"argument {flag}: expected a folder (created if missing), got {str(path)!r}, {problem}")
    if overwrite is False and path.is_dir():
        entries = sorted(p.name for p in path.iterdir())
        if entries:
            shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
            parser.error(
                f"argument {flag}: expected a new or empty folder, got {str(path)!r}, which holds {shown}; "
                "pass --overwrite to write over it, or choose another folder"
            )


def check_environment(parser: argparse.ArgumentParser) -> None:
    """``GLAI_CACHE_DIR`` (when set) must be a usable folder; ``GLAI_AUTOTUNE`` (when set) 0 or 1."""
    cache_dir = os.environ.get(CACHE_DIR_ENV)
    if cache_dir:
        problem = folder_problem(Path(cache_dir).expanduser())
        if problem:
            parser.error(
                f"environment variable {CACHE_DIR_ENV}: expected a folder (created if missing), got {cache_dir!r}, "
                f"{problem}"
            )
    autotune = os.environ.get(AUTOTUNE_ENV)
    if autotune not in (None, "", "0", "1"):
        parser.error(f"environment variable {AUTOTUNE_ENV}: expected 0 or 1, got {autotune!r}")
