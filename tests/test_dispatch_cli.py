"""``glai-autotune --dispatch ARCH [--json]``: the dispatch table of an architecture with its lowering evidence,
read from the evidence file (no compile, no GPU). The evidence is replaced here by made-up figures, so the rows'
figures (the worst over the kernels a row launches) can be checked exactly."""

import json
import subprocess
import sys

import pytest

from glai_kernels import fused_table
from glai_kernels.tools import autotune, dispatch_evidence, dispatch_report

KEYS = ["arch", "dtype", "precision", "mode", "width", "path", "registers", "spill_bytes", "shared_bytes",
        "shared_limit"]  # fmt: skip


@pytest.fixture
def evidence(monkeypatch):
    """Made-up figures for every job: registers and shared memory grow with the job's index."""
    jobs = sorted({j for r in dispatch_evidence.rows() for j in r["jobs"]})
    figs = {j: {"registers": 100 + i % 100, "spill_stores": 0, "spill_loads": 0, "shared": 1024 * (i % 50)}
            for i, j in enumerate(jobs)}  # fmt: skip
    monkeypatch.setattr(dispatch_evidence, "triton_version", lambda: "9.9.9")
    stored = {"9.9.9": {"sources": dispatch_evidence.sources_hash(), "jobs": figs}}
    monkeypatch.setattr(dispatch_evidence, "load", lambda: stored)
    return figs


def test_json_rows_carry_the_table_and_its_evidence(evidence, capsys):
    assert autotune.main(["--dispatch", "sm_90", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and all(list(r) == KEYS for r in rows)
    fused = [r for r in rows if r["path"] == "fused"]
    for r in rows:
        assert r["arch"] == "sm_90" and r["shared_limit"] == 232448
    for prec in fused_table.PRECISIONS:
        for mode, name in fused_table.MODE_NAMES.items():
            widest = fused_table.TABLE[(90, prec)][1][mode]
            mine = [r for r in rows if (r["precision"], r["mode"]) == (prec, name)]
            assert {r["width"] for r in mine if r["path"] == "fused"} == set(dispatch_evidence.widths(widest))
            assert [r["width"] for r in mine if r["path"] == "layers"] == [widest + 1]
            assert all(r["dtype"] == str(fused_table.DTYPE_OF[prec])[6:] for r in mine)
    for r in fused:  # the worst figures over the row's three kernels
        (src,) = [s for s in dispatch_evidence.rows() if (f"sm_{s['arch']}", s["width"], s["path"]) ==
                  (r["arch"], r["width"], "fused") and s["precision"] == r["precision"]
                  and fused_table.MODE_NAMES[s["mode"]] == r["mode"]]  # fmt: skip
        assert r["registers"] == max(evidence[j]["registers"] for j in src["jobs"])
        assert r["shared_bytes"] == max(evidence[j]["shared"] for j in src["jobs"])
        assert r["spill_bytes"] == 0
    assert rows[-1]["path"] == "torch" and rows[-1]["dtype"] == "float64"


def test_text_has_one_line_per_row(evidence, capsys):
    assert autotune.main(["--dispatch", "80"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "sm_80" in out[0] and "Triton 9.9.9" in out[0]
    rows, _ = dispatch_report.rows(80)
    body = [line for line in out if line.startswith("sm_80 ")]
    assert len(body) == len(rows)
    ieee = [line.split() for line in body if " fp32-ieee " in line and " given " in line]
    assert [cells[5] for cells in ieee] == ["fused", "fused", "layers"] and ieee[0][9] == "166912"


def test_without_evidence_the_figures_are_dashes(monkeypatch, capsys):
    monkeypatch.setattr(dispatch_evidence, "load", lambda: {})
    assert autotune.main(["--dispatch", "sm86"]) == 0
    out = capsys.readouterr().out
    assert dispatch_evidence.REGENERATE in out and " fused " in out and " - " in out


@pytest.mark.parametrize("arch", ["sm_75", "hopper", "", "sm_9O"])
def test_a_bad_arch_gets_one_line_and_status_2(arch, capsys):
    assert autotune.main(["--dispatch", arch]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "expected one of sm_80, sm_86, sm_90" in err[0] and repr(arch) in err[0]


def test_json_alone_is_refused(capsys):
    assert autotune.main(["--json"]) == 2
    assert "--json: only with --dispatch" in capsys.readouterr().err


def test_dispatch_in_a_fresh_process_is_quick_json():
    res = subprocess.run([sys.executable, "-m", "glai_kernels.tools.autotune", "--dispatch", "sm_90", "--json"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert {r["path"] for r in json.loads(res.stdout)} == {"fused", "layers", "torch"}
