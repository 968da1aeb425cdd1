"""Setting 1, MNIST-1D from scratch: the head is the whole model, trained on the raw 40-sample signals.

The inputs never change, so after the freeze GLAI's training patterns come from a pattern cache. This setting
carries the full variant grid (reduction 1, 2, 4; rule-based and early freezes; widening and random starts).
"""

from __future__ import annotations

from ..data import mnist1d
from .common import Preset, Record, run_heads, runs_per_seed_and_tuning
from .hyper_search import validation_split
from .variants import policy_variants, select

NAME = "scratch"


def variants_for(preset: Preset) -> dict:
    return policy_variants(preset.policy_grid, preset.scratch_epochs)


def count(preset: Preset, only=None) -> int:
    per_seed, tuning = runs_per_seed_and_tuning(select(variants_for(preset), only), preset)
    return len(preset.seeds) * per_seed + tuning


def run(preset: Preset, device, data_seed: int = 42, tick=None, only=None) -> list[Record]:
    data = mnist1d(preset.samples, seed=data_seed).to(device)
    variants = select(variants_for(preset), only)
    return run_heads(
        NAME,
        data,
        variants,
        preset=preset,
        epochs=preset.scratch_epochs,
        tick=tick,
        tune_data=validation_split(data),
    )
