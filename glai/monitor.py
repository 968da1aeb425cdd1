"""The freeze monitor: when have the activation patterns settled?

At each ``check()`` the model's patterns on a fixed probe batch are compared with those of the previous check;
the flip rate is the fraction of pattern bits (structural units x probe rows) that changed. The model is frozen
when the rate stays under ``threshold`` for ``patience`` checks in a row, or at ``max_checks`` checks.

Under ``torch.distributed`` the flipped and total bit counts are summed over the ranks before the rate is taken,
so every rank sees the same rate and freezes at the same check, whatever probe each rank holds.

A pattern bit is ``z > 0``, which is False for a NaN ``z``: a diverged structural network fires nothing and flips
nothing, and would read as settled. So a probe must be finite, and every check makes sure the structure's
pre-activations on it are: otherwise it raises :class:`NonFiniteError` instead of counting the patterns.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch
import torch.distributed as dist

from glai_kernels import unpack_patterns
from glai_kernels.checks import check_input

from .nn import GLAIMLP, PhaseError, check_glaimlp
from .widen import check_init


class NonFiniteError(FloatingPointError, ValueError):
    """Training produced NaN or inf (a loss, or the structural network's pre-activations): it diverged."""


class FreezeMonitor:
    """Watch the flip rate of ``model``'s patterns on ``probe`` and freeze it when the rule fires.

    Args:
        model: a :class:`GLAIMLP` in the structural phase.
        probe: a fixed input batch ``(*, in_features)`` with at least one sample; the first ``check()`` only
            records its patterns. It follows the model: moved to the model's device and dtype when they differ.
        threshold: freeze once the flip rate is below this for ``patience`` consecutive checks.
        patience: consecutive calm checks needed.
        max_checks: freeze at this many checks regardless (``None``: no budget).
        on_freeze: called with the model right after it is frozen.
        optimizer, init, generator: passed to ``model.freeze()``: the optimizer whose state for the resized
            parameters is dropped (needed with ``reduction > 1`` once it has a state), how the quantitative
            network starts and the generator of its random numbers.
        process_group: the group to all-reduce over when ``torch.distributed`` is initialised.
    """

    def __init__(
        self,
        model: GLAIMLP,
        probe: torch.Tensor,
        *,
        threshold: float = 0.01,
        patience: int = 2,
        max_checks: int | None = None,
        on_freeze: Callable[[GLAIMLP], None] | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        init: str | None = None,
        generator: torch.Generator | None = None,
        process_group=None,
    ):
        check_glaimlp(model, "FreezeMonitor")
        if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
            raise TypeError(f"threshold must be a number in [0, 1], got {type(threshold).__name__}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold is a fraction of flipped bits in [0, 1], got {threshold}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be an int >= 1, got {patience!r}")
        if max_checks is not None and (
            isinstance(max_checks, bool) or not isinstance(max_checks, int) or max_checks < 1
        ):
            raise ValueError(f"max_checks must be None or an int >= 1, got {max_checks!r}")
        if on_freeze is not None and not callable(on_freeze):
            # Found out only after the model had frozen, otherwise.
            raise TypeError(f"on_freeze must be a callable taking the model, got {type(on_freeze).__name__}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}"
            )
        if init is not None:
            check_init(init)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        self.freeze_kwargs = {"init": init, "generator": generator, "optimizer": optimizer}
        check_input(probe, model.in_features, "probe")
        if probe.numel() == 0:
            # No bits to compare: the rate would read 0 at every check and freeze the model unseen.
            raise ValueError(f"probe must hold at least one sample, got shape {tuple(probe.shape)}")
        counts = torch.stack([probe.isnan().sum(), probe.isinf().sum()]).tolist()
        if any(counts):
            raise ValueError(
                f"probe must be finite, got {counts[0]} NaN and {counts[1]} inf entries: a NaN input fires no unit, "
                "so its pattern bits never flip and would read as settled"
            )
        self.model, self.probe = model, probe
        model.patterns(self._model_probe())  # any other mismatch shows now, not at the first check
        self._check_finite()
        self.threshold, self.patience, self.max_checks = float(threshold), patience, max_checks
        self.on_freeze, self.process_group = on_freeze, process_group
        self.history: list[float] = []  # flip rate of every check after the first
        self.checks = 0
        self.calm = 0
        self.frozen_at: int | None = None  # the check at which the model was frozen
        self.reason: str | None = None
        self._last: list[torch.Tensor] | None = None

    def _model_probe(self) -> torch.Tensor:
        """The probe on the model's current device and dtype (moved once, after ``model.to(...)``)."""
        w = self.model.layers[0].weight
        if self.probe.device != w.device or self.probe.dtype != w.dtype:
            self.probe = self.probe.to(w.device, w.dtype)
        return self.probe

    @property
    def frozen(self) -> bool:
        return self.frozen_at is not None

    @torch.no_grad()
    def _check_finite(self) -> None:
        """Raise unless every hidden pre-activation of the structure on the probe is finite (one host sync)."""
        h = self._model_probe()
        bad = []
        with torch.autocast(h.device.type, enabled=False):
            for layer in self.model.layers[:-1]:
                z = torch.nn.functional.linear(h, layer.weight, layer.bias)
                bad.append(~torch.isfinite(z).all())
                h = torch.relu(z)
        flags = torch.stack(bad).tolist()
        if any(flags):
            layer = flags.index(True)
            raise NonFiniteError(
                f"the structural network's pre-activations on the probe are NaN or inf from hidden layer {layer} on "
                f"(check {self.checks + 1}): its weights have diverged, and patterns read from them mean nothing, "
                "so the monitor will not count them as settled; lower the learning rate or check the data"
            )

    def _flip_rate(self, now: list[torch.Tensor]) -> float:
        counts = torch.zeros(2, dtype=torch.float64, device=now[0].device)
        for old, new, n in zip(self._last, now, self.model.structural_widths):
            counts[0] += unpack_patterns(old ^ new, n).sum()
            counts[1] += new[..., 0].numel() * n
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts, op=dist.ReduceOp.SUM, group=self.process_group)
        return (counts[0] / counts[1].clamp_min(1)).item()

    def check(self) -> float | None:
        """Measure the flip rate since the last check and freeze if the rule fires.

        Returns the rate, or ``None`` at the first check (nothing to compare with yet).
        """
        if self.frozen or self.model.phase != "structural":
            raise PhaseError("the monitor's model is already frozen; stop calling check()")
        self._check_finite()
        now = self.model.patterns(self._model_probe())
        rate = None if self._last is None else self._flip_rate(now)
        self._last = now
        self.checks += 1
        if rate is not None:
            self.history.append(rate)
            self.calm = self.calm + 1 if rate < self.threshold else 0
        if self.calm >= self.patience:
            self._freeze(f"flip rate under {self.threshold:g} for {self.patience} checks")
        elif self.max_checks is not None and self.checks >= self.max_checks:
            self._freeze(f"budget of {self.max_checks} checks reached")
        return rate

    def _freeze(self, reason: str) -> None:
        self.model.freeze(**self.freeze_kwargs)
        self.frozen_at, self.reason = self.checks, reason
        if self.on_freeze is not None:
            self.on_freeze(self.model)

    def state_dict(self) -> dict:
        return {
            "history": list(self.history),
            "checks": self.checks,
            "calm": self.calm,
            "frozen_at": self.frozen_at,
            "reason": self.reason,
            "last": None if self._last is None else [p.cpu() for p in self._last],
        }

    def load_state_dict(self, state: dict) -> None:
        self.history = [float(r) for r in state["history"]]
        self.checks, self.calm = int(state["checks"]), int(state["calm"])
        self.frozen_at, self.reason = state["frozen_at"], state["reason"]
        last = state["last"]
        self._last = None if last is None else [p.to(self._model_probe().device) for p in last]

    def __repr__(self) -> str:
        rates = ", ".join(f"{r:.4f}" for r in self.history[-5:])
        return (
            f"FreezeMonitor(threshold={self.threshold:g}, patience={self.patience}, max_checks={self.max_checks}, "
            f"checks={self.checks}, frozen_at={self.frozen_at}, recent=[{rates}])"
        )
