"""Parameters that change shape in place, and the optimizer state that must follow them.

With ``reduction > 1`` the trainable layers of a :class:`~glai.GLAIMLP` grow at ``freeze()`` from structural to
quantitative width (and shrink back when a structural checkpoint is loaded). The ``Parameter`` objects are kept
and only their data is replaced, so an optimizer built before still holds them, as do hooks and anything else
holding the model's parameters; a checkpoint loaded into a fresh model lands in the same objects too.

What cannot follow is a state an optimizer keeps per parameter (momentum, Adam's moments) at the old shape.
``reset_state(optimizer, params)`` drops it (``freeze(optimizer=...)`` calls it), and the optimizer starts those
parameters afresh, as a new optimizer would. A state left behind is caught by a global optimizer step pre-hook,
which raises before the step with the parameter, the state's name and both shapes: never a silent no-op. The
hook is installed at the first resize and costs one dictionary lookup per step until a resize or a
``load_state_dict`` gives an optimizer a state it has not checked yet.
"""

from __future__ import annotations

import weakref

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.utils.weak import WeakIdKeyDictionary

# Every parameter resized in place -> the shape it had before (what a stale state has).
_old_shapes: WeakIdKeyDictionary = WeakIdKeyDictionary()
_generation = 0  # bumped at every resize: states checked before must be checked again
_checked: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # optimizer -> (its state dict, generation)
_hook = None


class StaleOptimizerStateError(RuntimeError):
    """An optimizer holds a state of the shape a parameter had before it was resized."""


def resize_(param: torch.nn.Parameter, value: torch.Tensor) -> None:
    """Give ``param`` the data ``value`` (any shape), keeping the object; its ``.grad`` is dropped."""
    global _generation, _hook
    old = tuple(param.shape)
    with torch.no_grad():
        if tuple(value.shape) != old:
            # Autograd caches a leaf's gradient accumulator, with the shape it had, for as long as any graph
            # holds it (the last batch's loss often does), and replaces it only when the dtype or device
            # changes, not the shape. A placeholder of another dtype makes it start a fresh one; the tensor's
            # own hooks live on the tensor and stay.
            param.data = torch.empty(
                0, dtype=torch.float64 if value.dtype != torch.float64 else torch.float32
            )
        param.data = value
    param.grad = None
    if tuple(value.shape) != old:
        _old_shapes[param] = old
        _generation += 1
        if _hook is None:
            _hook = register_optimizer_step_pre_hook(_check_states)


def reset_state(optimizer: torch.optim.Optimizer, params) -> int:
    """Drop ``optimizer``'s per-parameter state for ``params``; returns how many states were dropped."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    dropped = 0
    for p in params:
        if optimizer.state.pop(p, None) is not None:
            dropped += 1
    return dropped


def _check_states(optimizer, args, kwargs) -> None:
    if not _old_shapes:
        return
    seen = _checked.get(optimizer)
    if seen is not None and seen[0] is optimizer.state and seen[1] == _generation:
        return
    for param, old in list(_old_shapes.items()):
        state = optimizer.state.get(param)
        if not state or tuple(param.shape) == old:
            continue
        for name, value in state.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and tuple(value.shape) == old:
                raise StaleOptimizerStateError(
                    f"{type(optimizer).__name__} holds state '{name}' of shape {list(old)} for a GLAIMLP "
                    f"parameter that is now {list(param.shape)}: the model was resized at freeze() (reduction "
                    "> 1) or by load_state_dict. Pass the optimizer to freeze(optimizer=...) or "
                    "FreezeMonitor(optimizer=...), or load an optimizer state saved after the freeze."
                )
    _checked[optimizer] = (optimizer.state, _generation)
