"""Running ``bench/gpu_check.py`` from the tests: as a subprocess with the checkout on the path and Triton's
interpreter left to the script (``--dry-run`` switches it on), and reading back the JSONL it writes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_check.py"


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("TRITON_INTERPRET", None)
    return env


def _run(*args, timeout=180, env=None):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True, text=True, env=env or _env(), cwd=ROOT, timeout=timeout,
    )  # fmt: skip


def _lines(path: Path) -> list[dict]:
    """Every line of a JSONL, each of which must be complete, strict JSON."""
    text = path.read_text()
    assert text.endswith("\n"), "the last line was cut"
    return [json.loads(line, parse_constant=pytest.fail) for line in text.splitlines()]


def per_layer_ops(monkeypatch):
    """The Triton kernels (interpreted under the tests), nothing tuned while a run uses them."""
    pytest.importorskip("glai_kernels.per_layer_ops", reason="the Triton kernels need Triton")
    from glai_kernels import backend

    monkeypatch.setenv("GLAI_AUTOTUNE", "0")
    return backend.per_layer_ops()
