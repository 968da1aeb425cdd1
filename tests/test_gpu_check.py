"""``bench/gpu_check.py`` without a GPU: it explains itself and refuses cleanly, and its own logic (checks,
determinism, timing rows, table, JSON) runs end to end on the CPU under Triton's interpreter at tiny sizes, so
the script a lent GPU runs once has been exercised before it gets there."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_check.py"


def _run_script(*args):
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )


def test_help():
    res = _run_script("--help")
    assert res.returncode == 0, res.stderr
    assert "CUDA" in res.stdout and "--no-timing" in res.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_refuses_without_cuda():
    res = _run_script()
    assert res.returncode == 2
    assert "no CUDA device" in res.stderr and "Traceback" not in res.stderr


@pytest.fixture
def gpu_check(monkeypatch):
    pytest.importorskip("glai_kernels.triton_ops", reason="the Triton kernels need Triton")
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not torch.cuda.is_available():
        # The interpreter (conftest) on CPU tensors, at sizes it runs in seconds.
        monkeypatch.setattr(module, "DEVICE", "cpu")
        monkeypatch.setattr(module, "no_cuda_reason", lambda: None)
    monkeypatch.setattr(module, "CHECK_SHAPES", [(33, 64, 64, 1), (17, 40, 36, 4)])
    monkeypatch.setattr(module, "KERNEL_SHAPES", [(17, 32, 32)])
    monkeypatch.setattr(module, "STEP_WIDTHS", (32,))
    monkeypatch.setattr(module, "STEP_BATCH", 9)
    small = module.glai_model
    monkeypatch.setattr(
        module, "glai_model", lambda w, r, dt, batch, **kw: small(min(w, 32), r, dt, min(batch, 9), **kw)
    )
    return module


def test_script_logic_end_to_end(gpu_check, tmp_path):
    out = tmp_path / "result.json"
    assert gpu_check.main(["--out", str(out), "--no-compile"]) == 0
    doc = json.loads(out.read_text())
    assert doc["passed"] and not doc["errors"]
    assert {"gpu", "torch", "triton", "date", "checks", "kernel_times", "step_times"} <= set(doc)
    names = " ".join(c["name"] for c in doc["checks"])
    for kernel in ("gate", "masked_forward", "backward_data", "backward_weights", "bit-identical"):
        assert kernel in names
    assert {r["kernel"] for r in doc["kernel_times"]} == {
        "gate",
        "masked_forward",
        "backward_data",
        "backward_weights",
    }
    assert [r["variant"] for r in doc["step_times"]][0] == "mlp eager"
    assert set(doc["largest_rel_err"]) >= {"float32", "float16", "bfloat16"}


def test_script_reports_a_wrong_kernel(gpu_check, tmp_path, monkeypatch):
    """A kernel that writes a wrong value makes the script fail (exit 1) and name it, without stopping the
    run."""
    from glai_kernels import backend

    ops = backend.triton_ops()
    real = ops.backward_data

    def off_by_a_bit(*args, **kwargs):
        return real(*args, **kwargs).mul_(1.01)

    monkeypatch.setattr(ops, "backward_data", off_by_a_bit)
    monkeypatch.setattr(gpu_check, "CHECK_SHAPES", [(17, 40, 36, 4)])
    out = tmp_path / "result.json"
    assert gpu_check.main(["--out", str(out), "--no-compile", "--no-timing"]) == 1
    failed = [c["name"] for c in json.loads(out.read_text())["checks"] if not c["ok"]]
    assert failed and all(name.startswith("backward_data") for name in failed)
