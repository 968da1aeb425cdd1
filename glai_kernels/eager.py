"""``Function.apply`` without its per-call argument binding, where that is safe.

``torch.autograd.Function.apply`` binds its arguments with ``inspect.signature`` on every call when
``setup_context`` is defined (tens of microseconds, to fill in defaults our forwards have none of). Eagerly, with
no torch.func transform active and nothing being traced, :func:`eager_apply` calls the C implementation that
``apply`` ends in, after the same unwrapping of dead functorch wrappers. That leans on two private names of
torch's own ``Function.apply``; a torch without them takes the public path, a few tens of microseconds slower.
"""

from __future__ import annotations

import torch

try:
    from torch._C._functorch import unwrap_if_dead
    from torch._functorch.utils import unwrap_dead_wrappers

    _TRANSFORMS_ACTIVE = torch._C._are_functorch_transforms_active
    _SHORTCUT = True
except (ImportError, AttributeError):  # pragma: no cover - older or newer torch internals
    _SHORTCUT = False

_C_APPLY: dict = {}  # Function class -> the C apply of its base class, bound to it


def eager_apply(cls, flags: tuple, tensors: tuple):
    """``cls.apply(*flags, *tensors)`` (``tensors``: tensors or None); eagerly without a transform, its C
    implementation directly."""
    if not _SHORTCUT or torch.compiler.is_compiling() or _TRANSFORMS_ACTIVE():
        return cls.apply(*flags, *tensors)
    apply = _C_APPLY.get(cls)
    if apply is None:
        apply = _C_APPLY[cls] = super(torch.autograd.Function, cls).apply
    try:
        tensors = tuple(map(unwrap_if_dead, tensors))
    except TypeError:  # a None (an absent bias) among them
        tensors = unwrap_dead_wrappers(tensors)
    return apply(*flags, *tensors)
