"""``bench/gpu_check.py`` without a GPU: the whole plan as a dry run under Triton's interpreter, a run killed
part-way, wrong and crashing kernels, bad flags, no CUDA, the compile-count replay, and the report made from a
run's JSONL. The script a lent GPU runs once has then been exercised end to end before it gets there."""

import inspect
import signal
import subprocess
import sys
import time

import pytest
import torch
from _gpu_check_run import ROOT, SCRIPT, _env, _lines, _run, per_layer_ops

from bench import gpu_report, harness, head_step
from bench.gpu import cli, count, headline, journal, plan, steps, tables
from bench.gpu.target import Replay


# ----------------------------------------------------------------------------- flags and environment
def test_help():
    res = _run("--help")
    assert res.returncode == 0, res.stderr
    for text in ("CUDA", "--out", "--budget-s", "--deadline-s", "--plan", "--json", "--dry-run",
                 "--count-compiles", "--no-timing", "--grid"):  # fmt: skip
        assert text in res.stdout


@pytest.mark.parametrize(
    "args, names",
    [
        (["--budget-s", "soon"], ["--budget-s", "expected a number of seconds > 0", "'soon'"]),
        (["--budget-s", "-3"], ["--budget-s", "'-3'"]),
        (["--only", "correctness,timings"], ["--only", "expected a comma-separated list", "timings"]),
        (["--grid", "huge"], ["--grid", "huge", "subset"]),
        (["--frobnicate"], ["--frobnicate"]),
        (["--out", "README.md"], ["--out", "expected a folder", "README.md"]),
        (["--dry-run", "--count-compiles"], ["--count-compiles", "--dry-run"]),
        (["--deadline-s", "0"], ["--deadline-s", "expected a number of seconds > 0", "'0'"]),
        (["--plan", "--dry-run"], ["--plan", "--dry-run"]),
        (["--json"], ["--json", "--plan"]),
    ],
)
def test_bad_flags_exit_2_with_one_line(args, names):
    res = _run(*args)
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr, res.stderr
    for name in names:
        assert name in res.stderr


def test_interpreter_without_dry_run_is_refused():
    res = _run("--only", "correctness", env=dict(_env(), TRITON_INTERPRET="1"))
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "TRITON_INTERPRET" in res.stderr and "--dry-run" in res.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_refuses_without_cuda_after_the_preflight(tmp_path):
    res = _run("--out", tmp_path)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "no CUDA device" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    for fact in ("python", "torch", "triton", "C compiler", "Python.h"):
        assert fact in res.stdout, res.stdout
    (first,) = _lines(tmp_path / "gpu_check.jsonl")
    assert first["kind"] == "preflight" and first["ok"] is False and "no CUDA device" in first["error"]
    assert first["torch"] == torch.__version__ and "cc" in first and "python_h_found" in first


def test_preflight_refuses_a_gpu_machine_without_compiler_or_headers(monkeypatch, tmp_path):
    """Triton 3.6 builds a C launcher per kernel: a missing compiler or Python.h is one clear line before
    anything compiles (a GPU faked here: only the preflight's own checks run)."""
    from types import SimpleNamespace

    from bench.gpu import preflight

    props = SimpleNamespace(
        name="NVIDIA H200", multi_processor_count=132, major=9, minor=0, total_memory=2**37
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(preflight.shutil, "which", lambda name: None)
    info, problem = preflight.facts(dry_run=False)
    assert info["gpu"] == "NVIDIA H200" and info["sm_count"] == 132 and info["capability"] == "9.0"
    assert problem.startswith("no C compiler (gcc or clang on the PATH, or $CC)")
    monkeypatch.setenv("CC", "/no/such/cc")
    assert preflight.facts(dry_run=False)[1].startswith("no C compiler ($CC=/no/such/cc)")
    monkeypatch.setenv("CC", sys.executable)  # any file that exists
    monkeypatch.setattr(preflight, "python_header", lambda: tmp_path / "Python.h")
    problem = preflight.facts(dry_run=False)[1]
    assert problem.startswith(f"no Python headers at {tmp_path / 'Python.h'}")
    (tmp_path / "Python.h").write_text("")
    assert preflight.facts(dry_run=False)[1] is None
    assert "132 SMs, sm_90" in preflight.describe(info)[0]


# ----------------------------------------------------------------------------- the dry run
@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dry")
    start = time.perf_counter()
    res = _run("--dry-run", "--out", out)
    wall = time.perf_counter() - start
    print(f"dry run: {wall:.1f} s, {len(res.stdout)} characters of output")
    return res, out / "gpu_check.jsonl", wall


def test_dry_run_writes_every_planned_case_in_order(dry_run):
    res, path, _ = dry_run
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert len(res.stdout) < 6000, "standard output must stay far inside the 12,000 characters that come back"
    lines = _lines(path)
    assert [lines[0]["kind"], lines[1]["kind"], lines[-1]["kind"]] == ["preflight", "plan", "summary"]
    assert lines[-1]["complete"] and lines[-1]["exit_status"] == 0
    planned = [c for s in lines[1]["sections"] for c in s["cases"]]
    body = lines[2:-1]
    assert {r["case"] for r in body} == set(planned) and not tables.missing(lines)
    order = [plan.SECTIONS.index(r["section"]) for r in body]
    assert order == sorted(order), "sections ran out of order"
    for r in body:
        assert {"what", "shape", "dtype", "status", "ok"} <= set(r), r
        assert r["status"] in ("ok", "skipped"), r
    # correctness: every kernel in fp32 IEEE, TF32, fp16 and bf16, each line with the config it ran
    checks = [r for r in body if r["kind"] == "check" and r["section"] == "correctness"]
    for dtype in ("float32", "tf32", "float16", "bfloat16"):
        names = {r["what"].split(".")[0] for r in checks if r["dtype"] == dtype}
        assert names >= {
            "gate",
            "masked_forward",
            "masked_forward_ungated",
            "backward_data",
            "backward_weights",
        }
    layer_checks = [r for r in checks if not r["what"].startswith(("fused", "default"))]
    assert all(r["config_source"] == "interpreter" and r["config"]["BLOCK_M"] == 16 for r in layer_checks)
    # the fused head path: bf16 in every phase (outputs; gradients with given patterns), its launches recorded
    fused = [r for r in checks if r["what"].startswith("fused")]
    assert {(r["what"], r["phase"]) for r in fused if r["dtype"] == "bfloat16"} == {
        ("fused output", "structural"),
        ("fused output", "structure"),
        ("fused output", "cache"),
        ("fused gradients", "cache"),
    }
    for r in fused:
        kernels = {c["kernel"] for c in r["config"]}
        assert r["config_source"] == "interpreter" and "fused_forward_kernel" in kernels, r
    # kernel timings: four kernels x two shapes x three dtypes against cuBLAS, and the memory rate
    timings = [r for r in body if r["kind"] == "timing" and r["what"] != "copy"]
    assert len(timings) == 4 * 2 * 3 and all(r["baseline_ms"] > 0 and r["unit"] == "ms" for r in timings)
    (copy,) = [r for r in body if r["what"] == "copy"]
    assert copy["unit"] == "GB/s" and copy["value"] > 0
    # steps: every variant at every head, the headline's at the headline heads too, each head once; the fused
    # ones skipped exactly when GLAIMLP takes no fused=
    from glai.nn import GLAIMLP

    fused_missing = "fused" not in inspect.signature(GLAIMLP).parameters
    top = headline.points(plan.DRY)
    for variant in head_step.VARIANTS:
        mine = [r for r in body if r["what"] == variant.name]
        heads = set(plan.head_points("dry")) | (set(top) if variant.short in headline.VARIANTS else set())
        assert sorted(r["shape"] + r["dtype"] for r in mine) == sorted(p.label + p.dtype for p in heads)
        if variant.fused and fused_missing:
            assert all(r["status"] == "skipped" and "unavailable" in r["error"] for r in mine)
        else:
            assert all(r["status"] == "ok" and r["value"] > 0 and r["min_bytes"] > 0 for r in mine)
            assert all(r["floor_ms"] > 0 for r in mine)
    glai = [r for r in body if r["what"].startswith("glai per-layer, quantitative")]
    assert all(r["config_source"] == "interpreter" and len(r["config"]) >= 4 for r in glai)
    # the headline first: the default path checked in every dtype the dispatcher sends to the fused path
    assert [s["name"] for s in lines[1]["sections"]] == list(plan.SECTIONS)
    default = [r for r in body if r["what"].startswith("default")]
    assert {r["dtype"] for r in default} == {"bfloat16", "float16", "tf32", "float32"}
    assert {r["shape"] for r in default if r["dtype"] == "bfloat16"} == {p.label for p in top}
    assert all(r["unit"] == "rel_err" and r["value"] <= r["tol"] for r in default)
    # the compiled fused model fed two batch sizes in turn (on a GPU: two weight-gradient split counts)
    (alternating,) = [r for r in body if "alternating" in r["case"]]
    assert alternating["steps"] == plan.DRY.alternating[1] and len(alternating["splits"]) == 2
    assert lines[0]["strict"] == "1"  # a launch that fails to compile raises: no silent fallback


def test_dry_run_output_is_one_line_per_section_and_the_table_last(dry_run):
    res, _, _ = dry_run
    out = res.stdout
    for name in plan.SECTIONS:
        assert sum(1 for line in out.splitlines() if f"] {name} (" in line) == 1, name
    assert out.index("%cuBLAS") > out.index("] compiled (")
    # the headline's tables as soon as their sections end, before everything else starts
    assert (
        out.index("] headline (")
        < out.index("headline: ms of the eager MLP")
        < out.index("] headline-kernels")
    )
    assert out.index("] headline-kernels") < out.index("headline kernel ") < out.index("] correctness (")
    assert "largest relative error vs float64, bfloat16" in out and "exit status 0" in out


def test_stdout_of_a_full_gpu_run_stays_small():
    """The table of the GPU plan (its head grid, its kernel shapes), filled with figures as wide as they get,
    plus the preflight and section lines, fits in the 6,000 characters we allow ourselves."""
    sections = plan.build(Replay(), None, None, plan.GPU, "subset", {})
    records = []
    for section in sections:
        for case in section.cases:
            rec = {"kind": "check", "section": section.name, "case": case.id, "status": "ok", **case.base}
            if section.name in ("kernels", "headline-kernels") and case.base["what"] != "copy":
                cfg = {
                    "BLOCK_M": 128,
                    "BLOCK_N": 256,
                    "BLOCK_K": 64,
                    "GROUP_M": 8,
                    "num_warps": 8,
                    "num_stages": 4,
                }
                rec.update(kind="timing", value=12.345, tflops=987.0, baseline_ms=11.234, pct_of_cublas=101.2,
                           config=cfg, config_source="tuning cache (nearest bucket)")  # fmt: skip
            elif section.name in ("headline", "steps", "compiled"):
                rec.update(kind="step", value=123.456, floor_ms=12.345)
            records.append(rec)
    table = tables.terminal(records) + tables.headline(records, "headline")
    table += tables.headline(records, "headline-kernels")
    others = 4 * 160 + len(plan.SECTIONS) * 90 + 200  # preflight lines, section lines, the closing line
    assert len(table) + others < 6000, f"{len(table)} characters of table"


# ----------------------------------------------------------------------------- killed runs
def test_journal_writes_each_line_through_to_disk(tmp_path, monkeypatch):
    """A line is in the file (and fsync'd) when write() returns, as strict JSON even for NaN and inf; an
    earlier file of the same name is kept once."""
    synced = []
    monkeypatch.setattr(journal.os, "fsync", lambda fd: synced.append(fd))
    path = tmp_path / "run" / "gpu_check.jsonl"
    path.parent.mkdir()
    path.write_text("old\n")
    j = journal.Journal(path)
    j.write({"kind": "check", "value": float("nan"), "p80": float("inf")})
    assert path.read_text() == '{"kind": "check", "value": "nan", "p80": "inf"}\n' and len(synced) == 1
    j.write({"kind": "summary"})
    assert len(_lines(path)) == 2 and len(synced) == 2
    j.close()
    assert (tmp_path / "run" / "gpu_check.prev.jsonl").read_text() == "old\n"


def test_killed_run_keeps_every_line_written_before(tmp_path):
    """SIGKILL (nothing can be done) and SIGTERM (the summary line is written) after the first case lines:
    every line in the file is complete JSON, and the report says what is missing."""
    procs = {}
    for sig in (signal.SIGKILL, signal.SIGTERM):
        out = tmp_path / sig.name
        cmd = [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)]
        procs[sig] = (subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE), out / "gpu_check.jsonl")  # fmt: skip
    deadline = time.monotonic() + 120
    for sig, (proc, path) in procs.items():
        while not (path.exists() and path.read_text().count("\n") >= 6):
            assert proc.poll() is None and time.monotonic() < deadline, "the dry run ended before 6 lines"
            time.sleep(0.05)
        proc.send_signal(sig)
    for sig, (proc, path) in procs.items():
        rc = proc.wait(timeout=60)
        lines = _lines(path)
        assert lines[0]["kind"] == "preflight" and lines[1]["kind"] == "plan" and len(lines) >= 6
        planned = sum(len(s["cases"]) for s in lines[1]["sections"])
        if sig == signal.SIGKILL:
            assert rc == -signal.SIGKILL and lines[-1]["kind"] != "summary"
        else:
            assert rc == 128 + signal.SIGTERM, proc.stderr.read()
            assert lines[-1]["kind"] == "summary" and lines[-1]["complete"] is False
            assert lines[-1]["signal"] == signal.SIGTERM
        status = "\n".join(tables.status_lines(lines))
        assert "INCOMPLETE" in status and "missing from" in status
        assert sum(len(v) for v in tables.missing(lines).values()) == planned - len(
            {r.get("case") for r in lines[2:] if r.get("case")}
        )


# ----------------------------------------------------------------------------- failures inside the run
@pytest.fixture
def ops(monkeypatch):
    return per_layer_ops(monkeypatch)


def test_a_wrong_kernel_fails_the_run_and_is_named(ops, monkeypatch, tmp_path, capsys):
    real = ops.backward_data
    monkeypatch.setattr(ops, "backward_data", lambda *a, **k: real(*a, **k).mul_(1.01))
    assert cli.main(["--dry-run", "--only", "correctness", "--out", str(tmp_path)]) == 1
    lines = _lines(tmp_path / "gpu_check.jsonl")
    failed = {r["what"] for r in lines if r.get("status") == "fail"}
    assert failed == {"backward_data"}
    assert all(r["status"] == "ok" for r in lines if r.get("what") == "gate.relu")
    assert lines[-1]["exit_status"] == 1
    assert "FAIL correctness backward_data" in capsys.readouterr().out


def test_a_crashing_case_does_not_stop_the_run(ops, monkeypatch, tmp_path):
    """The gate raises for bf16 only: the bf16 GLAI steps that run it crash (the per-layer ones, and the fused
    one whose cached patterns it computes; exit 1), every other case still runs, the same variants in fp16
    after them included."""
    real = ops.gate

    def gate(a, *args, **kwargs):
        if a.dtype == torch.bfloat16:
            raise RuntimeError("planted crash")
        return real(a, *args, **kwargs)

    monkeypatch.setattr(ops, "gate", gate)
    assert cli.main(["--dry-run", "--only", "steps", "--out", str(tmp_path)]) == 1
    lines = _lines(tmp_path / "gpu_check.jsonl")
    crashed = {r["case"] for r in lines if r.get("status") == "crash"}
    assert crashed == {
        "step q-cache bfloat16 B19 24-16x2-10",
        "step q-struct bfloat16 B19 24-16x2-10",
        "step f-qcache bfloat16 B19 24-16x2-10",
    }
    assert all("planted crash" in r["error"] and r["trace"] for r in lines if r.get("status") == "crash")
    ok = {r["case"] for r in lines if r.get("status") == "ok"}
    assert {"step eager bfloat16 B19 24-16x2-10", "step q-cache float16 B19 24-16x3-10"} <= ok
    assert len(ok) + len(crashed) + sum(r.get("status") == "skipped" for r in lines) == len(lines) - 3
    assert (
        lines[-1]["kind"] == "summary" and lines[-1]["crashed_cases"] == 3 and lines[-1]["exit_status"] == 1
    )


def test_cases_past_the_budget_are_recorded_as_skipped(ops, tmp_path):
    assert cli.main(["--dry-run", "--only", "kernels", "--budget-s", "1e-9", "--out", str(tmp_path)]) == 0
    lines = _lines(tmp_path / "gpu_check.jsonl")
    planned = lines[1]["sections"][0]["cases"]
    skipped = [r for r in lines if r.get("status") == "skipped"]
    assert [r["case"] for r in skipped] == planned and all("time budget" in r["error"] for r in skipped)


def test_fused_variants_run_once_glaimlp_takes_fused(ops, monkeypatch):
    """With a GLAIMLP that takes fused=, the three fused entries run with fused=True and the per-layer ones ask
    for fused=False; a shape the fused path refuses (ValueError) is recorded as skipped, not as a crash."""
    from bench.gpu.target import Dry
    from glai import nn as glai_nn

    asked = []

    class WithFused(glai_nn.GLAIMLP):
        def __init__(self, *args, fused=None, **kwargs):
            asked.append(fused)
            if fused and self.refuse:
                raise ValueError("fused=True: width 16 is past the fused path's limit")
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(glai_nn, "GLAIMLP", WithFused)
    point = plan.head_points("dry")[0]
    for refuse in (False, True):
        WithFused.refuse, asked[:] = refuse, []
        lines = []
        for variant in head_step.VARIANTS:
            if variant.model == "glai":
                assert head_step.unavailable(variant) is None
                case = steps.step_case(Dry(), variant, point, {"memory_gbps": 1.0})
                case.fn(lambda kind="check", ok=True, **f: lines.append({"kind": kind, "ok": ok, **f}))
        assert asked == [False, False, False, True, True, True, True]  # the last: the compiled fused head
        fused = lines[3:]
        if refuse:
            assert all(r["status"] == "skipped" and "not applicable" in r["error"] for r in fused)
        else:
            assert all(r["kind"] == "step" and r["value"] > 0 for r in fused)


# ----------------------------------------------------------------------------- compile count
def test_specialisation_keys_follow_triton_rules():
    assert count.arg_signature(1) == ("constexpr", 1)
    assert count.arg_signature(4096) == ("i32", "D") and count.arg_signature(10) == ("i32", "")
    assert count.arg_signature(2**33) == ("i64", "D") and count.arg_signature(None) == ("constexpr", None)
    t = torch.empty(3, 5, device="meta", dtype=torch.bfloat16)
    assert count.arg_signature(t) == ("*bfloat16", "D")
    cfg = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8, "num_warps": 8, "num_stages": 3}
    key = lambda n: count.specialisation(count.specialisation, cfg, (t, n), {"HAS_BIAS": True})  # noqa: E731
    assert key(16) == key(32) != key(10)
    assert count.launcher(key(16)) == count.launcher(key(10)) != count.launcher(key(1))


def test_count_compiles_replays_the_gpu_plan():
    res = _run("--count-compiles", timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    # the MLP baselines at every compiled head, and the two GLAI models compiled against themselves eager
    heads = set(plan.compiled_points("subset")) | set(headline.points(plan.GPU))
    compiled = len(heads) * sum(1 for v in head_step.VARIANTS if v.compile) + 3
    assert f"{compiled} torch.compile builds" in out, out
    for kernel in ("gate_kernel", "masked_matmul_kernel", "weight_grad_kernel", "fused_forward_kernel",
                   "fused_grad_data_kernel", "fused_grad_weights_kernel"):  # fmt: skip
        assert kernel in out
    total = int(out.split("total: ")[1].split()[0])
    assert 20 <= total <= 200, out  # the plan's shapes and dtypes, not one per launch
    assert "IEEE fp32" in out and "replay crash" not in out


# ----------------------------------------------------------------------------- the report
def test_report_of_a_dry_run(dry_run, tmp_path, capsys):
    _, path, _ = dry_run
    assert gpu_report.main([str(path)]) == 2  # a dry run's rows never go to bench/results unasked
    assert "dry run" in capsys.readouterr().err
    assert gpu_report.main([str(path), "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "## Kernels against cuBLAS" in out and "## Training steps of a head" in out
    rows = harness.read_csv(tmp_path / "microbench.csv")
    device = _lines(path)[0]["gpu"]
    assert {r["provider"] for r in rows} == {"triton", "cublas", "torch"} and {r["device"] for r in rows} == {
        device
    }
    assert {r["op"] for r in rows} == {
        "gate",
        "masked_forward",
        "backward_data",
        "backward_weights",
        "gemm",
        "copy",
    }
    heads = harness.read_csv(tmp_path / harness.HEAD_CSV)
    assert {r["provider"] for r in heads} == {r["variant"] for r in _lines(path) if r.get("kind") == "step"}
    assert {"eager", "q-cache", "q-struct", "struct", "c-dflt", "c-ro"} <= {r["provider"] for r in heads}
    assert len(list((tmp_path / "plots").glob("*.png"))) == 2 * 3 + 1


def test_report_of_a_truncated_file(dry_run, tmp_path, capsys):
    _, path, _ = dry_run
    text = path.read_text().splitlines(keepends=True)
    cut = tmp_path / "cut.jsonl"
    cut.write_text("".join(text[:20]) + text[20][: len(text[20]) // 2])  # killed in the middle of a line
    assert gpu_report.main([str(cut), "--results", str(tmp_path / "r"), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "INCOMPLETE" in out and "1 line(s) are not complete JSON" in out and "missing from steps" in out
