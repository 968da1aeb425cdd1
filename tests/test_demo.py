"""The demo end to end at a toy size: it trains both models, prints the table and writes the plot and JSON."""

import json

import pytest

pytest.importorskip("mnist1d")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

from glai import demo  # noqa: E402


def test_demo_main_writes_plot_and_prints_table(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--samples", "200", "--hidden", "32", "--epochs", "4", "--batch-size", "32", "--threshold", "1.0"]
    argv += ["--patience", "1", "--out", str(out), "--no-progress"]
    assert demo.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| model | params | best test acc (%)" in printed
    rows = [line for line in printed.splitlines() if line.startswith("| MLP ") or line.startswith("| GLAI ")]
    assert len(rows) == 2
    # A threshold of 1 freezes at the first comparison (after epoch 1): the GLAI row must say so.
    glai_cells = [c.strip() for c in rows[1].strip("|").split("|")]
    assert glai_cells[7] == "1"
    png = out / "accuracy_vs_time.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((out / "demo.json").read_text())
    mlp, glai = record["runs"]
    assert mlp["params"] == glai["params"]
    assert len(mlp["test_acc"]) == len(glai["test_acc"]) == 4
    assert glai["freeze_epoch"] == 1 and mlp["freeze_epoch"] is None
    assert all(b > a for a, b in zip(glai["time"], glai["time"][1:]))


def test_pick_device():
    import torch

    assert demo.pick_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(SystemExit, match="'foo' is not a torch device"):
        demo.pick_device("foo")


def test_demo_with_reduction_trains_the_widened_quantitative_network(tmp_path, capsys):
    # With r > 1 the freeze resizes the layers; if the optimizer updated nothing after it, every epoch would see
    # the same weights and samples, hence the same mean loss.
    argv = ["--samples", "400", "--hidden", "32", "--epochs", "5", "--reduction", "2", "--threshold", "1.0"]
    assert demo.main([*argv, "--patience", "1", "--out", str(tmp_path), "--no-progress"]) == 0
    glai = json.loads((tmp_path / "demo.json").read_text())["runs"][1]
    assert glai["freeze_epoch"] == 1
    after = glai["train_loss"][1:]
    assert after[-1] < after[0] - 0.02


def _result(acc, times, freeze=None):
    from glai.train import RunResult

    return RunResult(name="x", params=1, test_acc=list(acc), time=list(times), freeze_epoch=freeze)


def test_speed_verdict_calls_no_winner_within_the_noise_of_identical_work():
    mlp = _result([50, 60, 70, 71], [1.0, 2.0, 3.0, 4.0])
    # Target 70.5 reached at epoch 4 by both; GLAI froze after epoch 5: identical runs, however the clock fell.
    same = _result([50, 60, 70, 71], [0.8, 1.6, 2.4, 3.2], freeze=5)
    assert "identical up to there: no speedup" in demo.speed_verdict(mlp, same, 70.5, 1)
    # Froze after epoch 2 and got there at epoch 3: the first epoch (identical work) took 1.05 s against 1.0 s.
    glai = _result([50, 60, 71, 71], [1.05, 2.2, 3.0, 3.6], freeze=2)
    assert "GLAI faster, beyond this run's timing noise (±5%" in demo.speed_verdict(mlp, glai, 70.5, 1)
    close = _result([50, 60, 71, 71], [1.05, 2.2, 3.9, 4.5], freeze=2)  # 4.0 / 3.9 = 1.03x, inside +-5 %
    assert "within this run's timing noise" in demo.speed_verdict(mlp, close, 70.5, 1)
    assert "no winner is called" in demo.speed_verdict(mlp, glai, 70.5, 2)
    assert "never reached" in demo.speed_verdict(mlp, _result([50, 60], [1.0, 2.0], freeze=1), 70.5, 1)
