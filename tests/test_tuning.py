"""The autotuning cache, ``config_for`` / ``launch_config``, the tuner and the CLI: read, write, merge, key
mismatch, corruption, pruning, flag checks, all on CPU.

A fake GPU identity stands in for the device, so every path runs on a machine without one.
"""

import json
import subprocess
import sys
import types
import warnings

import pytest
import torch

from glai_kernels import autotune, launch_configs, reference, tuner, tuning
from glai_kernels import tuning_cache as cache

FAKE = cache.Identity("Fake GPU 80GB", "3.6.0", "0123456789abcdef")
FAST = {"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 64, "GROUP_M": 4, "num_warps": 2, "num_stages": 5}


@pytest.fixture
def fake_gpu(tmp_path, monkeypatch):
    """An empty cache folder, a fake GPU identity, and config_for out of interpreter mode."""
    monkeypatch.setenv(cache.ENV_DIR, str(tmp_path))
    monkeypatch.setattr(tuning, "interpreting", lambda: False)
    monkeypatch.setattr(launch_configs, "_current_identity", lambda index: FAKE)
    launch_configs.reload()
    yield cache.cache_path(FAKE.gpu, FAKE.triton)
    launch_configs.reload()


def entry(kernel="gate", dtype="float32", bucket=(1, 1, 1), config=FAST):
    return {"kernel": kernel, "dtype": dtype, "bucket": list(bucket), "config": dict(config), "ms": 0.5}


FAST = tuning.check_config(FAST)  # the complete form config_for returns (flags at 0)


def valid_file(**override) -> dict:
    data = {"format": cache.FORMAT, "version": cache.VERSION, **FAKE._asdict(), "entries": [entry()]}
    data.update(override)
    return data


def default(kernel="gate", M=100, N=300, K=300, key="float32"):
    """The default without a GPU (Ampere tiles), as config_for gives it on a machine with no device."""
    return tuning.default_config(kernel, M, N, K, key, None)


def test_buckets_split_at_the_edges():
    assert tuning.bucket_of(64, 256, 256) == (0, 0, 0)
    assert tuning.bucket_of(65, 257, 4097) == (1, 1, 3)
    assert tuning.bucket_of(100_000, 1, 1024) == (3, 0, 1)
    assert all(tuning.bucket_of(*tuning.representative(b)) == b for b in tuning.all_buckets())
    assert tuning.bucket_label((0, 3, 1)) == "M<=64 N>4096 256<K<=1024"


def test_interpreter_and_unknown_kernel():
    assert (
        launch_configs.config_for("gate", 5, 7, 9, torch.float32)["BLOCK_M"] == 16
    )  # conftest turns the interpreter on
    with pytest.raises(ValueError, match="unknown kernel"):
        launch_configs.config_for("gemm", 5, 7, 9, torch.float32)


def test_no_gpu_gives_the_default_and_says_so(monkeypatch):
    monkeypatch.setattr(tuning, "interpreting", lambda: False)
    monkeypatch.setattr(launch_configs, "_current_identity", lambda index: None)
    launch_configs.reload()
    got = launch_configs.launch_config("masked_forward", 32, 300, 300, torch.float32, "ieee")
    assert got.config == default(M=32) and got.source == "default" and got.arch == "ampere"
    assert default(M=32)["BLOCK_M"] == 32 and default(M=4096)["BLOCK_M"] == 128
    launch_configs.reload()


def test_launch_config_names_its_source(fake_gpu):
    """What the GPU script records with every timing: the configuration and where it came from."""
    interp = launch_configs.launch_config("gate", 100, 300, 300, torch.float32)
    assert interp.source == "default"  # the fixture took the interpreter away
    cache.save(FAKE, [entry(), entry(bucket=(3, 3, 3), config=dict(FAST, num_stages=2))])
    launch_configs.reload()
    assert launch_configs.launch_config("gate", 100, 300, 300, torch.float32, "ieee")[:2] == (FAST, "tuned")
    near = launch_configs.launch_config("gate", 600, 300, 300, torch.float32, "ieee")
    assert near.source == "tuned-nearest" and near.config == FAST
    other = launch_configs.launch_config("masked_forward", 100, 300, 300, torch.float32, "ieee")
    assert other.source == "default" and other.config == default("masked_forward") and other.splits == 1
    # The precision defaults to what PyTorch's fp32 matmul setting says: IEEE unless TF32 was allowed.
    assert launch_configs.launch_config("gate", 100, 300, 300, torch.float32).config == FAST
    with pytest.raises(ValueError, match="unknown kernel"):
        launch_configs.launch_config("conv", 1, 1, 1, torch.float32)


def test_launch_config_gives_the_weight_gradient_split(fake_gpu, monkeypatch):
    """The split of the batch depends on the GPU's multiprocessor count: part of what fixes the bits."""
    monkeypatch.setattr(launch_configs, "_device_index", lambda device: 0)
    for sms, want in ((132, 2), (8, 1)):
        monkeypatch.setattr(launch_configs, "device_info", lambda index, sms=sms: ((9, 0), sms))
        launch_configs.reload()
        got = launch_configs.launch_config("backward_weights", 10, 4096, 8192, torch.bfloat16)
        assert got.arch == "hopper" and got.config["BLOCK_N"] == 64 and got.splits == want, got


def test_launch_config_under_the_interpreter():
    got = launch_configs.launch_config("backward_weights", 5, 7, 9, torch.float16)
    assert got.source == "interpreter" and got.config == tuning.check_config(tuning.INTERPRETER)
    import glai_kernels

    assert glai_kernels.launch_config is launch_configs.launch_config  # the name the GPU script uses


def test_write_then_config_for_returns_the_cached_config(fake_gpu):
    assert launch_configs.config_for("gate", 100, 300, 300, torch.float32) == default()  # nothing cached yet
    path = cache.save(FAKE, [entry()])
    assert path == fake_gpu and path.parent.name == "autotune"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # the temporary file was renamed away
    data = json.loads(path.read_text())
    assert (data["gpu"], data["triton"], data["kernel_source"]) == tuple(FAKE)
    launch_configs.reload()
    cfg = launch_configs.config_for("gate", 100, 300, 300, torch.float32)
    assert cfg == FAST
    cfg["BLOCK_M"] = 1  # callers get a copy: the memo is not theirs to change
    assert launch_configs.config_for("gate", 100, 300, 300, torch.float32) == FAST
    # Another kernel has nothing tuned: its default, not gate's configuration.
    assert launch_configs.config_for("backward_data", 100, 300, 300, torch.float32) == default(
        "backward_data"
    )


def test_nearest_bucket_and_same_size_dtype(fake_gpu):
    far = dict(FAST, num_stages=2)
    cache.save(FAKE, [entry(dtype="bfloat16"), entry(dtype="bfloat16", bucket=(3, 3, 3), config=far)])
    launch_configs.reload()
    assert launch_configs.config_for("gate", 100, 300, 300, torch.bfloat16) == FAST  # its own bucket
    assert launch_configs.config_for("gate", 8000, 8000, 8000, torch.bfloat16) == far
    assert (
        launch_configs.config_for("gate", 600, 300, 300, torch.bfloat16) == FAST
    )  # (2,1,1): nearest is (1,1,1)
    assert launch_configs.config_for("gate", 100, 300, 300, torch.float16) == FAST  # fp16 tiles as bf16 does
    assert launch_configs.config_for("gate", 100, 300, 300, torch.float32) == default()  # fp32 does not


def test_tf32_is_keyed_apart_from_ieee_fp32(fake_gpu):
    """fp32 operands multiplied as TF32 (tensor cores) and as IEEE fp32 (FMA units) have different best tiles:
    each reads its own entries, and neither stands in for the other as the nearest bucket."""
    ieee, tf32 = FAST, dict(FAST, BLOCK_M=128, num_warps=8)
    cache.save(FAKE, [entry(dtype="float32", config=ieee), entry(dtype="tf32", config=tf32)])
    launch_configs.reload()
    assert launch_configs.config_for("gate", 100, 300, 300, torch.float32) == ieee
    assert launch_configs.config_for("gate", 100, 300, 300, torch.float32, "ieee") == ieee
    assert launch_configs.config_for("gate", 100, 300, 300, torch.float32, "tf32") == tf32
    assert (
        launch_configs.config_for("gate", 8000, 8000, 8000, torch.float32, "tf32") == tf32
    )  # nearest: tf32's own
    assert launch_configs.config_for("gate", 100, 300, 300, torch.bfloat16, "tf32") == default(key="bfloat16")
    # The host functions ask with the precision their launch uses.
    launch = pytest.importorskip("glai_kernels.triton_launch", reason="the Triton kernels need Triton")
    assert launch.choose_config("gate", 100, 300, 300, torch.float32, "tf32", None) == (tf32, "tuned")
    assert launch.choose_config("gate", 100, 300, 300, torch.float32, "ieee", None) == (ieee, "tuned")
    cache.save(FAKE, [entry(kernel="backward_data", dtype="tf32", config=tf32)])
    launch_configs.reload()
    assert launch_configs.config_for("backward_data", 100, 300, 300, torch.float32) == default(
        "backward_data"
    )
    cache.save(FAKE, [entry(kernel="masked_forward", dtype="float32", config=ieee)])
    launch_configs.reload()
    got = launch_configs.config_for("masked_forward", 100, 300, 300, torch.float32, "tf32")
    assert got == default("masked_forward", key="tf32")


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


def test_save_merges_and_replaces(fake_gpu):
    cache.save(FAKE, [entry(), entry(kernel="backward_weights")])
    newer = dict(FAST, num_warps=4)
    cache.save(FAKE, [entry(config=newer)])
    entries = json.loads(fake_gpu.read_text())["entries"]
    assert len(entries) == 2
    assert {e["kernel"]: e["config"]["num_warps"] for e in entries} == {"gate": 4, "backward_weights": 2}


def _config_twice_warns_once(dtype=torch.float32):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = launch_configs.config_for("gate", 100, 300, 300, dtype)
        second = launch_configs.config_for("backward_data", 100, 300, 300, dtype)
    mine = [w for w in caught if issubclass(w.category, cache.TuningCacheWarning)]
    assert len(mine) == 1, [str(w.message) for w in caught]
    assert first == default() and second == default("backward_data")
    return str(mine[0].message)


def _truncated() -> bytes:
    text = json.dumps(valid_file()).encode()
    return text[: len(text) // 2]


BAD_FILES = {
    "garbage bytes": b"\x00\xff\xfe garbage \x9c" * 10,
    "empty": b"",
    "truncated": _truncated(),
    "a list": b"[1, 2, 3]",
    "other format": json.dumps(valid_file(format="something-else")).encode(),
    "newer schema": json.dumps(valid_file(version=99)).encode(),
    "no gpu field": json.dumps({k: v for k, v in valid_file().items() if k != "gpu"}).encode(),
    "entries not a list": json.dumps(valid_file(entries={"gate": 1})).encode(),
    "entry not a dict": json.dumps(valid_file(entries=["gate"])).encode(),
    "missing config key": json.dumps(valid_file(entries=[entry(config={"BLOCK_M": 64})])).encode(),
    "zero tile": json.dumps(valid_file(entries=[entry(config=dict(FAST, BLOCK_N=0))])).encode(),
    "odd tile": json.dumps(valid_file(entries=[entry(config=dict(FAST, BLOCK_K=48))])).encode(),
    "string warps": json.dumps(valid_file(entries=[entry(config=dict(FAST, num_warps="4"))])).encode(),
    "bad bucket": json.dumps(valid_file(entries=[entry(bucket=(1, 1))])).encode(),
    "unknown kernel": json.dumps(valid_file(entries=[entry(kernel="conv")])).encode(),
    "unknown dtype": json.dumps(valid_file(entries=[entry(dtype="float99")])).encode(),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_corrupt_file_gives_one_warning_and_defaults(fake_gpu, name):
    fake_gpu.parent.mkdir(parents=True)
    fake_gpu.write_bytes(BAD_FILES[name])
    message = _config_twice_warns_once()
    assert str(fake_gpu) in message and "default" in message


@pytest.mark.parametrize("field", ["gpu", "triton", "kernel_source"])
def test_foreign_file_is_ignored(fake_gpu, field):
    fake_gpu.parent.mkdir(parents=True)
    fake_gpu.write_text(json.dumps(valid_file(**{field: "something else"})))
    assert "something else" in _config_twice_warns_once()
    # The same file with the right identity is used: the mismatch alone made the difference.
    fake_gpu.write_text(json.dumps(valid_file()))
    launch_configs.reload()
    assert launch_configs.config_for("gate", 100, 300, 300, torch.float32) == FAST


def test_save_over_a_corrupt_or_stale_file_drops_it(fake_gpu):
    fake_gpu.parent.mkdir(parents=True)
    fake_gpu.write_text(
        json.dumps(valid_file(kernel_source="old", entries=[entry(kernel="backward_weights")]))
    )
    cache.save(FAKE, [entry()])
    data = json.loads(fake_gpu.read_text())
    assert data["kernel_source"] == FAKE.kernel_source and [e["kernel"] for e in data["entries"]] == ["gate"]
    fake_gpu.write_bytes(b"{not json")
    cache.save(FAKE, [entry()])
    assert cache.read(fake_gpu, FAKE)[1] is None


def test_kernel_source_hash_follows_the_text(tmp_path):
    a, b = tmp_path / "triton_ops.py", tmp_path / "k.py"
    a.write_text("def gate(): pass\n")
    b.write_text("x = 1\n")
    before = cache.kernel_source_hash([a, b])
    assert cache.kernel_source_hash([a, b]) == before
    b.write_text("x = 2\n")
    assert cache.kernel_source_hash([a, b]) != before


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv(cache.ENV_DIR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_root() == tmp_path / "xdg" / "glai"
    monkeypatch.setenv(cache.ENV_DIR, str(tmp_path / "mine"))
    assert cache.cache_root() == tmp_path / "mine"
    monkeypatch.delenv(cache.ENV_DIR)
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_root() == tmp_path / "home" / ".cache" / "glai"
    name = cache.cache_path("NVIDIA H200 / MIG 1g.18gb", "3.6.0+git").name
    assert name == "nvidia-h200-mig-1g.18gb--triton-3.6.0-git.json"


def test_check_config():
    assert tuning.check_config(dict(FAST)) == FAST
    for bad in (
        {},
        dict(FAST, extra=1),
        dict(FAST, BLOCK_M=True),
        dict(FAST, num_stages=9),
        dict(FAST, BLOCK_M=8),
    ):
        with pytest.raises(ValueError):
            tuning.check_config(bad)


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
        [sys.executable, "-m", "glai_kernels.autotune", "--list"], capture_output=True, text=True, env=env
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
        [sys.executable, "-m", "glai_kernels.autotune", "--batch", "0"],
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
    from glai_kernels import lowering

    compiled = []

    def spills(kernel, key, c, arch):
        compiled.append((kernel, key, arch))
        if c["BLOCK_N"] == 256:
            return 96
        if c["BLOCK_M"] == 32:
            raise RuntimeError("does not compile")  # left to the timing loop, which says why
        return 0

    monkeypatch.setattr(lowering, "spills", spills)
    space = tuning.candidates("masked_forward", "bfloat16", (9, 0), tma=True)
    dropped = tuner.spill_check((9, 0), jobs=1)("masked_forward", "bfloat16", space)
    assert set(compiled) == {("masked_forward", "bfloat16", 90)} and len(compiled) == len(space)
    wide = {tuning.describe(c) for c in space if c["BLOCK_N"] == 256}
    assert wide and set(dropped) == wide and set(dropped.values()) == {"spills 96 bytes of registers"}


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
    monkeypatch.setattr(launch_configs, "device_info", lambda index: ((8, 0), 108))
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
