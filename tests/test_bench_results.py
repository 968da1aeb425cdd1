"""The benchmark bookkeeping that needs no timing: the op cost model, CSV merging and the plots."""

import sys
from pathlib import Path

import pytest
import torch

from glai_kernels import costs

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import harness, plot, providers  # noqa: E402


def test_gemm_dims_follow_the_kernels_convention():
    # (batch, in, out, r) = (8, 96, 64, 2): M x N is each kernel's output, K its reduction.
    assert costs.gemm_dims("gate", 8, 96, 64, 2) == (8, 32, 96)
    assert costs.gemm_dims("masked_forward", 8, 96, 64, 2) == (8, 64, 96)
    assert costs.gemm_dims("backward_data", 8, 96, 64, 2) == (8, 96, 64)
    assert costs.gemm_dims("backward_weights", 8, 96, 64, 2) == (64, 96, 8)
    with pytest.raises(ValueError):
        costs.gemm_dims("conv", 1, 1, 1)


def test_flop_and_byte_counts():
    assert costs.op_flops("masked_forward", 8, 96, 64) == 2 * 8 * 96 * 64
    assert costs.op_flops("gate", 8, 96, 64, 4) == 2 * 8 * 96 * 16
    assert costs.op_flops("backward_weights", 8, 96, 64) == 2 * 8 * 96 * 64 + 8 * 64
    assert costs.op_flops("pack", 8, 96, 64) == 0
    # in -> h -> h -> in: first layer forward + dW only (4 B a b), the others 6 B a b.
    assert costs.op_flops("train_step", 8, 96, 64) == 4 * 8 * 96 * 64 + 6 * 8 * 64 * 64 + 6 * 8 * 64 * 96
    assert costs.op_bytes("pack", 8, 96, 100, 1) == 8 * 100 + 8 * 4 * 4  # 100 bools in, 4 words out a row
    assert costs.op_bytes("copy", 8, 96, 64, 1, itemsize=2) == 2 * 8 * 64 * 2
    assert costs.op_bytes("gate_epilogue", 8, 96, 64, 2, itemsize=4) == 2 * 8 * 32 * 4 + 8 * 4


def test_cpu_grid_covers_every_op_and_provider():
    cases = providers.cases(harness.GRIDS["cpu"])
    assert {c.op for c in cases} == set(providers.PROVIDERS)
    assert len({c.id for c in cases}) == len(cases)
    cpu = torch.device("cpu")
    runnable = [c for c in cases if providers.skip_reason(c, cpu) is None]
    assert runnable and all(c.provider in ("torch", "torch_cached", "baseline") for c in runnable)
    # r only multiplies the cases that depend on it
    assert not any(
        c.r != 1 for c in cases if c.provider == "baseline" or c.op in ("gemm", "backward_weights")
    )


def test_results_merge_by_key_and_percentages(tmp_path):
    cpu = torch.device("cpu")
    harness.record("gemm", "torch", 64, 128, 128, 1, "float32", (2.0, 1.9, 2.1), cpu)
    harness.record("masked_forward", "torch", 64, 128, 128, 1, "float32", (4.0, 3.9, 4.1), cpu)
    harness.record("copy", "torch", 64, 128, 128, 1, "float32", (0.01, 0.01, 0.01), cpu)
    harness.record("pack", "torch", 64, 128, 128, 1, "float32", (0.02, 0.02, 0.02), cpu)
    (path,) = harness.write_results(tmp_path)
    rows = {r["op"]: r for r in harness.read_csv(path)}
    assert list(harness.read_csv(path)[0]) == list(harness.COLUMNS)
    assert float(rows["masked_forward"]["pct_gemm"]) == pytest.approx(50.0)
    # pack moves 64 x 128 bools + 64 x 4 words = 9216 bytes in 0.02 ms; copy 2 x 64 x 128 x 4 bytes in 0.01 ms
    assert float(rows["pack"]["pct_mem"]) == pytest.approx(100 * (9216 / 0.02) / (65536 / 0.01), abs=0.06)
    assert float(rows["gemm"]["tflops"]) == pytest.approx(2 * 64 * 128 * 128 / 2e-3 / 1e12, rel=1e-3)
    # Another device's row stays; the same key is replaced, not appended.
    other = dict(rows["gemm"], device="Some GPU", median="9")
    harness._rows.append((harness.OPS_CSV, other))
    harness.record("masked_forward", "torch", 64, 128, 128, 1, "float32", (1.0, 0.9, 1.1), cpu)
    harness.write_results(tmp_path)
    after = harness.read_csv(path)
    assert len(after) == 5
    mf = next(r for r in after if r["op"] == "masked_forward")
    assert mf["median"] == "1" and float(mf["pct_gemm"]) == pytest.approx(200.0, abs=0.06)
    assert not list(tmp_path.glob("*.tmp"))


def test_plot_writes_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    cpu = torch.device("cpu")
    for batch in (32, 64):
        for op, provider in (("gemm", "torch"), ("gate", "torch"), ("gate", "baseline"), ("copy", "torch")):
            harness.record(op, provider, batch, 64, 64, 1, "float32", (1.0, 0.9, 1.2), cpu)
    harness.write_results(tmp_path)
    assert plot.main(["--results", str(tmp_path), "--out", str(tmp_path / "png")]) == 0
    pngs = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert len(pngs) == 2 and pngs[0].startswith("cpu-") and pngs[0].endswith("-float32-rate.png")
    assert all((tmp_path / "png" / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    assert plot.main(["--results", str(tmp_path / "nothing")]) == 1


def test_runner_without_pytest_benchmark(tmp_path, capsys):
    from bench import run

    assert run.main(["--grid", "cpu", "-k", "gemm-torch-B256xI256", "--results", str(tmp_path)]) == 0
    rows = harness.read_csv(tmp_path / harness.OPS_CSV)
    assert [(r["op"], r["provider"], r["shape"]) for r in rows] == [("gemm", "torch", "B256xI256xO256r1")]
    assert float(rows[0]["p20"]) <= float(rows[0]["median"]) <= float(rows[0]["p80"])
    assert "results:" in capsys.readouterr().out
