"""The tuner and ``glai-autotune`` on CPU: the fastest correct candidate wins and is used, pruned candidates are
never timed, GLAI_AUTOTUNE tunes only when asked, every flag and GLAI_CACHE_DIR is checked up front (one line,
exit status 2). The reference ops stand in for the kernels and a fake GPU identity for the device.
"""

import subprocess
import sys
import types

import _tuning_fakes
import pytest
import torch
from _tuning_fakes import FAKE, FAST, default, entry

from glai_kernels import launch_configs, reference, runtime, tuning
from glai_kernels import tuning_cache as cache
from glai_kernels.tools import autotune, tuner


@pytest.fixture
def fake_gpu(tmp_path, monkeypatch):
    yield from _tuning_fakes.fake_gpu(tmp_path, monkeypatch)


def test_tuning_labels_fp32_by_the_precision_the_ops_run(fake_gpu, monkeypatch):
    """``tune`` keys fp32 entries by the ops' current ``dot_precision``, and ``--dtypes tf32`` switches
    PyTorch's fp32 matmul precision (which the kernels follow) before timing."""
    precision = {"now": "tf32"}

    def gate(a, weight, bias, *, config):
        return reference.gate(a, weight, bias)

    ops = types.SimpleNamespace(gate=gate, dot_precision=lambda dtype: precision["now"])
    calls = iter(range(100))
    entries = tuner.tune(  # the second candidate timed is the fastest: not the default
        "gate", [(40, 48, 24)], torch.float32, ops=ops, timer=lambda fn: 0.5 if next(calls) == 1 else 1.0,
        quiet=True, device="cpu",
    )  # fmt: skip
    assert [e["dtype"] for e in entries] == ["tf32"]
    assert entries[0]["config"] != default(M=40, N=48, K=24)
    cache.save(FAKE, entries)
    launch_configs.reload()
    assert launch_configs.config_for("gate", 40, 48, 24, torch.float32, "tf32") == entries[0]["config"]
    assert launch_configs.config_for("gate", 40, 48, 24, torch.float32, "ieee") == default(M=40, N=48, K=24)
    precision["now"] = "ieee"
    assert (
        tuner.tune(
            "gate", [(40, 48, 24)], torch.float32, ops=ops, timer=lambda fn: 1.0, quiet=True, device="cpu"
        )[0]["dtype"]
        == "float32"
    )

    # An error of 1e-3 is TF32 rounding, but no IEEE fp32 result is that far off: a wrong result there.
    def gate_off(a, weight, bias, *, config):
        out, words = reference.gate(a, weight, bias)
        return out * (1 + 1e-3), words

    ops.gate = gate_off
    kw = dict(ops=ops, timer=lambda fn: 1.0, quiet=True, device="cpu")
    assert tuner.tune("gate", [(40, 48, 24)], torch.float32, **kw) == []
    precision["now"] = "tf32"
    assert tuner.tune("gate", [(40, 48, 24)], torch.float32, **kw)

    matmul = types.SimpleNamespace(fp32_precision="none")
    monkeypatch.setattr(torch.backends.cuda, "matmul", matmul)
    assert tuner.operand_dtype("tf32") == torch.float32 and matmul.fp32_precision == "tf32"
    assert tuner.operand_dtype("float32") == torch.float32 and matmul.fp32_precision == "ieee"
    assert tuner.operand_dtype("bfloat16") == torch.bfloat16 and matmul.fp32_precision == "ieee"


def test_list_exits_zero_and_prints_buckets(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv(cache.ENV_DIR, str(tmp_path))
    (tmp_path / "autotune").mkdir()
    (tmp_path / "autotune" / "broken.json").write_text("{")
    assert autotune.main(["--list", "--kernels", "gate"]) == 0
    out = capsys.readouterr().out
    assert "M<=64" in out and "N>4096" in out and "backward_weights" in out
    assert "64 per kernel" in out and "broken.json: unusable" in out and str(tmp_path / "autotune") in out


def test_list_as_a_module_in_a_fresh_process(tmp_path):
    env = {"GLAI_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(
        [sys.executable, "-m", "glai_kernels.tools.autotune", "--list"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    assert "shape buckets" in run.stdout and "128x128x32 group 8 warps 8 stages 3" in run.stdout


def test_without_gpu_tuning_refuses_clearly(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert autotune.main(["--quick"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
    assert autotune.main(["--list", "--dtypes", "float64"]) == 2


BAD_FLAGS = {  # argv -> what the one line must name
    "zero batch": (
        ["--batch", "0,512"],
        "argument --batch: expected comma-separated positive integers, got '0,512'",
    ),
    "negative width": (["--width", "-4"], "argument --width: expected comma-separated positive integers"),
    "not a number": (["--batch", "64,x"], "argument --batch: expected comma-separated positive integers"),
    "empty list": (["--width", ","], "argument --width: expected comma-separated positive integers"),
    "zero rep": (["--rep", "0"], "argument --rep: expected a positive number of milliseconds, got '0'"),
    "nan rep": (["--rep", "nan"], "argument --rep: expected a positive number of milliseconds"),
    "unknown kernel": (
        ["--kernels", "gate,conv"],
        "argument --kernels: unknown name 'conv'; choose from gate",
    ),
    "no kernel": (["--kernels", ","], "argument --kernels: expected one or more of gate"),
    "unknown dtype": (
        ["--dtypes", "float64"],
        "argument --dtypes: unknown name 'float64'; choose from float16",
    ),
    "unknown flag": (["--fast"], "unrecognized arguments: --fast"),
}


@pytest.mark.parametrize("name", list(BAD_FLAGS))
def test_bad_flags_get_one_line_and_status_2(name, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv(cache.ENV_DIR, str(tmp_path))
    argv, message = BAD_FLAGS[name]
    for extra in ([], ["--list"]):  # checked before anything runs, --list included
        assert autotune.main(argv + extra) == 2
        err = capsys.readouterr().err
        assert err.startswith("glai-autotune: ") and message in err and err.count("\n") == 1, err


def test_cache_dir_must_be_a_directory(capsys, tmp_path, monkeypatch):
    a_file = tmp_path / "cache.txt"
    a_file.write_text("not a folder")
    monkeypatch.setenv(cache.ENV_DIR, str(a_file))
    assert autotune.main(["--list"]) == 2
    err = capsys.readouterr().err
    assert (
        f"GLAI_CACHE_DIR must be a directory (or a path where one can be made), got '{a_file}': it is a file"
        in err
    )
    monkeypatch.setenv(cache.ENV_DIR, str(a_file / "below"))
    assert autotune.main(["--list"]) == 2
    assert f"'{a_file}' above it is a file" in capsys.readouterr().err
    monkeypatch.setenv(cache.ENV_DIR, str(tmp_path / "new" / "folder"))  # not there yet: made when written
    assert autotune.main(["--list"]) == 0 and cache.check_cache_dir() is None
    assert autotune.main(["--list", "--cache-dir", str(a_file)]) == 2
    assert "--cache-dir must be a directory" in capsys.readouterr().err
    # The check other commands reuse: None when unset or fine, one line when not.
    monkeypatch.delenv(cache.ENV_DIR)
    assert cache.check_cache_dir() is None and cache.check_cache_dir(tmp_path) is None
    assert cache.check_cache_dir(a_file, "--out").startswith("--out must be a directory")


def test_bad_flag_in_a_fresh_process_prints_no_traceback(tmp_path):
    env = {"GLAI_CACHE_DIR": str(tmp_path / "f"), "PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": ""}
    (tmp_path / "f").write_text("")
    run = subprocess.run(
        [sys.executable, "-m", "glai_kernels.tools.autotune", "--batch", "0"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr and run.stderr.count("\n") == 1, run.stderr


def test_tuner_prunes_spilling_candidates_before_timing(fake_gpu):
    """A candidate the pruning rule rejects (compiled, it spills) is never run nor timed; the default is never
    pruned, so there is always something to fall back to."""
    ran = []

    def gate(a, weight, bias, *, config):
        ran.append(tuning.describe(config))
        return reference.gate(a, weight, bias)

    ops = types.SimpleNamespace(gate=gate, dot_precision=lambda dtype: "ieee")
    spilling = {tuning.describe(c) for c in tuning.SEARCH_SPACE["gate"][::2]}
    asked = []

    def prune(kernel, key, configs):
        asked.extend(tuning.describe(c) for c in configs)
        return {tuning.describe(c): "spills 8 bytes" for c in configs if tuning.describe(c) in spilling}

    shapes = [(40, 48, 24), (2000, 48, 24)]
    kw = dict(ops=ops, timer=lambda fn: (fn(), 1.0)[1], quiet=True, device="cpu", prune=prune)
    entries = tuner.tune("gate", shapes, torch.float32, **kw)
    assert entries and not spilling & set(ran) and len(set(ran)) > 1
    assert len(asked) == len(set(asked))  # each candidate compiled once, not once per shape
    every = dict(kw, prune=lambda kernel, key, configs: {tuning.describe(c): "spills" for c in configs})
    everything = tuner.tune("gate", shapes[:1], torch.float32, **every)
    assert [e["config"] for e in everything] == [default(M=40, N=48, K=24)]


def test_spill_check_compiles_for_the_gpus_architecture(monkeypatch):
    """The pruning rule refuses by ``lowering.refusal``, the lowering tests' criterion: a spill or more shared
    memory than the architecture has drops a candidate; one that does not compile is left to the timing loop."""
    from glai_kernels.tools import lowering

    compiled = []

    def lower(kernel, M, N, K, key, c, capability, **variant):
        compiled.append((kernel, key, capability))
        if c["BLOCK_M"] == 32:
            raise RuntimeError("does not compile")  # left to the timing loop, which says why
        fig = {"registers": 128, "spill_stores": 0, "spill_loads": 0, "shared": 65536}
        if c["BLOCK_N"] == 256:
            fig.update(spill_stores=96, spill_loads=96)
        elif c["num_stages"] >= 5:
            fig.update(shared=lowering.SHARED_LIMIT[90] + 4)
        return fig

    monkeypatch.setattr(lowering, "lower", lower)
    monkeypatch.setattr(lowering, "_spill_memo", {})
    space = tuning.candidates("masked_forward", "bfloat16", (9, 0), tma=True)
    dropped = tuner.spill_check((9, 0), jobs=1)("masked_forward", "bfloat16", space)
    assert set(compiled) == {("masked_forward", "bfloat16", 90)} and len(compiled) == len(space)
    wide = {tuning.describe(c) for c in space if c["BLOCK_N"] == 256 and c["BLOCK_M"] != 32}
    deep = {
        tuning.describe(c)
        for c in space
        if c["num_stages"] >= 5 and c["BLOCK_N"] != 256 and c["BLOCK_M"] != 32
    }
    assert wide and set(dropped) == wide | deep
    assert {dropped[d] for d in wide} == {"spills 96 B stores / 96 B loads"}
    assert {dropped[d] for d in deep} <= {
        f"needs {lowering.SHARED_LIMIT[90] + 4} B of shared memory, sm_90 has 232448"
    }


def test_tune_picks_the_fastest_correct_config_and_it_is_used(fake_gpu):
    """The tuning loop with the reference standing in for the kernels, on CPU: a candidate that computes a wrong
    result or fails to compile is never chosen, however fast it claims to be."""
    space = tuning.SEARCH_SPACE["gate"]
    wrong, broken, best = space[-1], space[-2], space[3]
    last, tries = {}, []

    class OutOfResources(
        Exception
    ):  # what Triton raises for a tile that needs more shared memory than exists
        pass

    def gate(a, weight, bias, *, config):
        last["config"] = config
        if config == broken:
            tries.append(config)
            raise OutOfResources("shared memory")
        out, words = reference.gate(a, weight, bias)
        return (out + 1.0, words) if config == wrong else (out, words)

    def timer(fn):
        fn()
        return {str(wrong): 0.1, str(broken): 0.1, str(best): 0.5}.get(str(last["config"]), 1.0)

    ops = types.SimpleNamespace(gate=gate, dot_precision=lambda dtype: "ieee")
    shapes = [(40, 48, 24), (2000, 48, 24)]
    entries = tuner.tune("gate", shapes, torch.float32, ops=ops, timer=timer, quiet=True, device="cpu")
    assert [e["bucket"] for e in entries] == [[0, 0, 0], [2, 0, 0]]
    assert all(e["config"] == best and e["ms"] == 0.5 and e["default_ms"] == 1.0 for e in entries)
    assert len(tries) == 1  # a tile that does not compile is not retried at the next shape
    cache.save(FAKE, entries)
    launch_configs.reload()
    assert launch_configs.config_for("gate", 40, 48, 24, torch.float32) == best


def test_rel_error_counts_flipped_bits_and_nan():
    words = torch.tensor([[0b1011, -1]], dtype=torch.int32)
    flipped = words ^ torch.tensor([[0b0100, 0]], dtype=torch.int32)
    assert tuner.rel_error(flipped, words) == pytest.approx(1 / 64)
    ref = torch.randn(5, 7)
    assert tuner.rel_error(ref.clone(), ref) == 0.0
    assert tuner.rel_error(ref * 1.5, ref) == pytest.approx(0.5)
    assert tuner.rel_error(torch.full_like(ref, float("nan")), ref) == float("inf")


def test_tuning_inside_a_step_only_when_asked(fake_gpu, monkeypatch):
    calls = []

    def fake_tune(kernel, shapes, dtype, quiet=False):
        calls.append((kernel, tuple(shapes), dtype))
        (M, N, K) = shapes[0]
        cache.save(FAKE, [entry(kernel=kernel, bucket=tuning.bucket_of(M, N, K))])

    monkeypatch.setattr(tuner, "tune_and_save", fake_tune)
    monkeypatch.delenv("GLAI_AUTOTUNE", raising=False)
    assert launch_configs.config_for("gate", 100, 300, 300, torch.float32) == default()
    assert calls == []  # never unless asked
    monkeypatch.setenv("GLAI_AUTOTUNE", "1")
    launch_configs.reload()
    assert launch_configs.config_for("gate", 100, 300, 300, torch.float32) == FAST
    assert (
        launch_configs.config_for("gate", 120, 290, 310, torch.float32) == FAST
    )  # same bucket: memoised, not re-tuned
    assert calls == [("gate", ((100, 300, 300),), torch.float32)]

    def failing_tune(*args, **kwargs):
        raise RuntimeError("no kernels")

    monkeypatch.setattr(tuner, "tune_and_save", failing_tune)
    with pytest.warns(cache.TuningCacheWarning, match="no kernels"):
        got = launch_configs.config_for("backward_data", 100, 300, 300, torch.float32)
    assert got == default("backward_data")


def test_cli_tunes_prints_and_persists(fake_gpu, monkeypatch, capsys):
    """``glai-autotune`` end to end, with the reference ops standing in for the kernels and a CPU 'GPU'."""
    space = tuning.SEARCH_SPACE["masked_forward"]

    def with_config(op):
        def run(*args, config):
            return op(*args)

        return run

    ops = types.SimpleNamespace(
        dot_precision=lambda dtype: "ieee", **{k: with_config(getattr(reference, k)) for k in tuning.KERNELS}
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(runtime, "device_info", lambda index: ((8, 0), 108))
    monkeypatch.setattr(cache, "identity", lambda index: FAKE)
    monkeypatch.setattr(tuner, "kernel_ops", lambda: ops)
    monkeypatch.setattr(tuner, "DEVICE", "cpu")
    monkeypatch.setattr(tuner, "gpu_setting", lambda: {"capability": None, "tma": False, "prune": None})
    # `--dtypes float32` sets the process's fp32 matmul precision: on a stand-in, not this test process's.
    monkeypatch.setattr(torch.backends.cuda, "matmul", types.SimpleNamespace(fp32_precision="none"))
    # 14 candidates at M = 48: the small-batch default first, then the 13 of the space. The fifth is fastest.
    assert default("masked_forward", 48, 40, 40) not in space and len(space) == 13
    timings = iter(range(10_000))
    monkeypatch.setattr(tuner, "_do_bench", lambda fn, rep: 0.5 if next(timings) % 14 == 4 else 2.0)
    args = ["--kernels", "masked_forward", "--dtypes", "float32", "--batch", "48", "--width", "40"]
    assert autotune.main(args) == 0
    out = capsys.readouterr().out
    assert "masked_forward" in out and "4.00x the default" in out and str(fake_gpu) in out
    assert launch_configs.config_for("masked_forward", 48, 40, 40, torch.float32) == space[3]
    assert autotune.main([*args, "--dry-run"]) == 0 and "nothing written" in capsys.readouterr().out
