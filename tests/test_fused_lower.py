"""The fused head kernels compile for sm_90 (wgmma) and sm_80 (mma) without a GPU, with their default launch
configurations, and at the widest hidden width the fused path takes on each architecture they spill nothing and
fit its shared memory (``tests/_lower_fused.py`` runs Triton's whole compiler down to a cubin, then ``ptxas -v``
for registers and spills)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

SCRIPT = Path(__file__).resolve().parent / "_lower_fused.py"


def _has_nvidia_backend() -> bool:
    try:
        from triton.backends import backends
    except ImportError:
        return False
    return "nvidia" in backends


@pytest.mark.skipif(not _has_nvidia_backend(), reason="this Triton has no NVIDIA backend to compile with")
def test_fused_kernels_lower_without_spills():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # every Triton's default so far; silences 3.9's notice
    res = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=900)
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    failed = [f"{r['case']}: {r['error']}\n{r['trace']}" for r in rows if not r["ok"]]
    assert not failed, "\n".join(failed)
    assert res.returncode == 0 and rows, res.stderr[-3000:]
    kernels = {r["case"].split()[0] for r in rows}
    assert kernels == {"forward", "grad_data", "grad_weights"}, kernels
    for r in rows:
        assert r["cubin_bytes"] > 0, r
        if "ieee" not in r["case"]:  # 16-bit and TF32 products reach the tensor cores
            assert r["wgmma"] if r["case"].endswith("sm90") else r["mma"], r
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0 and r["registers"] <= 255, r
        assert r["fits"], f"needs more shared memory than sm{r['case'].rsplit('sm', 1)[1]} has: {r}"
