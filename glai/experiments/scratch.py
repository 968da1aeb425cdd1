"""Setting 1, MNIST-1D from scratch: the head is the whole model, trained on the raw 40-sample signals.

The inputs never change, so after the freeze GLAI's training patterns come from a pattern cache. This setting
also carries the full freeze-policy study (flip-rate rules, fixed budgets, reduction, refresh, no cache).
"""

from __future__ import annotations

from ..data import mnist1d
from .common import Preset, Record, policy_variants, run_heads, select

NAME = "scratch"


def variants_for(preset: Preset) -> dict:
    return policy_variants(preset.policy_grid, preset.scratch_epochs)


def count(preset: Preset, only=None) -> int:
    return len(preset.seeds) * len(select(variants_for(preset), only))


def run(preset: Preset, device, data_seed: int = 42, tick=None, only=None) -> list[Record]:
    data = mnist1d(preset.samples, seed=data_seed).to(device)
    variants = select(variants_for(preset), only)
    return run_heads(NAME, data, variants, preset=preset, epochs=preset.scratch_epochs, tick=tick)
