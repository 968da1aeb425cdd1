"""Offline data for the demo and the experiments: MNIST-1D generated locally.

MNIST-1D (Greydanus, 2020) draws 40-sample signals from ten fixed digit templates with random padding,
translation, scaling, shear and noise. The ``mnist1d`` package ships the templates, so
``make_dataset(args)`` builds a full dataset on the CPU in a second or two without any network access.
``mnist1d.data.get_dataset`` would download a pickle instead: it is never called here.

Every draw is a function of ``(num_samples, seed)``, so two draws with different seeds are independent
samples of the same distribution (the frozen-backbone setting trains its backbone on one and its heads on
another). :func:`generate_mnist1d` is the single place that talks to the generator; swap it to use another one.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

NUM_CLASSES = 10
SIGNAL_LENGTH = 40


@dataclass(frozen=True)
class Split:
    """Float32 inputs ``[N, 40]`` and int64 labels ``[N]`` for training and test."""

    x: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def in_features(self) -> int:
        return self.x.shape[1]

    def to(self, device) -> Split:
        return Split(*(t.to(device) for t in (self.x, self.y, self.x_test, self.y_test)))


def generate_mnist1d(num_samples: int, seed: int, train_split: float = 0.8) -> dict:
    """Raw arrays from the ``mnist1d`` generator (its templates are inside the wheel: nothing is downloaded)."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:  # the demo extra is optional for the library itself
        raise ImportError("MNIST-1D needs the `mnist1d` package: pip install 'glai[demo]'") from exc
    args = get_dataset_args()
    args.num_samples, args.seed, args.train_split = int(num_samples), int(seed), float(train_split)
    return make_dataset(args)


@functools.lru_cache(maxsize=8)
def _cached(num_samples: int, seed: int, train_split: float) -> tuple[np.ndarray, ...]:
    # Generation is pure Python per sample (about 0.3 ms each); experiments ask for the same draw many times.
    raw = generate_mnist1d(num_samples, seed, train_split)
    return tuple(np.asarray(raw[k]) for k in ("x", "y", "x_test", "y_test"))


def mnist1d(num_samples: int = 5000, seed: int = 42, train_split: float = 0.8) -> Split:
    """One MNIST-1D draw as tensors. ``num_samples`` is rounded down to a multiple of the 10 classes by the
    generator; ``seed`` fixes the draw (42 is the standard published dataset's seed)."""
    if num_samples < 2 * NUM_CLASSES:
        raise ValueError(f"num_samples must be at least {2 * NUM_CLASSES}, got {num_samples}")
    x, y, xt, yt = _cached(int(num_samples), int(seed), float(train_split))
    return Split(
        torch.tensor(x, dtype=torch.float32),
        torch.tensor(y, dtype=torch.int64),
        torch.tensor(xt, dtype=torch.float32),
        torch.tensor(yt, dtype=torch.int64),
    )


def few_shot_indices(labels: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """``k`` indices per class drawn without replacement (sorted), reproducible from ``seed``."""
    gen = torch.Generator().manual_seed(int(seed))
    picked = []
    for c in range(NUM_CLASSES):
        idx = torch.nonzero(labels == c).flatten()
        if idx.numel() < k:
            raise ValueError(f"class {c} has {idx.numel()} samples, fewer than k={k}")
        picked.append(idx[torch.randperm(idx.numel(), generator=gen)[:k]])
    return torch.cat(picked).sort().values
