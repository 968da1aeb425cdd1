"""Benchmark session set-up: the shape grid (``--glai-grid``), the device, and writing the CSV files at the end.

``pytest bench/ --benchmark-only`` picks the CPU grid without CUDA and the GPU grid with it.
"""

from __future__ import annotations

import pytest
import torch

from bench import harness, providers

_written: list = []


def pytest_addoption(parser):
    group = parser.getgroup("glai", "GLAI benchmarks")
    group.addoption(
        "--glai-grid",
        choices=("auto", *harness.GRIDS),
        default="auto",
        help="shape grid: cpu (small), gpu, quick (two GPU shapes, bfloat16), head (head-sized training steps); "
        "auto picks gpu when CUDA is here",
    )
    group.addoption(
        "--glai-threads",
        type=int,
        default=0,
        help="torch CPU threads for the run (default: torch's own choice); part of the CPU's device name",
    )
    group.addoption("--glai-no-save", action="store_true", help="do not write bench/results/*.csv")
    group.addoption("--glai-results", default=str(harness.RESULTS), help="folder of the result CSV files")


def pytest_configure(config):
    threads = config.getoption("--glai-threads", default=0)
    if threads:
        torch.set_num_threads(threads)


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _grid(config) -> dict:
    return harness.grid(config.getoption("--glai-grid"), _device())


def pytest_generate_tests(metafunc):
    device = _device()
    if "case" in metafunc.fixturenames:
        params = []
        for case in providers.cases(_grid(metafunc.config)):
            reason = providers.skip_reason(case, device)
            marks = [pytest.mark.skip(reason=reason)] if reason else []
            params.append(pytest.param(case, id=case.id, marks=marks))
        metafunc.parametrize("case", params)
    if "head_case" in metafunc.fixturenames:
        from bench import heads

        params = []
        for case in heads.head_cases(_grid(metafunc.config).get("heads", ())):
            reason = heads.skip_reason(case, device)
            marks = [pytest.mark.skip(reason=reason)] if reason else []
            params.append(pytest.param(case, id=case.id, marks=marks))
        metafunc.parametrize("head_case", params)
    if "head_copy" in metafunc.fixturenames:
        from bench import heads

        dtypes = heads.copy_dtypes(_grid(metafunc.config).get("heads", ()))
        metafunc.parametrize("head_copy", dtypes)
    if "memory_case" in metafunc.fixturenames:
        skip = (
            []
            if device.type == "cuda"
            else [pytest.mark.skip(reason="device memory is measured on CUDA only")]
        )
        cases = providers.memory_cases(_grid(metafunc.config))
        metafunc.parametrize("memory_case", [pytest.param(c, id=c.id, marks=skip) for c in cases])


@pytest.fixture(scope="session")
def device() -> torch.device:
    return _device()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_sessionfinish(session):
    if not session.config.getoption("--glai-no-save"):
        from pathlib import Path

        _written.extend(harness.write_results(Path(session.config.getoption("--glai-results"))))


def pytest_terminal_summary(terminalreporter):
    for path in _written:
        terminalreporter.write_line(f"glai benchmark results: {path}")
