"""``bench/gpu_check.py`` keeps the order of value and its deadline, without a GPU: the plan's headline within
the first third of the budget, dry runs ended by ``--deadline-s`` (a tiny deadline, a planted hang), a planted
sticky CUDA error that skips every later case, crash lines that name the innermost error and our own line, the
refusal of an interpreter that cannot run with numpy, the driver version and the TF32 switch across torch
versions."""

import json
import subprocess
import sys
import time

import pytest
import torch
from _gpu_check_run import ROOT, SCRIPT, _env, _lines, _run, per_layer_ops

from bench.gpu import cli, failures, headline, journal, plan, preflight, tables
from glai_kernels import fused_table


@pytest.fixture
def ops(monkeypatch):
    return per_layer_ops(monkeypatch)


def test_plan_starts_every_headline_case_in_the_first_third_of_the_budget():
    """``--plan --json``: the GPU plan in run order, each case's estimated start from the per-unit compile and
    timing estimates; the headline (three heads, every headline variant) starts within the first third of the
    default budget, which the default deadline gives."""
    res = _run("--plan", "--json", timeout=240)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got["budget_s"] == plan.default_budget(plan.DEFAULT_DEADLINE_S, plan.PREFLIGHT_S) > 0
    cases = got["cases"]
    assert all({"case", "section", "est_start_s"} <= set(c) for c in cases) and not got["crashes"]
    assert [c["section"] for c in cases] == sorted((c["section"] for c in cases), key=plan.SECTIONS.index)
    starts = [c["est_start_s"] for c in cases]
    assert starts == sorted(starts) and starts[0] == 0.0 and starts[-1] > got["budget_s"] / 3
    top = [c for c in cases if c["section"] == "headline"]
    assert len(top) == 1 + 3 * len(headline.VARIANTS)
    assert max(c["est_start_s"] for c in top) <= got["budget_s"] / 3, top[-1]
    widths = {p.width for p in headline.points(plan.GPU)}
    assert widths == {64, 256, headline.widest_fused_width("bfloat16")}
    # fp32 (IEEE dots, PyTorch's default) at the widest width the dispatch table fuses on sm_90, before the headline
    fp32 = min(fused_table.fused_width(90, torch.float32, "ieee", m) for m in fused_table.MODE_NAMES)
    assert headline.widest_fused_width("float32") == fp32 > 0
    assert all(p.batch >= 16384 for p in headline.points(plan.GPU))
    default = [c["case"] for c in cases if c["section"] == "default-path"]
    assert any(f"float32 B16384 512-{fp32}x2" in c for c in default), default
    text = tables.plan_text(cases, got["budget_s"], plan.DEFAULT_DEADLINE_S, plan.PREFLIGHT_S, [])
    assert all(c["case"] in text for c in top) and "steps:" in text and len(text) < 6000


def test_deadline_ends_the_run_before_it_with_the_lines_written(tmp_path):
    """A dry run with a tiny deadline and one whose first case hangs (budgets set past the deadline, so that no
    case is skipped for time on a loaded machine): each ends before the deadline, exit 3, with a timeout line for
    the running case, then the summary line; every line complete."""
    deadline = 15
    runs = {
        # the whole plan: about a minute of interpreted work on an idle machine, so the deadline always comes first
        "tiny": (["--budget-s", "1e6"], {}),
        "hang": (["--only", "kernels", "--budget-s", "1e6"], {journal.INJECT_ENV: "hang:timing copy"}),
    }
    procs = {}
    for name, (args, env) in runs.items():
        cmd = [
            sys.executable,
            str(SCRIPT),
            "--dry-run",
            "--deadline-s",
            str(deadline),
            "--out",
            str(tmp_path / name),
        ]
        procs[name] = (subprocess.Popen(cmd + args, env=dict(_env(), **env), cwd=ROOT, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True), time.perf_counter())  # fmt: skip
    for name, (proc, start) in procs.items():
        out, err = proc.communicate(timeout=deadline + 30)
        wall = time.perf_counter() - start
        assert proc.returncode == 3 and wall < deadline, (wall, out[-2000:], err[-2000:])
        lines = _lines(tmp_path / name / "gpu_check.jsonl")
        *_, timeout, summary = lines
        assert summary["kind"] == "summary" and summary["timed_out"] and summary["exit_status"] == 3
        assert timeout["kind"] == "timeout" and timeout["status"] == "timeout"
        assert summary["timed_out_case"] == timeout["case"] and f"--deadline-s {deadline}" in timeout["error"]
        assert f"--deadline-s {deadline} reached" in out and "INCOMPLETE: stopped at --deadline-s" in out
    hang = _lines(tmp_path / "hang" / "gpu_check.jsonl")
    if hang[0]["kind"] == "preflight":  # a machine too loaded to end the preflight in time times that out
        assert hang[-2]["case"] == "timing copy bfloat16 65536" and hang[-1]["cases"] == 1


def test_a_poisoned_context_skips_every_later_case(ops, monkeypatch, tmp_path, capsys):
    """A sticky CUDA error in the first case (planted): that case's crash line, every later case skipped with
    that reason (none run), the summary written, exit 1."""
    monkeypatch.setenv(journal.INJECT_ENV, "cuda-error:timing copy")
    assert cli.main(["--dry-run", "--only", "kernels,steps", "--out", str(tmp_path)]) == 1
    lines = _lines(tmp_path / "gpu_check.jsonl")
    planned = [c for s in lines[1]["sections"] for c in s["cases"]]
    crash, *rest, summary = lines[2:]
    assert crash["status"] == "crash" and crash["error"] == f"RuntimeError: {journal.INJECTED_CUDA_ERROR}"
    assert [r["case"] for r in rest] == planned[1:] and len(rest) > 40
    assert all(
        r["status"] == "skipped" and r["error"].startswith("poisoned context: RuntimeError") for r in rest
    )
    assert (
        summary["exit_status"] == 1
        and summary["crashed_cases"] == 1
        and "illegal memory" in summary["poisoned"]
    )
    assert "POISONED" in capsys.readouterr().out


def test_only_sticky_or_confirmed_cuda_errors_poison():
    oom = RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert failures.poisoned(oom) is None and failures.poisoned(oom, probe=lambda: None) is None
    assert "device failed" in failures.poisoned(oom, probe=lambda: "RuntimeError: CUDA error: unknown")
    assert failures.poisoned(ValueError("fused=True: width 600 is past the limit"), probe=pytest.fail) is None
    try:
        raise RuntimeError("wrapped") from RuntimeError("CUDA error: unspecified launch failure")
    except RuntimeError as exc:
        assert failures.poisoned(exc) == "RuntimeError: CUDA error: unspecified launch failure"


def test_a_crash_line_names_the_innermost_exception_and_our_line():
    """As Triton's interpreter raises: a repr of a repr of the error, each ``from`` the one before."""
    try:
        try:
            plan.head_points("nope")
        except ValueError as inner:
            try:
                raise RuntimeError(repr(inner)) from inner
            except RuntimeError as middle:
                raise RuntimeError(repr(middle)) from middle
    except RuntimeError as exc:
        got = failures.describe(exc)
    assert got["error"] == "ValueError: unknown head grid 'nope'; expected one of ('subset', 'full')"
    assert got["where"].startswith("bench/gpu/plan.py:") and " in head_points" in got["where"]
    assert got["raised_as"] == "RuntimeError" and got["trace"][-1].startswith("ValueError: unknown head grid")


def test_dry_run_refuses_an_interpreter_that_cannot_run_with_numpy(monkeypatch, tmp_path, capsys):
    """Triton 3.6's interpreter with numpy >= 2.4: one line naming both versions, exit 2, before any case."""

    def smoke_launch(device):
        try:
            raise TypeError("only 0-dimensional arrays can be converted to Python scalars")
        except TypeError as exc:
            raise RuntimeError(repr(exc)) from exc

    monkeypatch.setattr(preflight, "smoke_launch", smoke_launch)
    info = {"device": "cpu", "triton": "3.6.0", "numpy": "2.5.5"}
    problem = preflight.smoke(info)
    assert (
        problem.startswith("Triton 3.6.0's interpreter cannot run with numpy 2.5.5")
        and "numpy < 2.4" in problem
    )
    assert cli.main(["--dry-run", "--only", "headline-kernels", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interpreter cannot run with numpy" in err
    (line,) = _lines(tmp_path / "gpu_check.jsonl")
    assert line["kind"] == "preflight" and not line["ok"]


def test_driver_version_without_torch_internals(monkeypatch):
    """No nvidia-smi: the CUDA driver API version from libcuda, else "unknown" (never a torch private)."""
    import ctypes

    monkeypatch.setattr(preflight.shutil, "which", lambda name: None)

    class Driver:
        def cuDriverGetVersion(self, out):
            out._obj.value = 13000
            return 0

    monkeypatch.setattr(ctypes, "CDLL", lambda name: Driver())
    assert preflight.driver_version() == "CUDA driver API 13.0"
    monkeypatch.setattr(ctypes, "CDLL", lambda name: (_ for _ in ()).throw(OSError("no libcuda.so.1")))
    assert preflight.driver_version() == "unknown"


def test_precision_sets_tf32_through_the_api_torch_reads():
    """After the new ``fp32_precision`` API was used (the tuner does), the legacy flag may not be read: the
    switch uses the new API where it exists, and the kernels' own reading follows it."""
    from bench.dtypes import precision
    from glai_kernels.runtime import torch_dot_precision

    matmul = torch.backends.cuda.matmul
    new = hasattr(matmul, "fp32_precision")
    before = matmul.fp32_precision if new else matmul.allow_tf32
    try:
        if new:
            matmul.fp32_precision = "ieee"
        with precision("tf32"):
            assert torch_dot_precision(torch.float32) == "tf32"
        assert torch_dot_precision(torch.float32) == "ieee"
        with precision("float32"):
            assert torch_dot_precision(torch.float32) == "ieee"
    finally:
        setattr(matmul, "fp32_precision" if new else "allow_tf32", before)
