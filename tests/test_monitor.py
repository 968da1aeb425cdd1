import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from glai import GLAIMLP, FreezeMonitor, PhaseError
from glai_kernels import unpack_patterns


def test_flip_rate_counts_changed_bits_over_all_units():
    torch.manual_seed(0)
    model = GLAIMLP(5, [33, 7], 2)
    probe = torch.randn(40, 5)
    monitor = FreezeMonitor(model, probe, threshold=0.0, patience=1)
    assert monitor.check() is None  # first check only records
    before = model.patterns(probe)
    with torch.no_grad():
        model.layers[0].weight.add_(torch.randn_like(model.layers[0].weight))
    after = model.patterns(probe)
    flipped = sum(int((unpack_patterns(a ^ b, n)).sum()) for a, b, n in zip(before, after, (33, 7)))
    rate = monitor.check()
    assert flipped > 0
    assert rate == pytest.approx(flipped / (40 * (33 + 7)))
    assert monitor.history == [rate] and not monitor.frozen


def test_freezes_after_patience_calm_checks():
    torch.manual_seed(1)
    model = GLAIMLP(5, [16], 2)
    frozen_models = []
    monitor = FreezeMonitor(
        model, torch.randn(20, 5), threshold=0.05, patience=3, on_freeze=frozen_models.append
    )
    monitor.check()
    for i in range(2):
        monitor.check()  # unchanged weights: rate 0, calm
        assert not monitor.frozen, i
    with torch.no_grad():  # a big jolt resets the calm count
        model.layers[0].weight.mul_(-1)
    assert monitor.check() > 0.05 and monitor.calm == 0
    for _ in range(3):
        monitor.check()
    assert monitor.frozen and monitor.frozen_at == 7 and model.phase == "quantitative"
    assert frozen_models == [model] and "flip rate" in monitor.reason
    with pytest.raises(PhaseError):
        monitor.check()


def test_budget_freezes_even_while_patterns_move():
    torch.manual_seed(2)
    model = GLAIMLP(5, [16], 2)
    monitor = FreezeMonitor(model, torch.randn(20, 5), threshold=0.0, patience=1, max_checks=3)
    for _ in range(3):
        with torch.no_grad():
            model.layers[0].weight.mul_(-1)
        monitor.check()
    assert monitor.frozen_at == 3 and "budget" in monitor.reason


def test_state_dict_resumes_the_count():
    torch.manual_seed(3)
    model = GLAIMLP(5, [16], 2)
    monitor = FreezeMonitor(model, torch.randn(20, 5), patience=3)
    monitor.check()
    monitor.check()
    other = FreezeMonitor(model, monitor.probe, patience=3)
    other.load_state_dict(monitor.state_dict())
    other.check()
    assert not other.frozen
    other.check()
    assert other.frozen_at == 4


def test_bad_arguments():
    model = GLAIMLP(5, [16], 2)
    with pytest.raises(ValueError, match="expected 5 features"):
        FreezeMonitor(model, torch.randn(3, 4))
    with pytest.raises(ValueError, match="threshold"):
        FreezeMonitor(model, torch.randn(3, 5), threshold=2.0)
    with pytest.raises(ValueError, match="patience"):
        FreezeMonitor(model, torch.randn(3, 5), patience=0)
    with pytest.raises(TypeError, match="GLAIMLP"):
        FreezeMonitor(torch.nn.Linear(5, 2), torch.randn(3, 5))
    with pytest.raises(
        TypeError, match="got DataParallel: pass the GLAIMLP inside the wrapper, model.module"
    ):
        FreezeMonitor(torch.nn.DataParallel(model), torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"probe must hold at least one sample, got shape \(0, 5\)"):
        FreezeMonitor(model, torch.randn(0, 5))
    with pytest.raises(TypeError, match="probe must be a floating-point tensor.*got torch.int64"):
        FreezeMonitor(model, torch.ones(3, 5, dtype=torch.long))
    with pytest.raises(TypeError, match="on_freeze must be a callable taking the model, got int"):
        FreezeMonitor(model, torch.randn(3, 5), on_freeze=1)
    with pytest.raises(TypeError, match="threshold must be a number in \\[0, 1\\], got NoneType"):
        FreezeMonitor(model, torch.randn(3, 5), threshold=None)


def test_probe_follows_the_model_to_another_dtype():
    # The model is converted after the monitor was built: the probe goes with it instead of failing at check().
    torch.manual_seed(4)
    model = GLAIMLP(5, [16], 2)
    monitor = FreezeMonitor(model, torch.randn(20, 5))
    monitor.check()
    model.double()
    assert monitor.check() == 0.0
    assert monitor.probe.dtype == torch.float64
    other = FreezeMonitor(model, torch.randn(20, 5))
    other.load_state_dict(monitor.state_dict())
    assert other.check() is not None


def _rank(rank: int, world: int, port: int, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # same model on every rank
        model = GLAIMLP(6, [24], 2)
        # Each rank has its own probe: rank 1's jitters much more, so only the all-reduced rate is shared.
        probe = torch.randn(30, 6, generator=torch.Generator().manual_seed(100 + rank))
        monitor = FreezeMonitor(model, probe, threshold=0.1, patience=2)
        g = torch.Generator().manual_seed(7 + rank)
        while not monitor.frozen and monitor.checks < 40:
            with torch.no_grad():
                scale = 0.5 * 0.8**monitor.checks * (4.0 if rank == 1 else 0.2)
                model.layers[0].weight.add_(scale * torch.randn(model.layers[0].weight.shape, generator=g))
            monitor.check()
        out[rank] = (monitor.frozen_at, monitor.history)
    finally:
        dist.destroy_process_group()


def test_distributed_ranks_freeze_at_the_same_check():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        out = manager.dict()
        procs = [ctx.Process(target=_rank, args=(r, 2, port, out)) for r in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=120)
        assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
        (f0, h0), (f1, h1) = out[0], out[1]
    assert f0 is not None and f0 == f1
    assert h0 == h1  # the same all-reduced rates on both ranks
