"""The signature of a call to a GLAI stack, and the verdicts remembered per signature.

A call's checks (shapes that chain, the pattern words, dtypes, devices, the backend and the fused path's rule)
depend only on its signature: the flags (mode, reduction, backend, ``fused``, the autocast state) and, per
tensor, its shape, strides, dtype and device. :func:`stack_key` builds that key; the ops check a call in full
the first time its key comes and keep the verdict, so a repeated call (every training step) costs the key and
one dictionary lookup. Anything that changes a signature (another batch size, a Parameter resized in place by
``freeze()`` or ``load_state_dict``, a dtype or device change, autocast switched on or to another dtype) is a
new key, checked in full: a wrong call raises the same error however many good calls came before it.

Only lists and tuples of tensors (``None`` where a bias may be absent) make a key. Any other argument (a
stacked tensor where a list belongs, a generator, something that is not a tensor) gives none, and the call is
checked in full every time, so it raises where it is wrong.

Memos are bounded (:func:`remember`): at most :data:`MEMO_SIZE` signatures each, the oldest forgotten when a
new one comes. A loop over many batch sizes cannot grow one without end; it checks a shape again when it comes
back to it after more than :data:`MEMO_SIZE` others.
"""

from __future__ import annotations

import torch

MEMO_SIZE = 256

_stride = torch.Tensor.stride  # unbound: raises a TypeError for anything but a tensor


def tensor_key(t: torch.Tensor) -> tuple:
    """What the checks read of one tensor: shape, strides, dtype and device."""
    return (t.shape, _stride(t), t.dtype, t.device)


def _group(ts):
    if type(ts) is not list and type(ts) is not tuple and not isinstance(ts, (list, tuple)):
        raise TypeError
    return tuple([None if t is None else (t.shape, _stride(t), t.dtype, t.device) for t in ts])


def stack_key(head: tuple, x, *groups) -> tuple | None:
    """``head`` (the flags), then ``x``'s key and each group's keys (a group: a list or tuple of tensors, or
    None). None when an argument cannot make a key: the caller then checks the call in full."""
    try:
        groups = [g if g is None else _group(g) for g in groups]
        return (head, (x.shape, _stride(x), x.dtype, x.device), *groups)
    except (AttributeError, TypeError):
        return None


def remember(memo: dict, key, value, size: int = MEMO_SIZE):
    """``memo[key] = value``, first forgetting the oldest entry when ``memo`` holds ``size`` already."""
    if len(memo) >= size and key not in memo:
        try:
            memo.pop(next(iter(memo)), None)
        except (StopIteration, RuntimeError):  # emptied or changed by another thread meanwhile
            pass
    memo[key] = value
    return value
