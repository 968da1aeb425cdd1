"""Learning rates tuned for every variant on a validation split, with the same budget for each.

A variant gets ``budget`` trial runs (seed 0, the setting's epochs, trained on the training samples less a
held-out fifth and scored by the best accuracy on that fifth); the best trial's hyper-parameters are used for
every seed of the real runs, which train on all training samples and are scored on the test set.

- A plain MLP tries the first ``budget`` learning rates of :data:`LEARNING_RATES`.
- A GLAI variant tries the first ``budget - 2`` of them with the quantitative phase at the same rate, then the
  two factors of :data:`Q_SCALES` on the quantitative phase at the best of those rates: the same number of runs.
- ``MLP again`` is the reference MLP repeated to measure timing noise: it takes the MLP's choice, untried.

The list starts at the previous studies' shared rate and widens around it, so a small budget stays near it.
Ties keep the earlier trial.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..data import Split
from ..train import FreezePolicy
from .common import MLP, Hyper, Plain

LEARNING_RATES = (2e-3, 4e-3, 1e-3, 8e-3, 5e-4, 1.6e-2)
Q_SCALES = (0.5, 2.0)


def validation_split(data: Split, fraction: float = 0.2, seed: int = 0) -> Split:
    """The training samples split in two: the first part trains, the held-out ``fraction`` is the test part."""
    n = data.x.shape[0]
    held = max(1, round(n * fraction))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(data.x.device)
    keep, out = order[held:], order[:held]
    return Split(data.x[keep], data.y[keep], data.x[out], data.y[out])


def _tunes(spec) -> bool:
    return not (isinstance(spec, Plain) and spec.again)


def trial_count(variants: dict, budget: int) -> int:
    """Trial runs :func:`tune` makes for ``variants``."""
    return budget * sum(_tunes(spec) for spec in variants.values()) if budget else 0


def trials_for(spec, budget: int) -> list[Hyper]:
    """The first trials of a variant (for GLAI, the scale trials follow once the best rate is known)."""
    if budget < 1:
        raise ValueError(f"a tuning budget is at least 1 run, got {budget}")
    if budget > len(LEARNING_RATES) + (0 if isinstance(spec, Plain) else len(Q_SCALES)):
        raise ValueError(f"a tuning budget of {budget} runs is more than the grid holds")
    if isinstance(spec, Plain) or budget <= len(Q_SCALES):
        return [Hyper(lr) for lr in LEARNING_RATES[:budget]]
    return [Hyper(lr) for lr in LEARNING_RATES[: budget - len(Q_SCALES)]]


def tune(
    variants: dict[str, FreezePolicy | Plain],
    budget: int,
    score: Callable[[str, object, Hyper], float],
    tick: Callable[[], None] | None = None,
) -> tuple[dict[str, Hyper], dict[str, list]]:
    """The chosen :class:`Hyper` of every variant and its trials ``[(lr, lr_scale, score), ...]``.

    ``score(variant, spec, hyper)`` trains one trial and returns its validation accuracy."""
    chosen: dict[str, Hyper] = {}
    trials: dict[str, list] = {}
    for variant, spec in variants.items():
        if not _tunes(spec):
            continue
        done: list[tuple[Hyper, float]] = []

        def run(hyper: Hyper) -> None:
            done.append((hyper, float(score(variant, spec, hyper))))
            if tick is not None:
                tick()

        for hyper in trials_for(spec, budget):
            run(hyper)
        if not isinstance(spec, Plain) and budget > len(Q_SCALES):
            best = max(done, key=lambda d: d[1])[0]
            for scale in Q_SCALES:
                run(Hyper(best.lr, scale))
        best_hyper, _ = max(done, key=lambda d: d[1])  # max keeps the first of equal scores
        chosen[variant] = best_hyper
        trials[variant] = [(h.lr, h.lr_scale, s) for h, s in done]
    for variant, spec in variants.items():
        if not _tunes(spec):
            chosen[variant], trials[variant] = chosen[MLP], []
    return chosen, trials
