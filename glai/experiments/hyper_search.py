"""Hyper-parameter search: learning rates tuned for every variant on a validation split, the same budget for each.

A variant gets ``len(grid) + 2`` trial runs (seed 0, the setting's epochs, trained on the training samples less a
held-out fifth and scored by the best accuracy on that fifth); the best trial's hyper-parameters are used for
every seed of the real runs, which train on all training samples and are scored on the test set.

- Every variant first tries each learning rate of the preset's grid (a factor 4 apart).
- Then two refinements around the best of those: a plain MLP tries that rate x0.5 and x2; a GLAI variant keeps it
  for the structural phase and tries its quantitative phase at x0.5 and x2 (the ``lr_scale`` of its policy).
- ``MLP again`` is the reference MLP repeated to measure timing noise: it takes the MLP's choice, untried.

So every model sees the same range of rates and spends the same number of runs. Ties keep the earlier trial.
A trial whose training diverges (a non-finite loss) scores minus infinity: it loses to every trial that trained,
and the study goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..data import Split
from ..monitor import NonFiniteError
from ..train import FreezePolicy
from .variants import MLP, Plain

REFINE = (0.5, 2.0)


@dataclass(frozen=True)
class Hyper:
    """The learning rate of a variant, and for GLAI the factor on it in the quantitative phase."""

    lr: float
    lr_scale: float = 1.0


def validation_split(data: Split, fraction: float = 0.2, seed: int = 0) -> Split:
    """The training samples split in two: the first part trains, the held-out ``fraction`` is the test part."""
    n = data.x.shape[0]
    held = max(1, round(n * fraction))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(data.x.device)
    keep, out = order[held:], order[:held]
    return Split(data.x[keep], data.y[keep], data.x[out], data.y[out])


def _tunes(spec) -> bool:
    return not (isinstance(spec, Plain) and spec.again)


def trial_count(variants: dict, grid: Sequence[float]) -> int:
    """Trial runs :func:`tune` makes for ``variants``."""
    if not grid:
        return 0
    return (len(grid) + len(REFINE)) * sum(_tunes(spec) for spec in variants.values())


def tune(
    variants: dict[str, FreezePolicy | Plain],
    grid: Sequence[float],
    score: Callable[[str, object, Hyper], float],
    tick: Callable[[], None] | None = None,
) -> tuple[dict[str, Hyper], dict[str, list]]:
    """The chosen :class:`Hyper` of every variant and its trials ``[(lr, lr_scale, score), ...]``.

    ``score(variant, spec, hyper)`` trains one trial and returns its validation accuracy."""
    if not grid:
        raise ValueError("a tuning grid needs at least one learning rate")
    chosen: dict[str, Hyper] = {}
    trials: dict[str, list] = {}
    for variant, spec in variants.items():
        if not _tunes(spec):
            continue
        done: list[tuple[Hyper, float]] = []

        def run(hyper: Hyper) -> None:
            try:
                value = float(score(variant, spec, hyper))
            except NonFiniteError:
                value = float("-inf")
            done.append((hyper, value))
            if tick is not None:
                tick()

        for lr in grid:
            run(Hyper(lr))
        best = max(done, key=lambda d: d[1])[0]
        for factor in REFINE:
            run(Hyper(best.lr * factor) if isinstance(spec, Plain) else Hyper(best.lr, factor))
        chosen[variant] = max(done, key=lambda d: d[1])[0]  # max keeps the first of equal scores
        trials[variant] = [(h.lr, h.lr_scale, s) for h, s in done]
    for variant, spec in variants.items():
        if not _tunes(spec):
            chosen[variant], trials[variant] = chosen[MLP], []
    return chosen, trials
