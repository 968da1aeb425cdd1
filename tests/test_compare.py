"""``glai-experiment --data`` and ``glai.experiments.compare``: the study's protocol on a user's data.

Tiny data (200 samples, 8 features), 2 epochs, 1 seed, the quick preset and heads of 16 keep every run a fraction
of a second; refusals are checked before anything trains, so they cost only the parsing.
"""

import importlib.util
import json
import math

import numpy as np
import pytest
import torch

from glai.experiments import DataError, compare, main, stats
from glai.experiments.compare import GLAI_R1, GLAI_R2, progress_ticker
from glai.experiments.examples import draw, make_example
from glai.experiments.task import R2_TOLERANCE, r2_score
from glai.experiments.userdata import MIN_TRAIN, load, prepare

# Writing the files draws a plot: those tests need matplotlib (a demo extra); the checks and the API do not.
needs_plot = pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None, reason="matplotlib not installed"
)

FAST = {"quick": True, "epochs": 2, "seeds": 1, "hidden": (16, 16), "progress": False}
CLI_FAST = [
    "--quick",
    "--epochs",
    "2",
    "--seeds",
    "1",
    "--hidden",
    "16,16",
    "--threads",
    "1",
    "--no-progress",
]


@pytest.fixture(autouse=True)
def one_thread():
    # As the command line's --threads 1: a head this small gains nothing from more, and the machine is shared.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _classes(n=200, d=8, seed=0, labels=("cat", "dog", "eel")):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * 3.0 + 5.0  # off-centre and scaled: standardisation has work to do
    score = x[:, :3] - 5.0
    return x, np.array(labels)[score.argmax(1)]


def _regression(n=200, d=8, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    return x, 40.0 + 10.0 * (x[:, 0] + np.sin(2 * x[:, 1])) + rng.normal(size=n)


# ---- formats: the loader reads what was written, in every format ----------------------------------------------


def test_npz_with_and_without_a_test_split(tmp_path):
    x, y = _regression()
    np.savez(tmp_path / "a.npz", X=x, y=y)
    np.savez(tmp_path / "b.npz", X=x[:150], y=y[:150], X_test=x[150:], y_test=y[150:])
    a = load(tmp_path / "a.npz")
    assert set(a) == {"X", "y"} and np.array_equal(a["X"], x) and np.array_equal(a["y"], y)
    b = load(tmp_path / "b.npz")
    assert np.array_equal(b["X_test"], x[150:]) and np.array_equal(b["y_test"], y[150:])
    given = prepare(*(b[k] for k in ("X", "y", "X_test", "y_test")))
    assert given.info["holdout"] == "the given test split (50 samples)"
    assert given.split.x.shape == (150, 8) and given.split.x_test.shape == (50, 8)


def test_csv_target_by_name_or_last_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,label,b\n1,x,2\n3,y,4.5\n\n5,x,6\n")  # a blank line is skipped
    named = load(path, target="label")
    assert named["X"].tolist() == [[1, 2], [3, 4.5], [5, 6]] and named["y"].tolist() == ["x", "y", "x"]
    path.write_text("a,b,t\n1,2,0.5\n3,4,1.5\n")
    last = load(path)
    assert last["X"].tolist() == [[1, 2], [3, 4]] and last["y"].tolist() == [0.5, 1.5]


def test_pt_dict_of_tensors(tmp_path):
    x, y = _regression(50)
    torch.save({"X": torch.tensor(x), "y": torch.tensor(y), "other": 3}, tmp_path / "d.pt")
    got = load(tmp_path / "d.pt")
    assert set(got) == {"X", "y"} and np.allclose(got["X"], x) and np.allclose(got["y"], y)


def test_examples_are_deterministic_and_load_back(tmp_path):
    x1, y1 = draw("classification", 300, seed=3)
    x2, y2 = draw("classification", 300, seed=3)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2) and len(set(y1.tolist())) == 5
    make_example("regression", tmp_path / "r.npz", samples=100)
    make_example("classification", tmp_path / "c.csv", samples=100)
    assert load(tmp_path / "r.npz")["y"].dtype.kind == "f"
    assert load(tmp_path / "c.csv")["y"].dtype.kind == "U"


# ---- preparing: task, mapping, hold-out, standardisation -----------------------------------------------------


def test_auto_task_and_label_mapping():
    x, y = _classes()
    prep = prepare(x, y)
    assert prep.task.kind == "classification" and prep.task.out_features == 3
    assert prep.info["classes"] == {"cat": 0, "dog": 1, "eel": 2}
    assert "string labels" in prep.info["task_reason"]
    assert prepare(x, (y == "dog").astype(np.int64) * 7).task.kind == "classification"  # labels 0 and 7
    assert prepare(x, np.arange(200)).task.kind == "regression"  # 200 distinct integers
    assert prepare(*_regression()).task.kind == "regression"


def test_stratified_holdout_is_seeded_and_keeps_every_class_on_both_sides():
    x, y = _classes()
    a, b, c = prepare(x, y, seed=0), prepare(x, y, seed=0), prepare(x, y, seed=5)
    assert torch.equal(a.split.y, b.split.y) and torch.equal(a.split.x, b.split.x)
    assert not torch.equal(a.split.x, c.split.x)
    counts = np.bincount(np.unique(y, return_inverse=True)[1])
    test_counts = np.bincount(a.split.y_test.numpy(), minlength=3)
    assert np.array_equal(test_counts, np.round(counts * 0.2).astype(int))
    assert a.info["holdout"] == "stratified 20% hold-out (seed 0)"
    assert len(a.split.y) + len(a.split.y_test) == 200


def test_standardisation_uses_the_training_split_only():
    x, y = _regression()
    x_train, x_test = (
        x[:150] * 4 + 2,
        x[150:] * 4 + 7,
    )  # the test set is shifted: its own mean must not be used
    prep = prepare(x_train, y[:150], x_test, y[150:])
    mean, std = x_train.mean(0), x_train.std(0)
    assert np.allclose(prep.split.x.numpy(), (x_train - mean) / std, atol=1e-5)
    assert np.allclose(prep.split.x_test.numpy(), (x_test - mean) / std, atol=1e-5)
    raw = prepare(x_train, y[:150], x_test, y[150:], standardize=False)
    assert np.allclose(raw.split.x.numpy(), x_train, atol=1e-5) and raw.info["standardized"] is False


def test_r2_score_matches_a_float64_reference():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 1)
    x, y = torch.randn(37, 5), torch.randn(37)
    pred = model(x).squeeze(-1).double().detach()
    ref = 1 - ((pred - y.double()) ** 2).sum() / ((y.double() - y.double().mean()) ** 2).sum()
    assert math.isclose(r2_score(model, x, y, batch_size=8), float(ref), rel_tol=1e-12)


# ---- the comparison, both tasks ------------------------------------------------------------------------------


def test_compare_classification_from_tensors_writes_nothing_without_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    x, y = _classes()
    codes = torch.tensor(np.unique(y, return_inverse=True)[1])
    result = compare(torch.tensor(x, dtype=torch.float32), codes, **FAST)
    assert list(tmp_path.iterdir()) == [] and result.files == {}
    assert [r["variant"] for r in result.summary] == ["MLP", "MLP again", GLAI_R1, GLAI_R2, "MLP n/2"]
    assert result.meta["task"]["metric"] == "accuracy" and result.meta["task"]["tolerance"] == 0.5
    for rec in result.records:
        assert len(rec.result.test_acc) == 2 and all(0 <= a <= 100 for a in rec.result.test_acc)
    assert "| GLAI r=2 |" in result.table()


@needs_plot
def test_compare_regression_scores_r2_and_rmse_and_writes_files(tmp_path):
    x, y = _regression()
    result = compare(x, y, out=tmp_path / "out", **FAST)
    task = result.meta["task"]
    assert task["kind"] == "regression" and task["metric"] == "R²" and task["tolerance"] == R2_TOLERANCE
    mlp = result.row("MLP")
    std = result.meta["data"]["test_target_std"]
    r2 = [r.result.best_acc for r in result.records if r.variant == "MLP"]
    assert mlp["best_rmse_mean"] == pytest.approx(np.mean([math.sqrt(1 - v) * std for v in r2]))
    assert all(-10 < v <= 1 for r in result.records for v in r.result.test_acc)
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"results.json", "RESULTS.md", "summary.csv", "runs.csv", "metric_vs_time.png"} <= names
    text = (tmp_path / "out" / "RESULTS.md").read_text()
    assert (
        "best R² (mean ± std) | best RMSE" in text and "minus 0.01" in text and "random 20% hold-out" in text
    )


def test_the_verdict_is_the_studys_own(monkeypatch):
    """--data has no verdict code of its own: changing the study's verdict changes the comparison's."""
    calls = []

    def fake(speedup, reached, paired, noise):
        calls.append((speedup, reached, paired, noise))
        return "from the study"

    monkeypatch.setattr(stats, "verdict", fake)
    result = compare(*_regression(), variants=[GLAI_R1], **FAST)
    assert [r["verdict"] for r in result.summary] == ["-", "from the study", "from the study"]
    assert len(calls) == 2


def test_the_target_uses_the_tasks_tolerance(monkeypatch):
    seen = []
    real = stats.summarize

    def spy(records, tolerance=stats.TOLERANCE):
        seen.append(tolerance)
        return real(records, tolerance)

    monkeypatch.setattr(stats, "summarize", spy)
    compare(*_regression(), variants=[GLAI_R1], **FAST)
    assert seen == [R2_TOLERANCE]


def test_refusals_of_the_python_entry_point(tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep").write_text("x")
    with pytest.raises(ValueError, match="holds files"):
        compare(*_regression(), out=busy, **FAST)
    with pytest.raises(ValueError, match="unknown variants"):
        compare(*_regression(), variants=["GLAI r=3"], **FAST)
    with pytest.raises(DataError, match="continuous targets"):
        compare(*_regression(), task="classification", out=tmp_path / "new", **FAST)
    assert not (tmp_path / "new").exists()


def test_plain_progress_line_without_tqdm(monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "tqdm.auto", None)
    tick, close = progress_ticker(2, disable=False)
    tick()
    tick()
    close()
    assert capsys.readouterr().err == "\rruns 1/2\rruns 2/2\n"


# ---- the command line: one end-to-end run per format, then every refusal ---------------------------------------


@needs_plot
def test_cli_csv_classification_end_to_end(tmp_path, capsys):
    x, y = _classes()
    path = tmp_path / "pets.csv"
    rows = ["f" + ",f".join(map(str, range(8))) + ",kind"]
    rows += [",".join(f"{v:.5f}" for v in row) + f",{label}" for row, label in zip(x, y)]
    path.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert main(["--data", str(path), "--out", str(out), *CLI_FAST]) == 0
    printed = capsys.readouterr().out
    assert "| MLP again |" in printed and "cat -> 0, dog -> 1, eel -> 2" in printed
    payload = json.loads((out / "results.json").read_text())
    assert payload["meta"]["data"]["classes"] == {"cat": 0, "dog": 1, "eel": 2}
    assert {r["setting"] for r in payload["runs"]} == {"pets"}
    # The saved results report again without training.
    again = tmp_path / "again"
    assert main(["--from-json", str(out / "results.json"), "--out", str(again)]) == 0
    assert (again / "RESULTS.md").read_text() == (out / "RESULTS.md").read_text()


@needs_plot
def test_cli_npz_regression_end_to_end(tmp_path, capsys):
    x, y = _regression()
    np.savez(tmp_path / "r.npz", X=x, y=y)
    assert main(["--data", str(tmp_path / "r.npz"), "--out", str(tmp_path / "o"), *CLI_FAST]) == 0
    out = capsys.readouterr()
    assert "best R²" in out.out and out.err.startswith("plan: 160 training / 40 test samples, 8 features")
    assert "estimated wall time" in out.err


@needs_plot
def test_cli_pt_end_to_end_with_a_given_test_split(tmp_path, capsys):
    x, y = _classes()
    codes = torch.tensor(np.unique(y, return_inverse=True)[1])
    data = {
        "X": torch.tensor(x[:160]),
        "y": codes[:160],
        "X_test": torch.tensor(x[160:]),
        "y_test": codes[160:],
    }
    torch.save(data, tmp_path / "d.pt")
    args = [
        "--data",
        str(tmp_path / "d.pt"),
        "--out",
        str(tmp_path / "o"),
        "--variants",
        "GLAI r=2",
        *CLI_FAST,
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "the given test split (40 samples)" in printed and "| GLAI r=1 |" not in printed


def _write(tmp_path, name, content):
    path = tmp_path / name
    if isinstance(content, dict):
        np.savez(path, **content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


X8, Y8 = _regression()
XC, YC = _classes()
REFUSALS = {
    "missing file": ("gone.npz", None, [], "does not exist"),
    "unknown format": ("d.parquet", "x", [], "expected a file ending in .npz, .csv, .pt"),
    "not an npz": ("d.npz", "plain text", [], "which is not a zip file"),
    "not a pt": ("d.pt", b"\x00\x01junk", [], "torch.load(weights_only=True) cannot read (UnpicklingError)"),
    "missing y": ("d.npz", {"X": X8}, [], "expected the keys X and y"),
    "missing target column": (
        "d.csv",
        "a,b\n1,2\n",
        ["--target", "price"],
        "expected a target column 'price'",
    ),
    "nan in features": ("d.npz", {"X": np.where(np.arange(8) == 3, np.nan, X8), "y": Y8}, [], "at X[0, 3]"),
    "inf in targets": ("d.npz", {"X": X8, "y": np.where(np.arange(200) == 7, np.inf, Y8)}, [], "at y[7]"),
    "nan in a csv": ("d.csv", "a,b,t\n1,2,3\n4,nan,5\n", [], "'nan' in column 'b' on line 3"),
    "non-numeric column": ("d.csv", "a,city,t\n1,Oslo,3\n", [], "got 'Oslo' in column 'city' on line 2"),
    "empty cell": ("d.csv", "a,b,t\n1,2,3\n4,,5\n", [], "an empty one in column 'b' on line 3"),
    "empty target": ("d.csv", "a,b,t\n1,2,3\n4,5,\n", [], "an empty 't' on line 3"),
    "row too short": ("d.csv", "a,b,t\n1,2,3\n4,5\n", [], "got 2 on line 3"),
    "X_test without y_test": ("d.npz", {"X": X8, "y": Y8, "X_test": X8}, [], "X_test and y_test together"),
    "test features disagree": (
        "d.npz",
        {"X": X8, "y": Y8, "X_test": X8[:, :5], "y_test": Y8},
        [],
        "expected X_test with X's 8 features, got 5",
    ),
    "unseen test class": (
        "d.npz",
        {"X": XC, "y": YC, "X_test": XC[:3], "y_test": np.array(["cat", "dog", "yak"])},
        [],
        "['yak'] only in y_test",
    ),
    "string features": (
        "d.npz",
        {"X": np.array([["a"] * 8] * 200), "y": Y8},
        [],
        "expected numeric features in X",
    ),
    "constant regression target": ("d.npz", {"X": X8, "y": np.full(200, 2.5)}, [], "the constant 2.5"),
    "pt not a dict": ("d.pt", None, [], "holding a dict of tensors"),
    "lengths disagree": ("d.npz", {"X": X8, "y": Y8[:150]}, [], "X with 200 rows and y with 150"),
    "one class": (
        "d.npz",
        {"X": X8, "y": np.zeros(200, np.int64)},
        [],
        "at least 2 classes, got only 0 in y",
    ),
    "class too small": (
        "d.npz",
        {"X": X8, "y": np.r_[np.zeros(199, np.int64), 1]},
        [],
        "got 1 of class 1 (give X_test",
    ),
    "classification on continuous": ("d.npz", {"X": X8, "y": Y8}, ["--task", "classification"], "continuous"),
    "too few samples": ("d.npz", {"X": X8[:20], "y": Y8[:20]}, [], f"at least {MIN_TRAIN} training samples"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_cli_refusals_write_nothing(case, tmp_path, capsys):
    name, content, extra, expected = REFUSALS[case]
    path = tmp_path / name if content is None else _write(tmp_path, name, content)
    if case == "pt not a dict":
        torch.save(torch.zeros(3), path)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["--data", str(path), "--out", str(out), *extra, *CLI_FAST])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("glai-experiment: error: argument --data: ")
    assert expected in err, err
    assert not out.exists()


def test_a_folder_that_holds_files_is_refused_before_training(tmp_path, capsys):
    x, y = _regression()
    np.savez(tmp_path / "r.npz", X=x, y=y)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as exc:
        main(["--data", str(tmp_path / "r.npz"), "--out", str(tmp_path / "out"), *CLI_FAST])
    assert exc.value.code == 2 and "pass --overwrite" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_data_flags_need_data_and_data_refuses_the_settings(capsys):
    for argv, expected in (
        (["--target", "t"], "argument --target: only applies with --data FILE"),
        (["--data", "x.npz", "--settings", "scratch"], "not with --settings"),
        (["--make-example", "images", "x.npz"], "expected a kind in"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2 and expected in capsys.readouterr().err
