"""Bad input through the public API and the command lines: every case names the call and the message it gives.

The first word of each case says what the same input did before these checks:
- ``silent``: silently wrong or silently accepted (the worst kind, listed first in each part);
- ``unclear``: an error that did not say what was expected and what came (a traceback, a bare KeyError, a late
  failure after all the training, a wrong exit status);
- ``kept``: already a clear error, kept as it is (messages touched by these changes);
- ``new``: input to an API that did not exist before (conversion, device cache, checked files).
"""

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import glai
from glai import GLAIMLP, FreezeMonitor, NonFiniteError, PatternCache, PatternDataset, PhaseError
from glai.structure_check import CachedPatterns
from glai.train import plain_mlp, train_classifier

# ----------------------------------------------------------------- command lines

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")

DEMO = [
    pytest.param(
        ["--lr", "inf"],
        {},
        "argument --lr: expected a finite number > 0, got 'inf'",
        id="silent: glai-demo --lr inf",
    ),
    pytest.param(
        [],
        {"GLAI_CACHE_DIR": "{file}"},
        "environment variable GLAI_CACHE_DIR: expected a folder (created if missing), got '{file}', which is a file",
        id="silent: glai-demo with GLAI_CACHE_DIR a file",
    ),
    pytest.param(
        [],
        {"GLAI_AUTOTUNE": "no"},
        "environment variable GLAI_AUTOTUNE: expected 0 or 1, got 'no'",
        id="silent: glai-demo with GLAI_AUTOTUNE=no (read as on)",
    ),
    pytest.param(
        ["--out", "{file}"],
        {},
        "argument --out: expected a folder (created if missing), got '{file}', which is a file",
        id="unclear: glai-demo --out <a file>",
    ),
    pytest.param(
        ["--out", "{file}/sub"],
        {},
        "got '{file}/sub', which cannot be created: '{file}' is a file",
        id="unclear: glai-demo --out <under a file>",
    ),
    pytest.param(
        ["--device", "foo"],
        {},
        "argument --device: expected a torch device (cpu, cuda, cuda:1, ...) or auto, got 'foo'",
        id="unclear: glai-demo --device foo",
    ),
    pytest.param(
        ["--device", "cuda"],
        {},
        "argument --device: expected a device this machine has, got 'cuda': CUDA is not available",
        id="unclear: glai-demo --device cuda without CUDA",
        marks=NO_CUDA,
    ),
    pytest.param(
        ["--data-seed", "-1"],
        {},
        "argument --data-seed: expected an int in [0, 4294967295], got -1",
        id="unclear: glai-demo --data-seed -1",
    ),
    pytest.param(
        ["--seed", str(2**70)],
        {},
        f"argument --seed: expected an int in [-9223372036854775808, 18446744073709551615], got {2**70}",
        id="unclear: glai-demo --seed 2**70",
    ),
    pytest.param(
        ["--lr", "-1"],
        {},
        "argument --lr: expected a finite number > 0, got '-1'",
        id="kept: glai-demo --lr -1",
    ),
    pytest.param(
        ["--hidden", "0"],
        {},
        "argument --hidden: expected an int >= 1, got 0",
        id="kept: glai-demo --hidden 0",
    ),
    pytest.param(
        ["--batch-size", "-3"],
        {},
        "argument --batch-size: expected an int >= 1, got -3",
        id="kept: glai-demo --batch-size -3",
    ),
    pytest.param(
        ["--samples", "10"],
        {},
        "argument --samples: expected an int >= 20, got 10",
        id="kept: glai-demo --samples 10",
    ),
    pytest.param(
        ["--epochs", "0"],
        {},
        "argument --epochs: expected an int >= 1, got 0",
        id="kept: glai-demo --epochs 0",
    ),
    pytest.param(
        ["--threshold", "2"],
        {},
        "argument --threshold: expected a fraction of flipped bits in [0, 1], got '2'",
        id="kept: glai-demo --threshold 2",
    ),
    pytest.param(
        ["--reduction", "3"],
        {},
        "--reduction 3 must divide --hidden, got 256",
        id="kept: glai-demo --reduction 3",
    ),
]

EXPERIMENT = [
    pytest.param(
        ["--preset", "tiny", "--out", "{nonempty}"],
        {},
        "argument --out: expected a new or empty folder, got '{nonempty}', which holds old.txt; pass --overwrite",
        id="silent: glai-experiment --out <a folder with files> (written over)",
    ),
    pytest.param(
        ["--quick", "--preset", "full"],
        {},
        "argument --quick: conflicts with --preset full (--quick means --preset quick)",
        id="silent: glai-experiment --quick --preset full",
    ),
    pytest.param(
        ["--quick", "--preset", "tiny"],
        {},
        "argument --quick: conflicts with --preset tiny",
        id="silent: glai-experiment --quick --preset tiny",
    ),
    pytest.param(
        ["--preset", "tiny"],
        {"GLAI_CACHE_DIR": "{file}"},
        "environment variable GLAI_CACHE_DIR: expected a folder (created if missing), got '{file}', which is a file",
        id="silent: glai-experiment with GLAI_CACHE_DIR a file",
    ),
    pytest.param(
        ["--preset", "tiny", "--out", "{file}"],
        {},
        "argument --out: expected a folder (created if missing), got '{file}', which is a file",
        id="unclear: glai-experiment --out <a file>",
    ),
    pytest.param(
        ["--from-json", "{missing}"],
        {},
        "argument --from-json: expected a results.json written by glai-experiment, got '{missing}', which cannot be read (No such file or directory)",
        id="unclear: glai-experiment --from-json <missing>",
    ),
    pytest.param(
        ["--from-json", "{locked}"],
        {},
        "got '{locked}', which cannot be read (Permission denied)",
        id="unclear: glai-experiment --from-json <unreadable>",
    ),
    pytest.param(
        ["--from-json", "{folder}"],
        {},
        "got '{folder}', which is a folder",
        id="unclear: glai-experiment --from-json <a folder>",
    ),
    pytest.param(
        ["--from-json", "{file}"],
        {},
        "got '{file}', which is not JSON (Expecting value: line 1 column 1",
        id="unclear: glai-experiment --from-json <not JSON>",
    ),
    pytest.param(
        ["--from-json", "{foreign}"],
        {},
        "got '{foreign}', which is not one (no 'meta' field)",
        id="unclear: glai-experiment --from-json <foreign JSON>",
    ),
    pytest.param(
        ["--device", "foo"],
        {},
        "argument --device: expected a torch device (cpu, cuda, cuda:1, ...) or auto, got 'foo'",
        id="unclear: glai-experiment --device foo",
    ),
    pytest.param(
        ["--seeds", "0"],
        {},
        "argument --seeds: expected an int >= 1, got 0",
        id="kept: glai-experiment --seeds 0",
    ),
]


@pytest.fixture
def paths(tmp_path, monkeypatch):
    names = {
        "file": tmp_path / "a_file",
        "missing": tmp_path / "missing.json",
        "locked": tmp_path / "locked.json",
        "folder": tmp_path / "folder",
        "foreign": tmp_path / "foreign.json",
        "nonempty": tmp_path / "nonempty",
    }
    names["file"].write_text("not json")
    names["folder"].mkdir()
    names["nonempty"].mkdir()
    (names["nonempty"] / "old.txt").write_text("results worth keeping")
    names["foreign"].write_text(json.dumps({"runs": [], "note": "another program's JSON"}))
    names["locked"].write_text("{}")
    real = Path.read_bytes

    def read_bytes(self):  # a file we may not read (chmod has no effect for root)
        if self.name == "locked.json":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    for var in ("GLAI_CACHE_DIR", "GLAI_AUTOTUNE"):
        monkeypatch.delenv(var, raising=False)
    return {k: str(v) for k, v in names.items()}


def _refused(main, argv, env, message, paths, monkeypatch, capsys):
    fill = lambda text: text.format(**paths)  # noqa: E731
    for key, value in env.items():
        monkeypatch.setenv(key, fill(value))
    with pytest.raises(SystemExit) as exc:
        main([fill(a) for a in argv] + ["--no-progress"])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert fill(message) in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("argv, env, message", DEMO)
def test_glai_demo_refuses(argv, env, message, paths, monkeypatch, capsys, tmp_path):
    pytest.importorskip("mnist1d")
    from glai import demo

    out = [] if "--out" in argv else ["--out", str(tmp_path / "out")]
    _refused(demo.main, argv + out, env, message, paths, monkeypatch, capsys)
    assert not (tmp_path / "out").exists()  # refused before anything ran


@pytest.mark.parametrize("argv, env, message", EXPERIMENT)
def test_glai_experiment_refuses(argv, env, message, paths, monkeypatch, capsys):
    pytest.importorskip("mnist1d")
    from glai.experiments import main

    _refused(main, argv, env, message, paths, monkeypatch, capsys)


# ----------------------------------------------------------------- non-finite training


def test_silent_train_classifier_stops_on_a_non_finite_loss():
    """train_classifier(..., lr=inf): NonFiniteError 'the training loss is nan in epoch 1: training diverged'."""
    from glai.data import Split

    g = torch.Generator().manual_seed(0)
    data = Split(
        torch.randn(64, 5, generator=g),
        torch.randint(0, 3, (64,), generator=g),
        torch.randn(8, 5),
        torch.zeros(8, dtype=torch.long),
    )
    for model in (plain_mlp(5, [16], 3), GLAIMLP(5, [16], 3)):
        with pytest.raises(NonFiniteError, match=r"the training loss is nan in epoch 1: training diverged"):
            train_classifier(model, data, name="x", epochs=3, batch_size=16, lr=float("inf"), policy=None)


def test_silent_glai_demo_exits_non_zero_on_a_diverging_run(tmp_path, capsys):
    """glai-demo --lr 1e30: exit status 1 and 'glai-demo: error: MLP: the training loss is nan ...'."""
    pytest.importorskip("mnist1d")
    from glai import demo

    argv = [
        "--samples",
        "100",
        "--hidden",
        "8",
        "--epochs",
        "3",
        "--lr",
        "1e30",
        "--out",
        str(tmp_path),
        "--no-progress",
    ]
    assert demo.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("glai-demo: error: MLP: the training loss is nan in epoch 1: training diverged")
    assert "Traceback" not in err and not (tmp_path / "demo.json").exists()


def test_silent_glai_experiment_exits_non_zero_on_a_diverging_run(tmp_path, capsys, monkeypatch):
    """glai-experiment with a diverging learning rate: exit status 1 and 'glai-experiment: error: ... diverged'."""
    pytest.importorskip("mnist1d")
    from glai.experiments import cli, common, main

    # every rate the tuning tries diverges, so the chosen one does too in the real runs
    monkeypatch.setitem(common.PRESETS, "tiny", replace(common.PRESETS["tiny"], lr=1e30, tune_grid=(1e30,)))
    monkeypatch.setattr(cli, "PRESETS", common.PRESETS)
    argv = [
        "--preset",
        "tiny",
        "--settings",
        "scratch",
        "--seeds",
        "1",
        "--out",
        str(tmp_path),
        "--no-progress",
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "glai-experiment: error: MLP: the training loss is nan in epoch 1: training diverged" in err


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_silent_freeze_monitor_refuses_a_non_finite_probe(bad):
    """FreezeMonitor(model, probe with NaN/inf): ValueError 'probe must be finite, got 1 NaN and 0 inf entries'."""
    probe = torch.randn(6, 5)
    probe[2, 3] = bad
    nan, inf = (1, 0) if bad != bad else (0, 1)
    with pytest.raises(ValueError, match=f"probe must be finite, got {nan} NaN and {inf} inf entries"):
        FreezeMonitor(GLAIMLP(5, [16], 2), probe)


@pytest.mark.parametrize("poison", ["nan", "inf"])
def test_silent_freeze_monitor_never_freezes_a_diverged_structure(poison):
    """monitor.check() after the weights went NaN/inf: NonFiniteError, never a freeze on a flip rate of 0."""
    torch.manual_seed(0)
    model = GLAIMLP(5, [16, 8], 2)
    monitor = FreezeMonitor(model, torch.randn(20, 5), threshold=0.5, patience=1)
    monitor.check()
    with torch.no_grad():
        model.layers[1].weight[0, 0] = float(poison)
    with pytest.raises(
        NonFiniteError, match="pre-activations on the probe are NaN or inf from hidden layer 1 on"
    ):
        monitor.check()
    assert model.phase == "structural" and not monitor.frozen


# ----------------------------------------------------------------- pattern cache files


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = GLAIMLP(9, [33, 70], 4).freeze()
    data = torch.randn(101, 9)
    PatternCache.build(model, data, path=tmp_path / "c")
    return model, data, tmp_path / "c"


def test_silent_damaged_cache_file_is_refused(saved):
    """PatternCache.load(<patterns.npy with random bytes written in>): ValueError '<file> is damaged ...'."""
    model, _, folder = saved
    path = folder / "patterns.npy"
    raw = bytearray(path.read_bytes())
    raw[300:340] = np.random.default_rng(0).bytes(40)
    path.write_bytes(bytes(raw))
    with pytest.raises(
        ValueError, match=f"{path} is damaged or not the file meta.json describes: its sha256"
    ):
        PatternCache.load(folder)
    PatternCache.load(folder, verify=False)  # skipped on request: the size still matches


def test_silent_foreign_rows_file_of_the_same_shape_is_refused(saved, tmp_path):
    """PatternCache.load(<another cache's patterns.npy>): ValueError '<file> is damaged or not the file ...'."""
    model, data, folder = saved
    PatternCache.build(model, -data, path=tmp_path / "other")
    os.replace(tmp_path / "other" / "patterns.npy", folder / "patterns.npy")
    with pytest.raises(ValueError, match="is damaged or not the file meta.json describes"):
        PatternCache.load(folder)


def test_silent_cache_used_with_another_model_is_refused(saved):
    """model(x, patterns=PatternCache.load(path)[idx]) for another model: ValueError 'rebuild the cache'."""
    _, data, folder = saved
    cache = PatternCache.load(folder)
    other = GLAIMLP(9, [33, 70], 4).freeze()
    with pytest.raises(ValueError, match="patterns from a cache built for structure .* rebuild the cache"):
        other(data[:3], patterns=cache[:3])


def test_silent_cache_used_after_refreeze_is_refused(saved):
    """model.refreeze() after training, then model(x, patterns=old_cache.lookup(idx)): ValueError."""
    model, data, folder = saved
    cache = PatternCache.load(folder, model=model)
    with torch.no_grad():
        model.layers[0].weight.add_(0.5)
    model.refreeze()
    with pytest.raises(ValueError, match="rebuild the cache"):
        model(data[:3], patterns=cache.lookup([0, 1, 2]))


def test_unclear_truncated_cache_file(saved):
    """PatternCache.load(<truncated patterns.npy>): ValueError '<file> is truncated: N bytes, meta.json says M'."""
    _, _, folder = saved
    path = folder / "patterns.npy"
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size - 100)
    for verify in (True, False):
        with pytest.raises(
            ValueError, match=f"{path} is truncated: {size - 100} bytes, meta.json says {size}"
        ):
            PatternCache.load(folder, verify=verify)


def test_unclear_missing_rows_file(saved):
    """PatternCache.load(<folder without patterns.npy>): ValueError '<file>: cannot be read (No such file ...)'."""
    _, _, folder = saved
    (folder / "patterns.npy").unlink()
    with pytest.raises(ValueError, match="patterns.npy: cannot be read \\(No such file or directory\\)"):
        PatternCache.load(folder)


def test_unclear_rows_file_that_is_not_npy(saved):
    """PatternCache.load(<patterns.npy not an .npy>, verify=False): ValueError '<file> is not a readable .npy'."""
    _, _, folder = saved
    path = folder / "patterns.npy"
    meta = json.loads((folder / "meta.json").read_text())
    blob = b"x" * meta["checksum"]["bytes"]
    path.write_bytes(blob)
    with pytest.raises(ValueError, match=f"{path} is not a readable .npy array"):
        PatternCache.load(folder, verify=False)
    meta["checksum"]["hexdigest"] = hashlib.sha256(blob).hexdigest()  # a consistent header does not help
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=f"{path} is not a readable .npy array"):
        PatternCache.load(folder)


@pytest.mark.parametrize(
    "field, value, message",
    [
        pytest.param(
            "widths",
            [33, "70"],
            "field 'widths' must be a list of ints >= 1, got \\[33, '70'\\]",
            id="silent: meta.json widths [33, '70']",
        ),
        pytest.param(
            "reduction", 0, "field 'reduction' must be an int >= 1, got 0", id="silent: meta.json reduction 0"
        ),
        pytest.param(
            "rows", None, "field 'rows' must be an int >= 0, got None", id="kept: meta.json rows null"
        ),
        pytest.param(
            "version",
            7,
            "glai-pattern-cache version 7; this glai reads versions 1 and 2",
            id="kept: meta.json version 7",
        ),
        pytest.param(
            "checksum",
            None,
            "field 'checksum' must be an object, got None",
            id="new: meta.json checksum null",
        ),
    ],
)
def test_cache_header_fields(saved, field, value, message):
    """PatternCache.load(<meta.json with a bad field>): ValueError '<meta.json>: field ... must be ..., got ...'."""
    _, _, folder = saved
    meta = json.loads((folder / "meta.json").read_text())
    meta[field] = value
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=message):
        PatternCache.load(folder)


def test_new_version_one_cache_needs_verify_false(saved):
    """PatternCache.load(<format 1 cache>): ValueError 'has no checksum (format version 1)'; verify=False loads."""
    _, _, folder = saved
    meta = json.loads((folder / "meta.json").read_text())
    meta["version"] = 1
    del meta["checksum"]
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(
        ValueError,
        match="has no checksum \\(format version 1\\): rebuild the cache, or load it with verify=False",
    ):
        PatternCache.load(folder)
    assert len(PatternCache.load(folder, verify=False)) == 101


def test_new_patterns_without_a_digest_are_refused(saved):
    """model(x, patterns=PatternCache(rows, widths)[idx]) (no digest=): ValueError 'cannot check them'."""
    model, data, folder = saved
    cache = PatternCache.load(folder)
    bare = PatternCache(np.asarray(cache.words), cache.widths)
    with pytest.raises(ValueError, match="without a structure digest, so the model cannot check them"):
        model(data[:2], patterns=bare[:2])
    with pytest.raises(PhaseError, match="only be passed in the quantitative phase"):
        GLAIMLP(9, [33, 70], 4)(data[:2], patterns=cache[:2])


def test_new_pattern_dataset_arguments(saved):
    """PatternDataset(dataset, cache) with the wrong length, a device cache or no cache: clear errors."""
    model, data, folder = saved
    cache = PatternCache.load(folder)
    with pytest.raises(ValueError, match="dataset has 100 items but the cache 101 rows"):
        PatternDataset(torch.utils.data.TensorDataset(data[:100]), cache)
    with pytest.raises(TypeError, match="PatternDataset expects a PatternCache, got list"):
        PatternDataset(data, list(cache[:]))
    meta_cache = cache.to("meta")
    with pytest.raises(ValueError, match="PatternDataset needs a host cache, got one on meta"):
        PatternDataset(data, meta_cache)
    assert isinstance(cache[0], CachedPatterns)


# ----------------------------------------------------------------- conversion


def seq(*layers):
    return nn.Sequential(*layers)


L = nn.Linear
CONVERSION = [
    pytest.param(
        seq(L(4, 8), nn.GELU(), L(8, 2)),
        "layer \\[1\\] GELU\\(approximate='none'\\): a GLAIMLP's only activation is ReLU",
        id="new: from_mlp(Linear, GELU, Linear)",
    ),
    pytest.param(
        seq(L(4, 8), nn.LeakyReLU(), L(8, 2)),
        "layer \\[1\\] LeakyReLU.*only activation is ReLU",
        id="new: from_mlp(Linear, LeakyReLU, Linear)",
    ),
    pytest.param(
        seq(L(4, 8), nn.BatchNorm1d(8), nn.ReLU(), L(8, 2)),
        "layer \\[1\\] BatchNorm1d.*no normalisation layers",
        id="new: from_mlp(Linear, BatchNorm1d, ReLU, Linear)",
    ),
    pytest.param(
        seq(L(4, 8), nn.ReLU(), nn.LayerNorm(8), L(8, 2)),
        "layer \\[2\\] LayerNorm.*no normalisation layers",
        id="new: from_mlp(Linear, ReLU, LayerNorm, Linear)",
    ),
    pytest.param(
        seq(L(4, 8), nn.ReLU(), nn.Dropout1d(0.1), L(8, 2)),
        "layer \\[2\\] Dropout1d.*dropout is nn.Dropout's, element-wise on the hidden units; got Dropout1d",
        id="new: from_mlp(..., Dropout1d(0.1), ...)",
    ),
    pytest.param(
        seq(L(4, 8), nn.Dropout(0.1), nn.ReLU(), nn.Dropout(0.2), L(8, 2)),
        "layer \\[3\\] Dropout.* is a second dropout in the layer of the Linear at \\[0\\]: a GLAIMLP has one rate",
        id="new: from_mlp with two dropouts in one hidden layer",
    ),
    pytest.param(
        seq(nn.Dropout(0.1), L(4, 8), nn.ReLU(), L(8, 2)),
        "Dropout\\(p=0.1, inplace=False\\) before the first Linear acts on the block's input, .* stays outside",
        id="new: from_mlp with dropout before the first Linear",
    ),
    pytest.param(
        seq(L(4, 8), nn.ReLU(), L(9, 2)),
        "layer \\[2\\] Linear\\(in_features=9.* takes 9 inputs, but the Linear at \\[0\\] gives 8",
        id="new: from_mlp with widths that do not chain",
    ),
    pytest.param(
        seq(L(4, 8), L(8, 8), nn.ReLU(), L(8, 2)),
        "layer \\[1\\] Linear.* follows the Linear at \\[0\\] without a ReLU between",
        id="new: from_mlp(Linear, Linear, ...)",
    ),
    pytest.param(
        seq(L(4, 8), nn.ReLU(), L(8, 2), nn.ReLU()),
        "layer \\[3\\] ReLU follows the last Linear: a GLAIMLP's output layer is linear",
        id="new: from_mlp with a trailing ReLU",
    ),
    pytest.param(
        seq(nn.ReLU(), L(4, 8), nn.ReLU(), L(8, 2)),
        "layer \\[0\\] ReLU\\(\\): expected an nn.Linear here",
        id="new: from_mlp with a leading ReLU",
    ),
    pytest.param(
        seq(L(4, 8), nn.ReLU(), nn.ReLU(), L(8, 2)),
        "layer \\[2\\] ReLU\\(\\): expected an nn.Linear here",
        id="new: from_mlp(Linear, ReLU, ReLU, Linear)",
    ),
    pytest.param(
        seq(L(4, 8), nn.ReLU(), L(8, 2, bias=False)),
        "the Linear at \\[0\\] has a bias and the one at \\[2\\] has none",
        id="new: from_mlp with mixed biases",
    ),
    pytest.param(
        seq(L(4, 8), nn.ReLU(), L(8, 2, dtype=torch.float64)),
        "layer \\[2\\] Linear.* is torch.float64 on cpu, the Linear at \\[0\\] torch.float32 on cpu",
        id="new: from_mlp with mixed dtypes",
    ),
    pytest.param(
        seq(L(4, 2)),
        "at least one hidden layer \\(two Linear layers\\) is needed, got 1 Linear",
        id="new: from_mlp(Linear)",
    ),
    pytest.param(seq(), "at least one hidden layer .* got 0 Linear", id="new: from_mlp(empty Sequential)"),
    pytest.param(
        seq(nn.LazyLinear(8), nn.ReLU(), L(8, 2)),
        "layer \\[0\\] LazyLinear.* is not initialised yet",
        id="new: from_mlp with an uninitialised LazyLinear",
    ),
]


class Scaled(nn.Linear):
    def forward(self, x):
        return 2 * super().forward(x)


class Residual(nn.Sequential):
    def forward(self, x):
        return x + super().forward(x)


@pytest.mark.parametrize("mlp, message", CONVERSION)
def test_from_mlp_refuses(mlp, message):
    with pytest.raises(ValueError, match=message):
        GLAIMLP.from_mlp(mlp)


def test_new_from_mlp_refuses_what_it_would_silently_drop():
    """from_mlp with hooks, a parametrization, a Linear or Sequential overriding forward: ValueError naming it."""
    hooked = seq(L(4, 8), nn.ReLU(), L(8, 2))
    hooked[0].register_forward_hook(lambda *a: None)
    with pytest.raises(
        ValueError, match="layer \\[0\\] Linear.* has hooks registered, which a GLAIMLP would drop"
    ):
        GLAIMLP.from_mlp(hooked)
    normed = seq(nn.utils.parametrizations.weight_norm(L(4, 8)), nn.ReLU(), L(8, 2))
    with pytest.raises(ValueError, match="layer \\[0\\] ParametrizedLinear.* is parametrized"):
        GLAIMLP.from_mlp(normed)
    with pytest.raises(
        ValueError, match="layer \\[0\\] Scaled.*: Scaled overrides forward, so it is not a plain nn.Linear"
    ):
        GLAIMLP.from_mlp(seq(Scaled(4, 8), nn.ReLU(), L(8, 2)))
    with pytest.raises(ValueError, match="Residual overrides nn.Sequential.forward"):
        GLAIMLP.from_mlp(Residual(L(4, 8), nn.ReLU(), L(8, 4)))


def test_new_from_mlp_and_convert_arguments():
    """from_mlp / to_mlp / convert with the wrong kind of argument: TypeError or ValueError naming it."""
    with pytest.raises(TypeError, match="expects an nn.Sequential of Linear and ReLU layers, got ModuleList"):
        GLAIMLP.from_mlp(nn.ModuleList([L(4, 8), L(8, 2)]))
    with pytest.raises(ValueError, match="reduction must be a positive int, got 0"):
        GLAIMLP.from_mlp(plain_mlp(4, [8], 2), reduction=0)
    with pytest.raises(ValueError, match="backend must be one of"):
        GLAIMLP.from_mlp(plain_mlp(4, [8], 2), backend="cuda")
    with pytest.raises(TypeError, match="to_mlp expects a GLAIMLP, got Sequential"):
        glai.conversion.to_mlp(plain_mlp(4, [8], 2))
    with pytest.raises(PhaseError, match="to_mlp\\(\\) needs the structural phase"):
        GLAIMLP(4, [8], 2).freeze().to_mlp()
    model = nn.Sequential(nn.Linear(3, 4), plain_mlp(4, [8], 2))
    with pytest.raises(TypeError, match="convert\\(\\) got unexpected keyword arguments \\['depth'\\]"):
        glai.convert(model, depth=2)
    with pytest.raises(TypeError, match="predicate must be a callable"):
        glai.convert(model, predicate="1")
    with pytest.raises(
        ValueError, match="the model is itself a convertible MLP .* use GLAIMLP.from_mlp\\(model\\)"
    ):
        glai.convert(plain_mlp(4, [8], 2))
    model.append(nn.Sequential(nn.Linear(2, 5), nn.Tanh(), nn.Linear(5, 1)))
    with pytest.raises(
        ValueError, match="the predicate selected 2, which cannot be converted: layer \\[1\\] Tanh"
    ):
        glai.convert(model, predicate=lambda name, m: name == "2")
    assert glai.convert(model) == ["1"]  # without a predicate the Tanh block is left as it is
