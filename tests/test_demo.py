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


def test_demo_with_reduction_trains_the_new_quantitative_network(tmp_path, capsys):
    # With r > 1 the freeze creates new layers; unless the optimizer is rebuilt, the loss stops moving.
    argv = ["--samples", "400", "--hidden", "32", "--epochs", "5", "--reduction", "2", "--threshold", "1.0"]
    assert demo.main([*argv, "--patience", "1", "--out", str(tmp_path), "--no-progress"]) == 0
    glai = json.loads((tmp_path / "demo.json").read_text())["runs"][1]
    assert glai["freeze_epoch"] == 1
    after = glai["train_loss"][1:]
    assert after[-1] < after[0] - 0.05
