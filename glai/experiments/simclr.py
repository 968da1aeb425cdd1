"""Setting 3, self-supervised projection head: a SimCLR-style model on MNIST-1D.

A 1D CNN encoder and a projection head (MLP vs GLAI, same widths) train together with the NT-Xent loss on two
augmented views of each signal (circular shift, amplitude scaling, additive noise). What counts is the encoder,
so accuracy is that of a linear probe on its frozen features: a ridge classifier solved in closed form after each
epoch (evaluation, not counted in the training time). The head's inputs move with the encoder and the views are
random, so there is no pattern cache here: GLAI computes its patterns from the frozen structure at every step.
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch
import torch.nn.functional as F

from ..data import NUM_CLASSES, Split, mnist1d
from ..train import FreezePolicy, RunResult, cosine_lr, count_parameters, make_head, make_optimizer
from .backbone import ConvEncoder, features
from .common import Preset, Record, runs_per_seed_and_tuning
from .hyper_search import Hyper, tune, validation_split
from .variants import BASE, BASE_RULE, MLP, MLP_AGAIN, Plain, select

NAME = "simclr"
PROJECTION = 64
TEMPERATURE = 0.5


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    b, n = x.shape
    shift = torch.randint(-4, 5, (b, 1), generator=gen)
    index = ((torch.arange(n)[None, :] - shift) % n).to(x.device)
    scale = (1.0 + 0.2 * (2 * torch.rand(b, 1, generator=gen) - 1)).to(x.device)
    noise = (0.1 * torch.randn(b, n, generator=gen)).to(x.device)
    return x.gather(1, index) * scale + noise


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float = TEMPERATURE) -> torch.Tensor:
    """SimCLR's loss: each view must pick its partner among the other ``2B - 1`` views of the batch."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    sim = (z @ z.t() / tau).masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


@torch.no_grad()
def linear_probe(encoder, data: Split, ridge: float = 1.0) -> float:
    """Test accuracy (%) of a ridge classifier on standardised frozen features, one-hot targets."""
    f, ft = features(encoder, data.x), features(encoder, data.x_test)
    mean, std = f.mean(0), f.std(0).clamp_min(1e-6)
    f, ft = (f - mean) / std, (ft - mean) / std
    f = torch.cat([f, torch.ones(f.shape[0], 1, device=f.device)], 1).double()
    ft = torch.cat([ft, torch.ones(ft.shape[0], 1, device=ft.device)], 1).double()
    y = F.one_hot(data.y, NUM_CLASSES).double()
    w = torch.linalg.solve(
        f.t() @ f + ridge * torch.eye(f.shape[1], dtype=f.dtype, device=f.device), f.t() @ y
    )
    return 100.0 * (ft @ w).argmax(-1).eq(data.y_test).double().mean().item()


def variants_for(preset: Preset) -> dict:
    early = max(1, round(preset.simclr_epochs * 0.1))
    return {
        MLP: Plain(),
        MLP_AGAIN: Plain(again=True),
        BASE: FreezePolicy(**BASE_RULE, cache=False),
        f"freeze@{early}": FreezePolicy(kind="epoch", epoch=early, cache=False),
        "r=2": FreezePolicy(**BASE_RULE, reduction=2, init="widen", cache=False),
        f"freeze@{early} r=2": FreezePolicy(
            kind="epoch", epoch=early, reduction=2, init="widen", cache=False
        ),
    }


def train_simclr(name: str, spec, data: Split, preset: Preset, seed: int, device, hyper: Hyper) -> RunResult:
    """Encoder and head at ``hyper.lr`` (the head's quantitative phase at ``lr * lr_scale``)."""
    torch.manual_seed(seed)
    policy = None if isinstance(spec, Plain) else replace(spec, lr_scale=hyper.lr_scale)
    lr = hyper.lr
    encoder = ConvEncoder().to(device)
    hidden = spec.hidden(preset.hidden) if isinstance(spec, Plain) else preset.hidden
    head = make_head(encoder.out_features, hidden, PROJECTION, policy, device)
    result = RunResult(name=name, params=count_parameters(head))
    opts = {
        "encoder": make_optimizer(encoder.parameters(), lr),
        "head": make_optimizer(head.parameters(), lr),
    }
    probe_x = data.x[:512]
    monitor = None
    if policy is not None:
        monitor = policy.monitor(head, features(encoder, probe_x), optimizer=opts["head"])
        monitor.check()
    gen = torch.Generator().manual_seed(seed)
    n, batch, clock = data.x.shape[0], preset.simclr_batch, 0.0
    for epoch in range(preset.simclr_epochs):
        structural = monitor is not None and head.phase == "structural"
        for part, opt in opts.items():
            scale = policy.lr_scale if part == "head" and monitor is not None and not structural else 1.0
            for group in opt.param_groups:
                group["lr"] = cosine_lr(lr, epoch, preset.simclr_epochs) * scale
        order = torch.randperm(n, generator=gen).to(device)
        start = time.perf_counter()
        encoder.train()
        total = torch.zeros((), dtype=torch.float64, device=device)  # read once per epoch: no sync per step
        for i in range(0, n - 1, batch):
            xb = data.x[order[i : i + batch]]
            h = encoder(torch.cat([augment(xb, gen), augment(xb, gen)]))
            z = head(h)
            loss = nt_xent(z[: xb.shape[0]], z[xb.shape[0] :])
            for opt in opts.values():
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in opts.values():
                opt.step()
            total.add_(loss.detach(), alpha=xb.shape[0])
        mean_loss = total.item() / n  # also waits for the epoch's queued GPU work before the clock stops
        if structural:
            # The encoder moved: the probe's head inputs are recomputed so flips include that drift.
            monitor.probe = features(encoder, probe_x)
            monitor.check()
            result.cost["structural"] += time.perf_counter() - start
            if monitor.frozen:
                result.freeze_epoch, result.freeze_reason = epoch + 1, monitor.reason
        elif monitor is not None:
            result.cost["quantitative"] += time.perf_counter() - start
        clock += time.perf_counter() - start
        result.time.append(clock)
        result.train_loss.append(mean_loss)
        result.test_acc.append(linear_probe(encoder, data))
    if monitor is not None:
        result.flip_history = list(monitor.history)
    return result


def count(preset: Preset, only=None) -> int:
    per_seed, tuning = runs_per_seed_and_tuning(select(variants_for(preset), only), preset)
    return len(preset.seeds) * per_seed + tuning


def run(preset: Preset, device, data_seed: int = 42, tick=None, only=None) -> list[Record]:
    data = mnist1d(preset.simclr_samples, seed=data_seed).to(device)
    variants = select(variants_for(preset), only)
    hypers, trials = {v: Hyper(preset.lr) for v in variants}, {v: [] for v in variants}
    if preset.tune_grid:
        held = validation_split(data)

        def score(variant, spec, hyper):
            return train_simclr(variant, spec, held, preset, 0, device, hyper).best_acc

        hypers, trials = tune(variants, preset.tune_grid, score, tick)
    records = []
    for seed in preset.seeds:
        for name, spec in variants.items():
            result = train_simclr(name, spec, data, preset, seed, device, hypers[name])
            info = {"model": "mlp" if isinstance(spec, Plain) else "glai", "lr": hypers[name].lr}
            info.update(lr_scale=hypers[name].lr_scale, tuning=trials[name])
            records.append(Record(NAME, name, seed, result, info))
            if tick is not None:
                tick()
    return records
