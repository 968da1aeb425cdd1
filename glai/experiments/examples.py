"""Example data sets made offline with numpy (``glai-experiment --make-example KIND FILE``), to try ``--data`` on.

Both are drawn from a random "teacher" ReLU network, so a ReLU head can learn them but not in one step:
``x ~ N(0, I)`` with ``FEATURES`` features, ``h = relu(x W1 + b1)`` with ``TEACHER_WIDTH`` units, ``z = h W2``.

- ``classification``: ``CLASSES`` classes, the label is the ``argmax`` of ``z`` standardised per column (classes
  of similar size) plus Gumbel noise (so the classes overlap a little), written as the names ``class_a``, ``class_b``, ... to show the label mapping;
- ``regression``: the target is ``z[:, 0]`` plus Gaussian noise of a tenth of its standard deviation.

The format follows the file's suffix (.csv, .npz or .pt); the draw depends only on ``seed`` and ``samples``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

KINDS = ("classification", "regression")
FEATURES, TEACHER_WIDTH, CLASSES = 24, 64, 5


def draw(kind: str, samples: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)`` of the example ``kind``."""
    if kind not in KINDS:
        raise ValueError(f"expected an example kind in {list(KINDS)}, got {kind!r}")
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(samples, FEATURES))
    w1 = rng.normal(size=(FEATURES, TEACHER_WIDTH)) / np.sqrt(FEATURES)
    b1 = rng.normal(size=TEACHER_WIDTH) * 0.5
    w2 = rng.normal(size=(TEACHER_WIDTH, CLASSES)) / np.sqrt(TEACHER_WIDTH)
    z = np.maximum(x @ w1 + b1, 0.0) @ w2
    if kind == "classification":
        noisy = (z - z.mean(0)) / z.std(0) + 0.3 * rng.gumbel(size=z.shape)
        names = np.array([f"class_{chr(ord('a') + c)}" for c in range(CLASSES)])
        return x, names[noisy.argmax(1)]
    y = z[:, 0]
    return x, y + 0.1 * y.std() * rng.normal(size=samples)


def write(path, x: np.ndarray, y: np.ndarray) -> Path:
    """``X`` and ``y`` as ``path``'s format: .csv (columns f0.. and target), .npz or .pt (dict of arrays)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".npz", ".pt"):
        path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        with open(path, "w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow([f"f{j}" for j in range(x.shape[1])] + ["target"])
            for row, target in zip(x, y):
                out.writerow(
                    [f"{v:.6g}" for v in row] + [target if isinstance(target, str) else f"{target:.6g}"]
                )
    elif suffix == ".npz":
        np.savez(path, X=x, y=y)
    elif suffix == ".pt":
        if y.dtype.kind in "US":
            raise ValueError("a .pt file holds tensors, which cannot hold string labels: use .csv or .npz")
        torch.save({"X": torch.tensor(x, dtype=torch.float32), "y": torch.tensor(y)}, path)
    else:
        raise ValueError(f"expected a file ending in .csv, .npz or .pt, got {str(path)!r}")
    return path


def make_example(kind: str, path, samples: int = 4000, seed: int = 0) -> Path:
    return write(path, *draw(kind, samples, seed))
