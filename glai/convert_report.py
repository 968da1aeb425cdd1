"""What ``glai.convert`` looked at, what it replaced and why it left the rest.

The report is a ``list`` of the qualified names replaced (what ``convert`` always returned, so
``convert(model) == ["head"]`` still holds) that also carries every candidate: each ``nn.Sequential`` and each
attribute-style block (a module of its own class with a ``Linear`` child and a ``forward``), with the reason
for each one not replaced. ``report.explain()`` is the text that ``convert(..., verbose=True)`` prints.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    """One module ``convert`` considered.

    Attributes:
        name: qualified name, as in ``named_modules`` (``""``: the model itself).
        type: the module's class name.
        replaced: whether it was swapped for a GLAIMLP.
        reason: for a module left as it was, why; for a replaced one, what else was done (dropout kept
            outside, BatchNorm folded, the same block as another name), or ``""``.
        closeness: how near a refused module came to converting (4: refused for one layer, a hook or a shared
            weight; 3: a single Linear; 2: no chain of calls or no trace; 1: already a GLAIMLP; 0: not selected).
    """

    name: str
    type: str
    replaced: bool
    reason: str = ""
    closeness: int = 0

    def __str__(self) -> str:
        what = f"{self.name or '<model>'} ({self.type})"
        if self.replaced:
            return f"replaced  {what}" + (f": {self.reason}" if self.reason else "")
        return f"left      {what}: {self.reason}"


class ConversionReport(list):
    """The names ``convert`` replaced (a list, in the order found), with ``.candidates``: every
    :class:`Candidate` it looked at, replaced or not, in the same order."""

    def __init__(self):
        super().__init__()
        self.candidates: list[Candidate] = []

    def add(self, candidate: Candidate) -> None:
        self.candidates.append(candidate)
        if candidate.replaced:
            self.append(candidate.name)

    @property
    def skipped(self) -> list[Candidate]:
        return [c for c in self.candidates if not c.replaced]

    @property
    def closest(self) -> Candidate | None:
        """The refused candidate that came nearest to converting (the first of the nearest), if any."""
        refused = [c for c in self.skipped if c.closeness > 1]
        return max(refused, key=lambda c: c.closeness) if refused else None

    def explain(self) -> str:
        lines = [f"glai.convert: replaced {len(self)} of {len(self.candidates)} candidates"]
        lines += [f"  {c}" for c in self.candidates]
        return "\n".join(lines)

    def warn_if_empty(self, stacklevel: int = 3) -> None:
        """One UserWarning when nothing was replaced and no GLAIMLP was there already."""
        if self or any(c.closeness == 1 for c in self.candidates):
            return
        closest = self.closest
        if closest is None:
            why = (
                "no candidate was selected by the predicate"
                if self.candidates
                else "the model holds no nn.Sequential and no module with Linear layers of its own"
            )
        else:
            why = f"the closest candidate, {closest.name or '<model>'} ({closest.type}), was left: {closest.reason}"
        warnings.warn(
            f"glai.convert replaced nothing: {why} (convert(model, verbose=True) lists every candidate)",
            UserWarning,
            stacklevel=stacklevel,
        )
