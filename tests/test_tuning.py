"""The autotuning cache and the lookup (``config_for`` / ``launch_config``): read, write, merge, key mismatch,
corruption, nearest buckets, sources. A fake GPU identity stands in for the device, so every path runs on a
machine without one.
"""

import json
import warnings

import _tuning_fakes
import pytest
import torch
from _tuning_fakes import FAKE, FAST, default, entry, valid_file

from glai_kernels import launch_configs, runtime, tuning
from glai_kernels import tuning_cache as cache


@pytest.fixture
def fake_gpu(tmp_path, monkeypatch):
    yield from _tuning_fakes.fake_gpu(tmp_path, monkeypatch)


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
    monkeypatch.setattr(runtime, "interpreting", lambda: False)
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
    monkeypatch.setattr(runtime, "device_index", lambda device: 0)
    for sms, want in ((132, 2), (8, 1)):
        monkeypatch.setattr(runtime, "device_info", lambda index, sms=sms: ((9, 0), sms))
        launch_configs.reload()
        got = launch_configs.launch_config("backward_weights", 10, 4096, 8192, torch.bfloat16)
        assert got.arch == "hopper" and got.config["BLOCK_N"] == 64 and got.splits == want, got


def test_launch_config_under_the_interpreter():
    got = launch_configs.launch_config("backward_weights", 5, 7, 9, torch.float16)
    assert got.source == "interpreter" and got.config == tuning.check_tile_config(tuning.INTERPRETER)
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
    launch = pytest.importorskip("glai_kernels.per_layer_launch", reason="the Triton kernels need Triton")
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
    a, b = tmp_path / "per_layer_ops.py", tmp_path / "k.py"
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
    assert tuning.check_tile_config(dict(FAST)) == FAST
    for bad in (
        {},
        dict(FAST, extra=1),
        dict(FAST, BLOCK_M=True),
        dict(FAST, num_stages=9),
        dict(FAST, BLOCK_M=8),
    ):
        with pytest.raises(ValueError):
            tuning.check_tile_config(bad)
