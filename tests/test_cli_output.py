"""Where glai-experiment writes: a new folder per run by default, a named folder only when empty or --overwrite."""

import pytest

pytest.importorskip("mnist1d")
pytest.importorskip("matplotlib")

from glai.experiments import main  # noqa: E402

ARGV = [
    "--preset",
    "tiny",
    "--settings",
    "scratch",
    "--variants",
    "freeze@1",
    "--seeds",
    "1",
    "--no-progress",
]


def test_each_run_gets_a_new_folder_and_a_named_one_is_written_over_only_when_asked(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    assert main(ARGV) == 0 and main(ARGV) == 0
    runs = sorted((tmp_path / "glai-experiment-out").iterdir())
    assert len(runs) == 2 and all(r.name.startswith("tiny-") for r in runs)
    assert all((r / "results.json").is_file() for r in runs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["glai-experiment-out"]  # nothing else written
    kept = runs[0] / "results.json"
    before = kept.read_text()
    with pytest.raises(SystemExit):
        main([*ARGV, "--out", str(runs[0])])
    assert kept.read_text() == before
    capsys.readouterr()
    assert main([*ARGV, "--out", str(runs[0]), "--overwrite"]) == 0
    assert kept.read_text() != before  # a new study (new date and timings) in the folder named
