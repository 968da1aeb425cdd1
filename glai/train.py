"""One training loop for a classifier head, MLP or GLAI, shared by the demo and the experiments.

What it measures is time to accuracy (docs/design.md section 6): the clock runs over everything a user would pay for to
train (optimizer steps, freeze-monitor checks, building and refreshing the pattern cache) and stops for the
per-epoch test evaluation, which only draws the curve. The cost of each GLAI phase is kept apart.

Both models see the same batches in the same order and use the same optimizer and learning-rate schedule. The
optimizer is built once: at a freeze with ``reduction > 1`` the model keeps its Parameters (resized in place) and
the freeze drops the optimizer's state for them. The schedule is applied by hand at each epoch, times the
policy's ``lr_scale`` in the quantitative phase.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .cache import PatternCache
from .data import Split
from .monitor import FreezeMonitor, NonFiniteError
from .nn import GLAIMLP


def plain_mlp(in_features: int, hidden: Sequence[int], out_features: int) -> nn.Sequential:
    """The ReLU MLP that a :class:`GLAIMLP` of the same widths replaces (same layers, same init order)."""
    widths = (in_features, *hidden, out_features)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters; for a :class:`GLAIMLP` those of its quantitative network, which is what it is
    matched on (with ``reduction > 1`` the structural phase trains fewer)."""
    if isinstance(model, GLAIMLP):
        widths = (model.in_features, *model.hidden_features, model.out_features)
        return sum(a * b + (b if model.bias else 0) for a, b in zip(widths[:-1], widths[1:]))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@dataclass(frozen=True)
class FreezePolicy:
    """When and how a GLAI head freezes.

    ``kind="monitor"``: FreezeMonitor rule (``threshold``/``patience``, ``None`` = the library defaults),
    with ``budget`` epochs as its ``max_checks`` limit. ``kind="epoch"``: freeze after exactly ``epoch`` epochs.
    ``refresh_every=k`` re-freezes from the quantitative weights every ``k`` epochs after the freeze (r = 1).
    ``cache``: look training patterns up in a :class:`PatternCache` instead of running the structure per batch.
    ``init``: how the quantitative network starts (``freeze(init=...)``; ``None`` = the library default).
    ``lr_scale``: the learning rate of the quantitative phase is the schedule's times this.
    """

    kind: str = "monitor"
    threshold: float | None = None
    patience: int | None = None
    budget: int | None = None
    epoch: int | None = None
    reduction: int = 1
    refresh_every: int | None = None
    cache: bool = True
    init: str | None = None
    lr_scale: float = 1.0

    def label(self) -> str:
        if self.kind == "epoch":
            text = f"freeze@{self.epoch}"
        else:
            thr = "default" if self.threshold is None else f"{self.threshold:g}"
            pat = "" if self.patience is None else f"/p{self.patience}"
            text = f"flip<{thr}{pat}"
        if self.reduction != 1:
            text += f" r={self.reduction}"
        if self.refresh_every:
            text += f" refresh/{self.refresh_every}"
        if self.init is not None:
            text += f" {self.init}"
        if self.lr_scale != 1.0:
            text += f" qlr*{self.lr_scale:g}"
        if not self.cache:
            text += " no-cache"
        return text

    def monitor(self, model: GLAIMLP, probe: torch.Tensor, optimizer=None) -> FreezeMonitor:
        # The first check (before any training) only records the patterns, so "after epoch e" is check e + 1.
        freeze = {"optimizer": optimizer, "init": self.init}
        if self.kind == "epoch":
            if self.epoch is None or self.epoch < 1:
                raise ValueError(f"an epoch policy needs epoch >= 1, got {self.epoch}")
            # A zero threshold never fires (rates are never negative): only the budget freezes.
            return FreezeMonitor(model, probe, threshold=0.0, max_checks=self.epoch + 1, **freeze)
        if self.kind != "monitor":
            raise ValueError(f"freeze policy kind must be 'monitor' or 'epoch', got {self.kind!r}")
        kwargs = dict(freeze)
        if self.threshold is not None:
            kwargs["threshold"] = self.threshold
        if self.patience is not None:
            kwargs["patience"] = self.patience
        budget = None if self.budget is None else self.budget + 1
        return FreezeMonitor(model, probe, max_checks=budget, **kwargs)


def make_head(
    in_features: int, hidden: Sequence[int], out_features: int, policy: FreezePolicy | None, device=None
) -> nn.Module:
    """The plain ReLU MLP when ``policy`` is ``None``, else the :class:`GLAIMLP` of the same widths (with the
    policy's reduction). Both are initialised on the CPU and then moved: after the same ``torch.manual_seed`` they
    start from the same weights on any device, which initialising on a GPU (its own generator) would break."""
    if policy is None:
        model = plain_mlp(in_features, hidden, out_features)
    else:
        model = GLAIMLP(in_features, list(hidden), out_features, reduction=policy.reduction)
    return model.to(device)


@dataclass
class RunResult:
    """Per-epoch curves and totals of one training run. Times are seconds of training (evaluation excluded)."""

    name: str
    params: int
    test_acc: list[float] = field(default_factory=list)  # after each epoch, in percent
    train_loss: list[float] = field(default_factory=list)
    time: list[float] = field(default_factory=list)  # cumulative training seconds at the end of each epoch
    freeze_epoch: int | None = None  # epochs trained in the structural phase
    freeze_reason: str | None = None
    flip_history: list[float] = field(default_factory=list)
    cost: dict = field(default_factory=lambda: {"structural": 0.0, "cache": 0.0, "quantitative": 0.0})

    @property
    def best_acc(self) -> float:
        return max(self.test_acc) if self.test_acc else float("nan")

    @property
    def best_epoch(self) -> int:
        return self.test_acc.index(self.best_acc) + 1 if self.test_acc else 0

    @property
    def total_time(self) -> float:
        return self.time[-1] if self.time else 0.0

    @property
    def epochs(self) -> int:
        return len(self.test_acc)

    def time_to(self, target: float) -> float | None:
        """Training seconds until test accuracy first reached ``target`` percent, ``None`` if it never did."""
        for acc, t in zip(self.test_acc, self.time):
            if acc >= target:
                return t
        return None

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(
            best_acc=self.best_acc, best_epoch=self.best_epoch, total_time=self.total_time, epochs=self.epochs
        )
        return out


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> float:
    was = model.training
    model.eval()
    correct = 0
    for start in range(0, x.shape[0], batch_size):
        correct += (
            (model(x[start : start + batch_size]).argmax(-1) == y[start : start + batch_size]).sum().item()
        )
    model.train(was)
    return 100.0 * correct / max(1, x.shape[0])


def cosine_lr(base: float, epoch: int, epochs: int) -> float:
    return base * 0.5 * (1.0 + math.cos(math.pi * epoch / max(1, epochs)))


def make_optimizer(params, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def train_classifier(
    model: nn.Module,
    data: Split,
    *,
    name: str,
    epochs: int,
    batch_size: int = 64,
    lr: float = 2e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    policy: FreezePolicy | None = None,
    probe_size: int = 512,
    progress: Callable | None = None,
    loss: Callable = F.cross_entropy,
    score: Callable | None = None,
) -> RunResult:
    """Train ``model`` (a plain MLP, or a :class:`GLAIMLP` frozen by ``policy``) on ``data``; evaluate each epoch.

    ``progress`` is called as ``progress(epoch, result)`` after each epoch (e.g. to move a progress bar).
    ``loss(output, target)`` is minimised (cross-entropy by default) and ``score(model, x_test, y_test)``, higher
    is better, fills ``test_acc`` (:func:`accuracy` in percent by default; a regression passes R² and MSE).
    """
    score = accuracy if score is None else score
    glai = isinstance(model, GLAIMLP)
    if glai and policy is None:
        policy = FreezePolicy()
    if glai and policy.refresh_every and model.reduction != 1:
        # Checked on the model, which is what refreeze() needs, not on the policy's label.
        raise ValueError(
            "refreshing the patterns from the quantitative weights needs reduction 1, "
            f"got a model with reduction={model.reduction}"
        )
    result = RunResult(name=name, params=count_parameters(model))
    opt = make_optimizer(model.parameters(), lr, weight_decay)
    cache = None
    monitor = None
    if glai:
        monitor = policy.monitor(model, data.x[:probe_size], optimizer=opt)
        monitor.check()  # records the initial patterns; cheap, but it is part of the structural phase
    gen = torch.Generator().manual_seed(int(seed))
    n = data.x.shape[0]
    clock = 0.0
    model.train()
    for epoch in range(epochs):
        structural = glai and model.phase == "structural"
        scale = policy.lr_scale if glai and not structural else 1.0
        for group in opt.param_groups:
            group["lr"] = cosine_lr(lr, epoch, epochs) * scale
        # The cache is indexed on the host: a CPU copy of the order spares a device-to-host sync per batch.
        order_cpu = torch.randperm(n, generator=gen)
        order = order_cpu.to(data.x.device)
        start = time.perf_counter()
        # The loss is summed on the device and read once per epoch: loss.item() per batch would sync each step.
        total = torch.zeros((), dtype=torch.float64, device=data.x.device)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            xb, yb = data.x[idx], data.y[idx]
            if cache is not None:
                logits = model(xb, patterns=cache.lookup(order_cpu[i : i + batch_size], device=xb.device))
            else:
                logits = model(xb)
            batch_loss = loss(logits, yb)
            opt.zero_grad(set_to_none=True)
            batch_loss.backward()
            opt.step()
            total.add_(batch_loss.detach(), alpha=idx.numel())  # in float64, as a Python float sum was
        mean_loss = total.item() / max(
            1, n
        )  # also waits for the epoch's queued GPU work before the clock stops
        if not math.isfinite(mean_loss):  # a NaN or inf batch loss makes the float64 sum NaN or inf
            raise NonFiniteError(
                f"{name}: the training loss is {mean_loss} in epoch {epoch + 1}: training diverged (lower the "
                "learning rate)"
            )
        if structural:
            monitor.check()
            result.cost["structural"] += time.perf_counter() - start
            if monitor.frozen:
                result.freeze_epoch, result.freeze_reason = epoch + 1, monitor.reason
                cache = _build_cache(model, data, policy, result)
        elif glai:
            result.cost["quantitative"] += time.perf_counter() - start
            after = epoch + 1 - result.freeze_epoch
            if policy.refresh_every and after % policy.refresh_every == 0 and epoch + 1 < epochs:
                refresh = time.perf_counter()
                model.refreeze()
                result.cost["structural"] += time.perf_counter() - refresh
                cache = _build_cache(model, data, policy, result)
        clock += time.perf_counter() - start
        result.time.append(clock)
        result.train_loss.append(mean_loss)
        result.test_acc.append(score(model, data.x_test, data.y_test))
        if progress is not None:
            progress(epoch, result)
    if glai:
        result.flip_history = list(monitor.history)
    return result


def _build_cache(model: GLAIMLP, data: Split, policy: FreezePolicy, result: RunResult) -> PatternCache | None:
    """The training set's patterns under the structure just frozen (or refreshed); timed as the cache cost."""
    if not policy.cache:
        return None
    start = time.perf_counter()
    cache = PatternCache.build(model, data.x)
    result.cost["cache"] += time.perf_counter() - start
    return cache
