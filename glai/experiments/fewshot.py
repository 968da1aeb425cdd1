"""Setting 4, few-shot: ``k`` labelled samples per class (k in 1, 5, 10) of the frozen backbone's features,
head MLP vs GLAI, tested on the whole test set. A different draw of the ``k`` samples for every seed.

With 10 to 100 training samples an epoch is one batch, so the freeze monitor's probe is the training set itself.
Learning rates are tuned once per ``k``: on a draw of ``k`` samples per class of its own, scored on 1000 other
labelled training samples (a validation set a real few-shot task would not have: it is there so that every head
gets the same fair tuning, not to be realistic).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from ..data import Split, few_shot_indices, mnist1d
from ..train import FreezePolicy
from .backbone import feature_split
from .common import Preset, Record, run_heads, runs_per_seed_and_tuning, tune_heads
from .variants import BASE, BASE_RULE, MLP, MLP_AGAIN, Plain, select

NAME = "few-shot"


def variants_for(preset: Preset) -> dict:
    early = max(1, round(preset.fewshot_epochs * 0.1))
    return {
        MLP: Plain(),
        MLP_AGAIN: Plain(again=True),
        BASE: FreezePolicy(**BASE_RULE),
        f"freeze@{early}": FreezePolicy(kind="epoch", epoch=early),
        f"freeze@{early} r=2": FreezePolicy(kind="epoch", epoch=early, reduction=2, init="widen"),
    }


def count(preset: Preset, only=None) -> int:
    per_seed, tuning = runs_per_seed_and_tuning(select(variants_for(preset), only), preset)
    return len(preset.fewshot_ks) * (len(preset.seeds) * per_seed + tuning)


def run(
    preset: Preset, device, encoder: nn.Module, info: dict, data_seed: int = 42, tick=None, only=None
) -> list[Record]:
    full = feature_split(encoder, mnist1d(preset.samples, seed=data_seed).to(device))
    variants = select(variants_for(preset), only)
    records = []
    for k in preset.fewshot_ks:
        # The tuning draw (seed 999) and its validation samples are disjoint; the runs' draws use 1000 + seed.
        shots = few_shot_indices(full.y.cpu(), k, seed=999).to(full.x.device)
        rest = torch.ones(full.x.shape[0], dtype=torch.bool, device=full.x.device)
        rest[shots] = False
        held = rest.nonzero().flatten()[:1000]
        tune_data = Split(full.x[shots], full.y[shots], full.x[held], full.y[held])
        kwargs = {"preset": preset, "epochs": preset.fewshot_epochs, "batch_size": len(shots)}
        tuned = tune_heads(variants, tune_data, tick=tick, **kwargs)
        for seed in preset.seeds:
            idx = few_shot_indices(full.y.cpu(), k, seed=1000 + seed).to(full.x.device)
            data = Split(full.x[idx], full.y[idx], full.x_test, full.y_test)
            one = replace(preset, seeds=(seed,))
            records += run_heads(
                f"{NAME} k={k}",
                data,
                variants,
                preset=one,
                epochs=preset.fewshot_epochs,
                batch_size=len(idx),
                extra={**info, "k": k},
                tick=tick,
                tuned=tuned,
            )
    return records
