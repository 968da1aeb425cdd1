"""The variants a study compares: plain ReLU MLPs (:class:`Plain`) and GLAI heads (freeze policies), by name.

``MLP`` is the reference every GLAI variant is paired with, and ``MLP again`` the same MLP run once more with the
same hyper-parameters, whose time against the first run's measures the timing noise. :func:`policy_variants` is
the grid of the study's settings, :func:`select` a subset that always keeps that pair.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..train import FreezePolicy

MLP = "MLP"
MLP_AGAIN = (
    "MLP again"  # the MLP once more, same hyper-parameters: identical work, so its time ratio is noise
)
# The flip-rate rule every reduction / cache variant is built on, spelled out rather than taken from the
# FreezeMonitor defaults, so that the results keep their meaning if the defaults change.
BASE_RULE = {"threshold": 0.01, "patience": 2}
BASE = "flip<0.01/p2"


@dataclass(frozen=True)
class Plain:
    """A plain ReLU MLP variant: the preset's hidden widths divided by ``divisor`` (``2``: the width of an r = 2
    structural net, trained alone). ``again``: a repeat of the reference MLP with its hyper-parameters."""

    divisor: int = 1
    again: bool = False

    def hidden(self, widths) -> tuple[int, ...]:
        return tuple(n // self.divisor for n in widths)


def select(variants: dict, only: set[str] | None) -> dict:
    """The variants named in ``only`` (all when ``None``), always with the MLP they are paired with and its repeat
    (the measure of timing noise)."""
    if only is None:
        return variants
    return {k: v for k, v in variants.items() if k in (MLP, MLP_AGAIN) or k in only}


def policy_variants(grid: str, epochs: int) -> dict[str, FreezePolicy | Plain]:
    """The MLPs and the GLAI variants compared: reduction 1, 2 and 4, each with the default flip-rate rule and an
    early fixed freeze; widening against the random start; the narrow MLP of an r = 2 structural net."""

    def at(fraction: float) -> int:
        return max(1, round(epochs * fraction))

    early = at(0.1)
    variants: dict[str, FreezePolicy | Plain] = {MLP: Plain(), MLP_AGAIN: Plain(again=True)}
    variants[BASE] = FreezePolicy(**BASE_RULE)
    variants[f"freeze@{early}"] = FreezePolicy(kind="epoch", epoch=early)
    variants["r=2"] = FreezePolicy(**BASE_RULE, reduction=2, init="widen")
    variants[f"freeze@{early} r=2"] = FreezePolicy(kind="epoch", epoch=early, reduction=2, init="widen")
    if grid == "small":
        return variants
    variants["MLP n/2"] = Plain(divisor=2)
    variants["r=4"] = FreezePolicy(**BASE_RULE, reduction=4, init="widen")
    variants[f"freeze@{early} r=4"] = FreezePolicy(kind="epoch", epoch=early, reduction=4, init="widen")
    # The old start of an r > 1 quantitative net, a fresh random initialisation, against the widening.
    variants[f"freeze@{early} r=2 random"] = FreezePolicy(
        kind="epoch", epoch=early, reduction=2, init="random"
    )
    if grid == "medium":
        return variants
    variants[f"freeze@{early} r=4 random"] = FreezePolicy(
        kind="epoch", epoch=early, reduction=4, init="random"
    )
    variants["r=2 random"] = FreezePolicy(**BASE_RULE, reduction=2, init="random")
    return variants
