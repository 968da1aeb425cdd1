"""Setting 4, few-shot: ``k`` labelled samples per class (k in 1, 5, 10) of the frozen backbone's features,
head MLP vs GLAI, tested on the whole test set. A different draw of the ``k`` samples for every seed.

With 10 to 100 training samples an epoch is one batch, so the freeze monitor's probe is the training set itself.
"""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from ..data import Split, few_shot_indices, mnist1d
from ..train import FreezePolicy
from .backbone import feature_split
from .common import BASE, BASE_RULE, MLP, Preset, Record, run_heads, select

NAME = "few-shot"


def variants_for(preset: Preset) -> dict:
    early = max(1, round(preset.fewshot_epochs * 0.1))
    return {
        MLP: None,
        BASE: FreezePolicy(**BASE_RULE),
        f"freeze@{early}": FreezePolicy(kind="epoch", epoch=early),
    }


def count(preset: Preset, only=None) -> int:
    return len(preset.fewshot_ks) * len(preset.seeds) * len(select(variants_for(preset), only))


def run(
    preset: Preset, device, encoder: nn.Module, info: dict, data_seed: int = 42, tick=None, only=None
) -> list[Record]:
    full = feature_split(encoder, mnist1d(preset.samples, seed=data_seed).to(device))
    records = []
    for k in preset.fewshot_ks:
        for seed in preset.seeds:
            idx = few_shot_indices(full.y.cpu(), k, seed=1000 + seed).to(full.x.device)
            data = Split(full.x[idx], full.y[idx], full.x_test, full.y_test)
            one = replace(preset, seeds=(seed,))
            records += run_heads(
                f"{NAME} k={k}",
                data,
                select(variants_for(preset), only),
                preset=one,
                epochs=preset.fewshot_epochs,
                batch_size=len(idx),
                extra={**info, "k": k},
                tick=tick,
            )
    return records
