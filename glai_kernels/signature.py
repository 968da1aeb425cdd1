"""The signature of a call to a GLAI stack, and the verdicts remembered per signature.

A call's checks (shapes that chain, the pattern words, dtypes, devices, the backend and the fused path's rule)
depend only on its signature: the flags (mode, reduction, backend, ``fused``, the autocast state) and, per
tensor, its shape, strides, dtype and device. The ops check a call in full the first time its signature comes
and keep the verdict in :class:`Verdicts`, so a repeated call (every training step) only recognises its
signature. Anything that changes one (another batch size, a Parameter resized in place by ``freeze()`` or
``load_state_dict``, a dtype or device change, autocast switched on or to another dtype) is a new signature,
checked in full: a wrong call raises the same error however many good calls came before it.

Only lists and tuples of tensors (``None`` where a bias may be absent) make a signature. Any other argument (a
stacked tensor where a list belongs, a generator, something that is not a tensor) makes none, and the call is
checked in full every time, so it raises where it is wrong.

How a signature is recognised: the flags and the layout (how many tensors a group holds, which biases are absent)
key a dictionary; under each key, the tensors' shapes, strides, dtypes and devices are compared by PyTorch's own
tensor guard (``torch._C._dynamo.guards.TensorGuards``, in C++: about 65 ns a tensor, where reading the four
attributes into a Python key costs about 300 ns). The guard is stricter than needed: it also compares the exact
tensor type, ``requires_grad`` and the thread's dispatch state (autocast, inference mode), each a new signature at
worst. A torch without that class gets the Python key, which compares the same four attributes.

Both are bounded: at most ``size`` layouts (``MEMO_SIZE``), the oldest forgotten when a new one comes, and at
most ``per_layout`` signatures under each, the least recently used forgotten. A loop over many batch sizes
cannot grow the memo; it checks a shape again when it comes back to it after ``per_layout`` others.
"""

from __future__ import annotations

import torch

try:
    from torch._C._dynamo.guards import TensorGuards
except ImportError:  # pragma: no cover - a torch without the legacy tensor guard
    TensorGuards = None

MEMO_SIZE = 256
PER_LAYOUT = 8

_stride = torch.Tensor.stride  # unbound: raises a TypeError for anything but a tensor


def remember_bounded(memo: dict, key, value, size: int = MEMO_SIZE):
    """``memo[key] = value``, first forgetting the oldest entry when ``memo`` holds ``size`` already."""
    if len(memo) >= size and key not in memo:
        try:
            memo.pop(next(iter(memo)), None)
        except (StopIteration, RuntimeError):  # emptied or changed by another thread meanwhile
            pass
    memo[key] = value
    return value


def _listed(group) -> bool:
    return type(group) is list or type(group) is tuple or isinstance(group, (list, tuple))


def _python_keys(group) -> tuple | None:
    if group is None:
        return None
    if not _listed(group):
        raise TypeError(f"a group of tensors must be a list or a tuple, got {type(group).__name__}")
    return tuple([None if t is None else (t.shape, _stride(t), t.dtype, t.device) for t in group])


class Verdicts:
    """Verdicts per call signature. ``key(flags, x, *groups)`` names a call (None when it has no signature:
    check it in full), ``get(key)`` gives the verdict remembered for it or None, ``put(key, verdict)`` remembers
    one. ``groups``: lists or tuples of tensors (None for an absent bias), or None for an absent group."""

    def __init__(self, size: int = MEMO_SIZE, per_layout: int = PER_LAYOUT, guards: bool | None = None):
        self.size, self.per_layout = size, per_layout
        self.guards = TensorGuards is not None if guards is None else guards
        self._memo: dict = {}

    def __len__(self) -> int:
        """How many signatures are remembered."""
        return sum(len(v) for v in list(self._memo.values())) if self.guards else len(self._memo)

    def clear(self) -> None:
        self._memo.clear()

    def key(self, flags: tuple, x, *groups):
        try:
            hash(flags)
            if not self.guards:
                keys = tuple([_python_keys(g) for g in groups])
                return flags, (x.shape, _stride(x), x.dtype, x.device), keys
            layout, tensors = [flags], [x]
            for g in groups:
                if g is None:
                    layout.append(None)
                    continue
                if not _listed(g):
                    return None
                present = [t for t in g if t is not None]
                # The tensors are compared as one flat list: the layout says where each group's are.
                layout.append(len(g) if len(present) == len(g) else tuple([t is None for t in g]))
                tensors += present
            return tuple(layout), tensors
        except (AttributeError, TypeError):  # not tensors, an unhashable flag: no signature
            return None

    def get(self, key):
        if key is None:
            return None
        if not self.guards:
            return self._memo.get(key)
        layout, tensors = key
        entries = self._memo.get(layout)
        if not entries:
            return None
        for i, entry in enumerate(entries):
            try:
                same = entry[0].check(*tensors)
            except (
                Exception
            ):  # one is not a tensor, or a guard of another torch refuses: no verdict, check in full
                return None
            if same:
                if i:  # the most recently used first
                    try:
                        entries.remove(entry)
                        entries.insert(0, entry)
                    except ValueError:  # moved meanwhile by another thread
                        pass
                return entry[1]
        return None

    def put(self, key, verdict) -> None:
        if key is None:
            return
        if not self.guards:
            remember_bounded(self._memo, key, verdict, self.size)
            return
        layout, tensors = key
        try:
            guard = TensorGuards(*tensors, dynamic_dims_sizes=None, dynamic_dims_strides=None)
        except Exception:  # pragma: no cover - a tensor guard of another torch refuses: Python keys from now
            self.guards = False
            self._memo.clear()
            return
        entries = self._memo.get(layout)
        if entries is None:
            entries = remember_bounded(self._memo, layout, [], self.size)
        entries.insert(0, (guard, verdict))
        del entries[self.per_layout :]
