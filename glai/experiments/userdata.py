"""A user's features and targets, read and checked before anything is trained or written.

Formats: ``.npz`` with arrays ``X`` and ``y`` (optionally ``X_test`` and ``y_test``); ``.pt`` holding a dict of
tensors with the same keys; ``.csv`` with a header row, the target a named column (the last by default) and every
other column a numeric feature. Every problem raises :class:`DataError` with one line naming what was expected and
what came, so that the command can refuse before it creates its output folder.

:func:`prepare` turns arrays into the study's :class:`~glai.data.Split` and :class:`~.task.Task`:

- task ``auto``: string labels, or integer labels with at most ``MAX_AUTO_CLASSES`` distinct values, are a
  classification; any other numeric target is a regression. Class labels are mapped to ``0 .. K-1`` in sorted
  order and the mapping is kept.
- Without a test split, a seeded hold-out of ``test_fraction`` of the samples: stratified by class (every class
  keeps at least one sample on each side) or random for a regression.
- Features are standardised with the mean and standard deviation of the training split only (a constant column is
  only centred); regression targets likewise, which leaves R² unchanged and keeps the learning rates of the
  study's grid meaningful whatever the target's units.
"""

from __future__ import annotations

import csv
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data import Split
from .task import REGRESSION, Task, classification

FORMATS = (".npz", ".csv", ".pt")
KEYS = ("X", "y", "X_test", "y_test")
MAX_AUTO_CLASSES = 32  # integer targets with more distinct values are a regression under --task auto
MIN_TRAIN = 20  # training samples the tuning's validation split needs (it holds out a fifth)
TASKS = ("auto", "classification", "regression")


class DataError(ValueError):
    """A user's data cannot be used as given; the message is one line."""


@dataclass
class Prepared:
    """The data as the study trains on it, its task, and what was done to it (kept in the results)."""

    split: Split
    task: Task
    info: dict = field(default_factory=dict)


def load(path, target: str | None = None) -> dict[str, np.ndarray]:
    """``{"X": ..., "y": ..., ["X_test": ..., "y_test": ...]}`` as numpy arrays from a .npz, .pt or .csv file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise DataError(f"expected a file ending in {', '.join(FORMATS)}, got {str(path)!r}")
    if not path.exists():
        raise DataError(f"expected an existing file, got {str(path)!r}, which does not exist")
    if path.is_dir():
        raise DataError(f"expected a file, got {str(path)!r}, which is a folder")
    if target is not None and suffix != ".csv":
        raise DataError(f"--target names a column of a .csv file, got a {suffix} file {str(path)!r}")
    if suffix == ".csv":
        return _load_csv(path, target)
    if suffix == ".npz":
        if not zipfile.is_zipfile(
            path
        ):  # np.savez writes a zip archive; np.load would call anything else pickled
            raise DataError(
                f"expected a .npz archive of arrays (np.savez), got {str(path)!r}, which is not a zip file"
            )
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            first = str(exc).split(". ")[0]
            raise DataError(
                f"expected a .npz archive of arrays, got {str(path)!r}, which cannot be read ({first})"
            ) from None
    else:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many kinds for a file that is not its own
            raise DataError(
                f"expected a .pt file of a dict of tensors saved by torch.save, got {str(path)!r}, which "
                f"torch.load(weights_only=True) cannot read ({type(exc).__name__})"
            ) from None
        if not isinstance(loaded, dict):
            raise DataError(f"expected a .pt file holding a dict of tensors, got a {type(loaded).__name__}")
        arrays = {}
        for key, value in loaded.items():
            if key in KEYS and not isinstance(value, torch.Tensor):
                raise DataError(f"expected {key!r} to be a tensor, got a {type(value).__name__}")
            if key in KEYS:
                arrays[key] = value.detach().cpu().numpy()
    return _pick_keys(arrays, str(path))


def _pick_keys(arrays: dict, where: str) -> dict[str, np.ndarray]:
    missing = [k for k in ("X", "y") if k not in arrays]
    if missing:
        raise DataError(f"expected the keys X and y in {where}, got {sorted(arrays)} (missing {missing})")
    if ("X_test" in arrays) != ("y_test" in arrays):
        given = "X_test" if "X_test" in arrays else "y_test"
        raise DataError(f"expected X_test and y_test together in {where}, got only {given}")
    return {k: np.asarray(arrays[k]) for k in KEYS if k in arrays}


def _load_csv(path: Path, target: str | None) -> dict[str, np.ndarray]:
    try:
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"expected a text .csv file, got {str(path)!r}, which cannot be read ({exc})")
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if len(rows) < 2:
        raise DataError(f"expected a header row and data rows in {str(path)!r}, got {len(rows)} row(s)")
    header = [h.strip() for h in rows[0]]
    if len(header) < 2:
        raise DataError(f"expected at least one feature column and a target column, got the header {header}")
    name = header[-1] if target is None else target
    if name not in header:
        raise DataError(f"expected a target column {name!r} (--target), got the columns {header}")
    t = header.index(name)
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DataError(
                f"expected {len(header)} cells per row as in the header, got {len(row)} on line {i}"
            )
    features = [j for j in range(len(header)) if j != t]
    cells = np.array([[row[j] for j in features] for row in rows[1:]], dtype=str)
    try:  # the whole table at once; the cell-by-cell pass below runs only to say where a problem is
        x = np.char.strip(cells).astype(np.float64)
        if np.all(np.isfinite(x)):
            return {"X": x, "y": _csv_target(rows, t, name)}
    except ValueError:
        pass
    x = np.empty(cells.shape, dtype=np.float64)
    for c, j in enumerate(features):
        for i, row in enumerate(rows[1:]):
            cell = row[j].strip()
            if not cell:
                raise DataError(
                    f"expected a value in every feature cell, got an empty one in column {header[j]!r} on line {i + 2}"
                )
            try:
                value = x[i, c] = float(cell)
            except ValueError:
                raise DataError(
                    f"expected numeric feature columns, got {cell!r} in column {header[j]!r} on line {i + 2} "
                    "(encode categories as numbers, or drop the column)"
                ) from None
            if not math.isfinite(value):
                raise DataError(
                    f"expected finite features, got {cell!r} in column {header[j]!r} on line {i + 2}"
                )
    return {"X": x, "y": _csv_target(rows, t, name)}  # cells Python reads but numpy did not, e.g. "1_000"


def _csv_target(rows: list[list[str]], t: int, name: str) -> np.ndarray:
    """The target column: floats when every cell is a number, else the labels as strings."""
    labels = [row[t].strip() for row in rows[1:]]
    try:
        y = np.array([float(v) for v in labels])
    except ValueError:
        empty = [i + 2 for i, v in enumerate(labels) if not v]
        if empty:
            raise DataError(
                f"expected a target on every row, got an empty {name!r} on line {empty[0]}"
            ) from None
        y = np.array(labels)
    else:
        bad = np.flatnonzero(~np.isfinite(y))
        if bad.size:
            raise DataError(
                f"expected finite targets, got {labels[bad[0]]!r} in {name!r} on line {bad[0] + 2}"
            )
    return y


def _check_array(name: str, a: np.ndarray, ndim: int) -> np.ndarray:
    if a.ndim == 2 and ndim == 1 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != ndim:
        raise DataError(f"expected {name} with {ndim} dimension(s), got shape {tuple(a.shape)}")
    if a.shape[0] == 0:
        raise DataError(f"expected samples in {name}, got none")
    if ndim == 2 and not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise DataError(
            f"expected numeric features in {name}, got dtype {a.dtype} (encode categories as numbers)"
        )
    if np.issubdtype(a.dtype, np.number) and not np.all(np.isfinite(a)):
        bad = np.argwhere(~np.isfinite(a))
        where = ", ".join(str(int(i)) for i in bad[0])
        raise DataError(
            f"expected finite values in {name}, got {a[tuple(bad[0])]} at {name}[{where}] "
            f"({len(bad)} non-finite value(s) in all)"
        )
    return a


def _show(value) -> str:
    """A label as the user wrote it: ``3`` or ``'cat'``, not ``np.int64(3)``."""
    return repr(value.item() if hasattr(value, "item") else value)


def _is_integral(y: np.ndarray) -> bool:
    return y.dtype.kind in "iub" or (y.dtype.kind == "f" and bool(np.all(y == np.round(y))))


def decide_task(y: np.ndarray, task: str) -> tuple[str, str]:
    """``(kind, why)`` for targets ``y`` and the asked ``task`` (``auto``, ``classification``, ``regression``)."""
    if task not in TASKS:
        raise DataError(f"expected a task in {list(TASKS)}, got {task!r}")
    text = y.dtype.kind in "US"
    distinct = len(np.unique(y))
    if task == "regression":
        if text:
            raise DataError(f"expected numeric targets for a regression, got labels such as {str(y[0])!r}")
        return "regression", "asked (--task regression)"
    if task == "classification":
        if not (text or _is_integral(y)):
            sample = next(v for v in y if v != round(v))
            raise DataError(
                f"expected integer or string class labels for a classification, got continuous targets such as "
                f"{sample:g} ({distinct} distinct values; use --task regression)"
            )
        return "classification", "asked (--task classification)"
    if text:
        return "classification", "auto: string labels"
    if _is_integral(y) and distinct <= MAX_AUTO_CLASSES:
        return (
            "classification",
            f"auto: integer labels with {distinct} distinct values (<= {MAX_AUTO_CLASSES})",
        )
    why = "non-integer" if not _is_integral(y) else f"{distinct} distinct integer (> {MAX_AUTO_CLASSES})"
    return "regression", f"auto: {why} targets"


def _holdout(y: np.ndarray, kind: str, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Training and test indices of a seeded hold-out, and how it was made."""
    rng = np.random.default_rng(seed)
    n = len(y)
    if kind == "regression":
        order = rng.permutation(n)
        held = max(1, round(n * fraction))
        return np.sort(order[held:]), np.sort(order[:held]), f"random {fraction:.0%} hold-out (seed {seed})"
    train, test = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if len(idx) < 2:
            raise DataError(
                f"expected at least 2 samples of every class for the stratified hold-out, got {len(idx)} of class "
                f"{_show(c)} (give X_test and y_test, or drop the class)"
            )
        idx = rng.permutation(idx)
        held = min(len(idx) - 1, max(1, round(len(idx) * fraction)))
        test.append(idx[:held])
        train.append(idx[held:])
    text = f"stratified {fraction:.0%} hold-out (seed {seed})"
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test)), text


def prepare(
    X,
    y,
    X_test=None,
    y_test=None,
    *,
    task: str = "auto",
    standardize: bool = True,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Prepared:
    """Check the arrays (numpy or torch) and build the study's split, task and a record of what was done."""
    arrays = {"X": X, "y": y}
    if (X_test is None) != (y_test is None):
        raise DataError(
            "expected X_test and y_test together, got only " + ("X_test" if y_test is None else "y_test")
        )
    if X_test is not None:
        arrays.update(X_test=X_test, y_test=y_test)
    for k, v in arrays.items():
        arrays[k] = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
        arrays[k] = _check_array(k, arrays[k], 2 if k.startswith("X") else 1)
    x, t = arrays["X"], arrays["y"]
    if len(x) != len(t):
        raise DataError(f"expected as many targets as samples, got X with {len(x)} rows and y with {len(t)}")
    given = "X_test" in arrays
    if given:
        xt, tt = arrays["X_test"], arrays["y_test"]
        if len(xt) != len(tt):
            raise DataError(
                f"expected as many test targets as test samples, got X_test {len(xt)}, y_test {len(tt)}"
            )
        if xt.shape[1] != x.shape[1]:
            raise DataError(f"expected X_test with X's {x.shape[1]} features, got {xt.shape[1]}")
        if (tt.dtype.kind in "US") != (t.dtype.kind in "US"):
            raise DataError(f"expected y and y_test of one kind, got dtypes {t.dtype} and {tt.dtype}")
    kind, why = decide_task(np.concatenate([t, arrays["y_test"]]) if given else t, task)
    info: dict = {"task": kind, "task_reason": why, "features": int(x.shape[1])}
    classes = None
    if kind == "classification":
        classes = np.unique(t)
        if len(classes) < 2:
            raise DataError(f"expected at least 2 classes, got only {_show(classes[0])} in y")
        if given:
            unseen = sorted(set(np.unique(tt).tolist()) - set(classes.tolist()))
            if unseen:
                raise DataError(f"expected y_test's classes to appear in y, got {unseen[:5]} only in y_test")
        info["classes"] = {str(c.item() if hasattr(c, "item") else c): i for i, c in enumerate(classes)}
    elif np.ptp(t.astype(np.float64)) == 0:
        raise DataError(f"expected targets that vary for a regression, got the constant {t[0]:g} in y")
    if given:
        info["holdout"] = f"the given test split ({len(arrays['X_test'])} samples)"
    else:
        tr, te, info["holdout"] = _holdout(t, kind, test_fraction, seed)
        xt, tt, x, t = x[te], t[te], x[tr], t[tr]
    if len(x) < MIN_TRAIN:
        raise DataError(
            f"expected at least {MIN_TRAIN} training samples for the validation split the learning rates are tuned "
            f"on, got {len(x)}"
        )
    x, xt = x.astype(np.float64), xt.astype(np.float64)
    if standardize:
        mean, std = x.mean(0), x.std(0)
        std = np.where(std > 0, std, 1.0)
        x, xt = (x - mean) / std, (xt - mean) / std
    info.update(standardized=bool(standardize), train_samples=len(x), test_samples=len(xt))
    if kind == "classification":
        lookup = {c: i for i, c in enumerate(classes.tolist())}
        y_train = torch.tensor([lookup[v] for v in t.tolist()], dtype=torch.int64)
        y_test_t = torch.tensor([lookup[v] for v in tt.tolist()], dtype=torch.int64)
        task_obj = classification(len(classes))
    else:
        t, tt = t.astype(np.float64), tt.astype(np.float64)
        info["test_target_std"] = float(tt.std())  # RMSE = sqrt(1 - R²) * this, in the target's units
        centre, scale = t.mean(), t.std()
        y_train = torch.tensor((t - centre) / scale, dtype=torch.float32)
        y_test_t = torch.tensor((tt - centre) / scale, dtype=torch.float32)
        task_obj = REGRESSION
    split = Split(
        torch.tensor(x, dtype=torch.float32), y_train, torch.tensor(xt, dtype=torch.float32), y_test_t
    )
    return Prepared(split, task_obj, info)
