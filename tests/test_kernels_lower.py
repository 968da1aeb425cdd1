"""The kernels compile for real GPU targets (Hopper sm_90 with wgmma and TMA, Ampere sm_80 with mma) on a machine
without a GPU: ``tests/_lower_kernels.py`` runs Triton's whole compiler, down to a cubin, in a process without
the interpreter, for every default configuration and the paths defaults do not reach. See that script for the
cases; ``python tests/_lower_kernels.py --table`` prints what this test checks, ``--all-candidates`` the whole
search space."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

from glai_kernels.tools.lowering import refusal  # noqa: E402

SCRIPT = Path(__file__).resolve().parent / "_lower_kernels.py"


def _has_nvidia_backend() -> bool:
    try:
        from triton.backends import backends
    except ImportError:
        return False
    return "nvidia" in backends


@pytest.fixture(scope="module")
def rows():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault(
        "TRITON_DEFAULT_FP_FUSION", "1"
    )  # the default of every Triton so far; silences 3.9's notice
    res = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=900)
    found = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    failed = [f"{r['case']}: {r['error']}\n{r['trace']}" for r in found if not r["ok"]]
    assert not failed, "\n".join(failed)
    assert res.returncode == 0 and found, res.stderr[-3000:]
    return found


pytestmark = pytest.mark.skipif(not _has_nvidia_backend(), reason="this Triton has no NVIDIA backend")


def test_every_case_compiles_without_spills(rows):
    for r in rows:
        assert r["cubin_bytes"] > 0, r
        # The dispatch criterion (lowering.refusal): no spill (a spill moves registers through local memory on
        # every use), registers and shared memory within the architecture's. The tuner prunes by it too.
        assert refusal(r, r["arch"]) is None, (refusal(r, r["arch"]), r)
        # 16-bit and TF32 products reach the tensor cores: wgmma on sm_90 for tiles of 64 rows and more (a
        # warpgroup's), mma.sync below that and on sm_80; IEEE fp32 stays on the FMA units.
        if r["key"] != "float32":
            wide = int(r["config"].split("x")[0]) >= 64
            assert r["wgmma"] if r["arch"] == 90 and wide else r["mma"], r
        else:
            assert not r["wgmma"] and not r["mma"], r


def test_defaults_cover_every_kernel_dtype_and_architecture(rows):
    defaults = {(r["kernel"], r["key"], r["arch"]) for r in rows if r["kind"] == "default"}
    assert len(defaults) == 4 * 3 * 2
    for r in rows:
        if r["kind"] == "default" and r["arch"] == 90 and r["key"] != "float32":
            # Hopper defaults of the tensor-core dtypes: wgmma, and the bulk tensor copies of the TMA loop.
            assert r["wgmma"] and r["tma"] and "tma" in r["config"], r
        if r["kind"] == "default" and r["arch"] == 80:
            assert not r["tma"], r


def test_tf32_backward_loads_are_vectorised(rows):
    """K-major operands: the TF32 backward kernels load 16 bytes a copy, no 4-byte ones, and need fewer
    registers than the same tile reading its operands in place."""
    by = {
        (r["kind"], r["kernel"], r["key"], r["arch"], "k-major" in r["config"], "tma" in r["config"]): r
        for r in rows
    }
    for kernel in ("backward_data", "backward_weights"):
        k_major = by[("fallback", kernel, "tf32", 90, True, False)]
        in_place = by[("case", kernel, "tf32", 90, False, False)]
        assert k_major["cp4"] == 0 and k_major["cp16"] > 0 and in_place["cp4"] > 0
        assert k_major["registers"] < in_place["registers"]
