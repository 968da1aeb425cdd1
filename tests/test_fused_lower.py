"""Every fused kernel the dispatcher can pick is proven to compile for its architecture without a GPU.

The dispatch table (``glai_kernels.fused_table``) names, per architecture, dot precision and mode, the widest
hidden width the fused path takes; ``glai_kernels/tools/dispatch_evidence.json`` holds the lowering of every fused
kernel each row launches (at the widest width and just past the power of two below it), made by
``python -m glai_kernels.tools.dispatch_evidence``. Here: that file matches the code (the kernels' sources hash and one
lowering per table entry; a stale file is refused, naming the command that regenerates it), every row passes
the one criterion (``lowering.refusal``: no spill, registers and shared memory within the architecture's), and a
fixed sample of its entries is lowered again (``tests/_lower_fused.py``: Triton's compiler down to a cubin,
then ``ptxas -v``) and gives the stored figures. The cases the table's rows do not reach (reduction, depth, a
single chunk, one split) are lowered too."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

from glai_kernels import fused_table  # noqa: E402
from glai_kernels.tools import dispatch_evidence as ev  # noqa: E402

SCRIPT = Path(__file__).resolve().parent / "_lower_fused.py"
# One 16-bit wgmma forward, one TF32 data chain, one IEEE weight gradient: a kernel of each kind, cheap to compile.
SAMPLE = (
    ("forward", 90, "bf16", 0),
    ("grad_data", 90, "fp32-tf32", None),
    ("grad_weights", 80, "fp32-ieee", None),
)


def _has_nvidia_backend() -> bool:
    try:
        from triton.backends import backends
    except ImportError:
        return False
    return "nvidia" in backends


pytestmark = pytest.mark.skipif(not _has_nvidia_backend(), reason="this Triton has no NVIDIA backend")


def _lower(*args) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # every Triton's default so far; silences 3.9's notice
    res = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=900
    )
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    failed = [f"{r['case']}: {r['error']}\n{r['trace']}" for r in rows if not r["ok"]]
    assert not failed, "\n".join(failed)
    assert res.returncode == 0 and rows, res.stderr[-3000:]
    return rows


@pytest.fixture(scope="module")
def stored():
    found = ev.block()
    if found is None:
        pytest.skip(
            f"{ev.EVIDENCE.name} holds no evidence for Triton {ev.triton_version()}: `{ev.REGENERATE}`"
        )
    return found


def test_the_evidence_is_current_and_every_row_fits(stored):
    problems = ev.problems()
    assert not problems, "\n".join(problems[:20])
    rows = ev.rows()
    # The rows are generated from the table: every architecture, precision and mode, two widths a fused entry.
    keys = {(r["arch"], r["precision"], r["mode"]) for r in rows}
    assert keys == {(c, p, m) for c, p in fused_table.TABLE for m in fused_table.MODE_NAMES}
    for (cap, prec), (_, widths) in fused_table.TABLE.items():
        for mode, widest in widths.items():
            fused = sorted(r["width"] for r in rows if (r["arch"], r["precision"], r["mode"]) == (cap, prec, mode)
                           and r["path"] == "fused")  # fmt: skip
            assert fused == ev.widths(widest) and widest in fused, (cap, prec, mode, fused)


def test_a_stale_file_is_refused_with_the_command(stored, monkeypatch):
    monkeypatch.setattr(ev, "sources_hash", lambda: "0" * 16)
    (problem,) = ev.problems()
    assert "stale" in problem and ev.REGENERATE in problem
    monkeypatch.undo()
    changed = {v: dict(b, jobs={j: f for j, f in list(b["jobs"].items())[1:]}) for v, b in ev.load().items()}
    assert any("the table changed" in p for p in ev.problems(changed))
    spilled = {
        v: dict(b, jobs={j: dict(f, spill_stores=8) for j, f in b["jobs"].items()})
        for v, b in ev.load().items()
    }
    assert any("spills 8 B stores" in p for p in ev.problems(spilled))


def test_a_sample_of_the_evidence_lowers_as_stored(stored):
    jobs = []
    for kernel, cap, prec, mode in SAMPLE:
        row = next(r for r in ev.rows() if (r["arch"], r["precision"], r["path"]) == (cap, prec, "fused")
                   and (mode is None or r["mode"] == mode))  # fmt: skip
        jobs.append(next(j for j in row["jobs"] if j.startswith(kernel + " ")))
    for r in _lower(["--evidence", *jobs][0], *jobs):
        want = stored["jobs"][r["case"]]
        got = {k: r[k] for k in ev.FIELDS}
        assert got == {k: want[k] for k in ev.FIELDS}, (r["case"], got, want)
        assert r["fits"], r


def test_the_cases_the_table_does_not_reach_lower_without_spills():
    for r in _lower():
        # 16-bit products on the tensor cores: the chains mma (32 rows a program, under a warpgroup's 64), the
        # weight gradient's 64 x 64 tiles wgmma.
        assert r["cubin_bytes"] > 0 and (r["wgmma"] if r["case"].startswith("grad_weights") else r["mma"]), r
        assert r["fits"], r
