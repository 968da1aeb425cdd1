"""Patterns that know which frozen structure they belong to, and a digest of that structure that costs nothing
per step.

A :class:`PatternCache` is valid only for the structure it was built from. Every lookup in one returns
:class:`CachedPatterns`, a list of per-layer tensors carrying the cache's structure digest, and
``GLAIMLP.forward(x, patterns=...)`` refuses them unless that digest is the model's: the check travels with the
patterns, so it cannot be forgotten. A plain list of tensors (the functional form, ``model.patterns(x)``, patterns
you packed yourself) is used as given and cannot be checked.

``structure_digest()`` hashes every frozen weight through float64 on the host: too slow for each step. The digest
is kept per model and computed again only when the structure tensors changed: replaced (``freeze``,
``load_state_dict`` across phases, ``.to()``, ``.double()``) or modified in place (``refreeze``,
``load_state_dict``, any in-place op: each bumps the tensor's version counter). Only writes that bypass PyTorch
(through a NumPy view of the buffer) go unseen.
"""

from __future__ import annotations

import weakref

import torch

from .nn import GLAIMLP

_known: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _structure(model: GLAIMLP):
    """The frozen structure module and its tensors, read from the module dicts directly: ``nn.Module``'s
    attribute lookup costs about a microsecond a name, and this runs at every step."""
    structure = model._modules.get("structure")
    return structure, [t for t in structure._buffers.values() if t is not None]


def _stamp(model: GLAIMLP) -> tuple:
    """What identifies the current structure tensors and their contents (identity, storage, version)."""
    structure, tensors = _structure(model)
    return (weakref.ref(structure),) + tuple((weakref.ref(t), t.data_ptr(), t._version) for t in tensors)


def _same(stamp: tuple, model: GLAIMLP) -> bool:
    structure, tensors = _structure(model)
    if stamp[0]() is not structure or len(tensors) != len(stamp) - 1:
        return False
    return all(r() is t and t._version == v and t.data_ptr() == p for (r, p, v), t in zip(stamp[1:], tensors))


def structure_digest(model: GLAIMLP) -> str:
    """``model.structure_digest()``, computed again only when the frozen structure changed."""
    if model._modules.get("structure") is None:
        return model.structure_digest()  # the structural phase: raises the PhaseError that says why
    known = _known.get(model)
    if known is not None and _same(known[0], model):
        return known[1]
    digest = model.structure_digest()
    _known[model] = (_stamp(model), digest)
    return digest


class CachedPatterns(list):
    """Patterns looked up in a :class:`PatternCache`: one int32 tensor per hidden layer, and ``digest``, the
    structure they were computed with. ``GLAIMLP.forward`` calls :meth:`check_model` on them."""

    def __init__(self, parts=(), digest: str | None = None):
        super().__init__(parts)
        self.digest = digest

    def to(self, *args, **kwargs) -> CachedPatterns:
        """Every layer's tensor moved as ``Tensor.to`` moves it, the digest kept."""
        return CachedPatterns([p.to(*args, **kwargs) for p in self], self.digest)

    @torch.compiler.disable
    def check_model(self, model: GLAIMLP) -> None:
        """Raise unless these patterns belong to ``model``'s current frozen structure."""
        if self.digest is None:
            raise ValueError(
                "these patterns come from a PatternCache without a structure digest, so the model cannot check "
                "them: build caches with PatternCache.build, or pass digest=model.structure_digest()"
            )
        digest = structure_digest(model)
        if digest != self.digest:
            raise ValueError(
                f"patterns from a cache built for structure {self.digest}, but the model's frozen structure is "
                f"{digest}: rebuild the cache (PatternCache.build) for this model"
            )

    def __repr__(self) -> str:
        return f"CachedPatterns({list.__repr__(self)}, digest={self.digest!r})"
