"""What a head learns and how it is scored: the loss it minimises, the test score it is timed on, and how far under
the MLP's best score a run still counts as having reached the target.

The study's settings are classifications of MNIST-1D: cross-entropy, accuracy in percent, target the MLP's best
minus 0.5 point. A user's data may also be a regression: mean squared error, scored by the coefficient of
determination

    R² = 1 - sum_i (y_i - f(x_i))² / sum_i (y_i - mean(y))²          (over the test samples)

with the target the MLP's best R² minus 0.01. R² does not depend on the scale of ``y`` (so targets can be
standardised for training) and its best epoch is also the epoch of the lowest test RMSE, which follows from it:
``RMSE = sqrt(1 - R²) * std(y_test)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data import NUM_CLASSES
from ..train import accuracy

ACCURACY_TOLERANCE = 0.5  # accuracy points under the MLP's best that count as "reached"
R2_TOLERANCE = 0.01  # R² under the MLP's best that counts as "reached"


@dataclass(frozen=True)
class Task:
    """``kind`` "classification" or "regression"; ``out_features`` the head's outputs; ``metric`` the score's name
    and ``unit``; ``tolerance`` the target's distance under the MLP's best score."""

    kind: str
    out_features: int
    metric: str
    unit: str
    tolerance: float
    loss: Callable
    score: Callable

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "out_features": self.out_features,
            "metric": self.metric,
            "unit": self.unit,
            "tolerance": self.tolerance,
        }


def mse_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of a one-output head ``[N, 1]`` against targets ``[N]``."""
    return F.mse_loss(output.squeeze(-1), target)


@torch.no_grad()
def r2_score(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> float:
    """Coefficient of determination of ``model`` on ``(x, y)``, computed in float64 (1 is perfect, 0 is the
    constant mean, negative is worse than that)."""
    was = model.training
    model.eval()
    sse = 0.0
    for start in range(0, x.shape[0], batch_size):
        pred = model(x[start : start + batch_size]).squeeze(-1).double()
        sse += float(((pred - y[start : start + batch_size].double()) ** 2).sum())
    model.train(was)
    y64 = y.double()
    sst = float(((y64 - y64.mean()) ** 2).sum())
    return 1.0 - sse / sst if sst > 0 else -math.inf


def classification(num_classes: int) -> Task:
    return Task("classification", num_classes, "accuracy", "%", ACCURACY_TOLERANCE, F.cross_entropy, accuracy)


REGRESSION = Task("regression", 1, "R²", "", R2_TOLERANCE, mse_loss, r2_score)
CLASSIFY = classification(NUM_CLASSES)  # the study's MNIST-1D settings
