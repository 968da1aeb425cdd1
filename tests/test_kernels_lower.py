"""The kernels compile for real GPU targets (Hopper sm_90 with wgmma, Ampere sm_80 with mma) on a machine
without a GPU: ``tests/_lower_kernels.py`` runs Triton's whole compiler, down to a cubin, in a process without
the interpreter. See that script for what each case covers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

SCRIPT = Path(__file__).resolve().parent / "_lower_kernels.py"


def _has_nvidia_backend() -> bool:
    try:
        from triton.backends import backends
    except ImportError:
        return False
    return "nvidia" in backends


@pytest.mark.skipif(not _has_nvidia_backend(), reason="this Triton has no NVIDIA backend to compile with")
def test_kernels_lower_to_cubin():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault(
        "TRITON_DEFAULT_FP_FUSION", "1"
    )  # the default of every Triton so far; silences 3.9's notice
    res = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=600)
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    failed = [f"{r['case']}: {r['error']}\n{r['trace']}" for r in rows if not r["ok"]]
    assert not failed, "\n".join(failed)
    assert res.returncode == 0 and rows, res.stderr[-3000:]
    for r in rows:
        assert r["cubin_bytes"] > 0, r
        # 16-bit and TF32 products must reach the tensor cores: wgmma on sm_90, mma on sm_80.
        if "ieee" not in r["case"]:
            assert r["wgmma"] if r["case"].endswith("sm90") else r["mma"], r
        # A spill moves registers through local memory on every use: no compiled case may need one.
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0 and r["registers"] <= 255, r
