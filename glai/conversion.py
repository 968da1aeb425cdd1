"""Swapping GLAI into existing models: ReLU MLPs (``nn.Sequential``) to :class:`GLAIMLP` and back.

A convertible MLP is an ``nn.Sequential`` (or a subclass that keeps its forward, such as torchvision's ``MLP``)
whose layers read ``Linear, ReLU, Linear, ..., ReLU, Linear``: at least one hidden layer, each hidden ``Linear``
followed by a ``ReLU`` (``inplace`` or not), widths that chain, and a bias in every ``Linear`` or in none.
Identities are skipped: ``nn.Identity`` and dropout with ``p=0`` (torchvision's ``MLP`` always holds such
layers). Nested ``nn.Sequential`` containers are read through. Anything else is refused with an error naming the
layer and its position: another activation, a norm, dropout with ``p > 0``, widths that do not chain, two
``Linear`` without a ``ReLU`` between them, a ``ReLU`` after the last ``Linear`` (a GLAIMLP's output layer is
linear), mixed biases, dtypes or devices, hooks or parametrizations (the GLAIMLP would drop them).

The converted model *takes over* the MLP's ``Parameter`` objects rather than copying them, as
``nn.SyncBatchNorm.convert_sync_batchnorm`` does: same weights, dtype and device, no new memory, and an
optimizer built over the model before the conversion keeps training them. ``copy.deepcopy`` the MLP first for an
independent copy. ``to_mlp`` does the same the other way.

With ``reduction=r`` the MLP becomes the *structural* network: the GLAIMLP has hidden widths ``r * n_l`` and
structural widths ``n_l``, so the function is the MLP's in the structural phase for every ``r``; at ``freeze()``
the quantitative network is ``r`` times wider than the MLP.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.dropout import _DropoutNd
from torch.nn.utils import parametrize

from glai_kernels.backend import check_backend_name
from glai_kernels.checks import check_reduction

from .nn import GLAIMLP, PhaseError, check_glaimlp

_NORMS = (
    _NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    *([nn.RMSNorm] if hasattr(nn, "RMSNorm") else []),
)
CONVERT_OPTIONS = ("reduction", "backend")


class _Refused(ValueError):
    """An MLP that cannot become a GLAIMLP; ``convert`` skips these unless its predicate asked for the block."""


def _where(position: str, module: nn.Module) -> str:
    return f"layer [{position}] {module!r}".replace("\n", " ")


def _flatten(seq: nn.Sequential, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """``(position, layer)`` in call order, nested ``nn.Sequential`` read through (positions like ``2][0``)."""
    for name, child in seq.named_children():
        position = f"{prefix}][{name}" if prefix else name
        if type(child).forward is nn.Sequential.forward and isinstance(child, nn.Sequential):
            _check_plain(child, position)
            yield from _flatten(child, position)
        else:
            yield position, child


def _check_plain(module: nn.Module, position: str | None) -> None:
    """Hooks and parametrizations change what a layer computes or records; a GLAIMLP would silently drop them."""
    what = "the MLP" if position is None else _where(position, module)
    if module._forward_hooks or module._forward_pre_hooks or module._backward_hooks:
        raise _Refused(f"{what} has hooks registered, which a GLAIMLP would drop: remove them first")
    if parametrize.is_parametrized(module):
        raise _Refused(f"{what} is parametrized (e.g. weight_norm), which a GLAIMLP would drop")


def _is_identity(module: nn.Module) -> bool:
    if type(module) is nn.Identity:
        return True
    # torch's own dropout classes only: a subclass may compute something else.
    return (
        isinstance(module, _DropoutNd) and type(module).__module__ == _DropoutNd.__module__ and module.p == 0
    )


def _why_not(module: nn.Module) -> str:
    if isinstance(module, _DropoutNd):
        return f"a GLAIMLP has no dropout (only p=0, an identity, is accepted), got p={module.p}"
    if isinstance(module, _NORMS):
        return "a GLAIMLP has no normalisation layers"
    for plain in (nn.Linear, nn.ReLU):
        if isinstance(module, plain):
            return f"{type(module).__name__} overrides forward, so it is not a plain nn.{plain.__name__}"
    if type(module).__module__ == "torch.nn.modules.activation":
        return "a GLAIMLP's only activation is ReLU"
    return "expected nn.Linear or nn.ReLU"


def mlp_layers(mlp) -> list[tuple[str, nn.Linear]]:
    """The ``(position, Linear)`` layers of a convertible MLP, or a ValueError naming the offending layer."""
    if not isinstance(mlp, nn.Sequential):
        raise TypeError(
            f"GLAIMLP.from_mlp expects an nn.Sequential of Linear and ReLU layers, got {type(mlp).__name__}"
            + (" (it is one already)" if isinstance(mlp, GLAIMLP) else "")
        )
    if type(mlp).forward is not nn.Sequential.forward:
        raise _Refused(
            f"{type(mlp).__name__} overrides nn.Sequential.forward: its function is not its layers'"
        )
    _check_plain(mlp, None)
    linears: list[tuple[str, nn.Linear]] = []
    relu_after_last = None
    for position, layer in _flatten(mlp):
        if isinstance(layer, nn.modules.lazy.LazyModuleMixin) and layer.has_uninitialized_params():
            raise _Refused(f"{_where(position, layer)} is not initialised yet: run one forward first")
        _check_plain(layer, position)
        if _is_identity(layer):
            continue
        if isinstance(layer, nn.Linear) and type(layer).forward is nn.Linear.forward:
            if linears and relu_after_last is None:
                raise _Refused(
                    f"{_where(position, layer)} follows the Linear at [{linears[-1][0]}] without a ReLU between: "
                    "a GLAIMLP gates every hidden layer by ReLU (merge the two Linear layers or add the ReLU)"
                )
            if linears:
                _check_compatible(linears[-1], (position, layer))
            linears.append((position, layer))
            relu_after_last = None
        elif isinstance(layer, nn.ReLU) and type(layer).forward is nn.ReLU.forward:
            if not linears or relu_after_last is not None:
                raise _Refused(
                    f"{_where(position, layer)}: expected an nn.Linear here (a ReLU must follow a Linear)"
                )
            relu_after_last = position
        else:
            raise _Refused(f"{_where(position, layer)}: {_why_not(layer)}")
    if relu_after_last is not None:
        raise _Refused(
            f"layer [{relu_after_last}] ReLU follows the last Linear: a GLAIMLP's output layer is linear; convert "
            "the layers before it and apply torch.relu to the output"
        )
    if len(linears) < 2:
        raise _Refused(
            f"an MLP with at least one hidden layer (two Linear layers) is needed, got {len(linears)} Linear"
        )
    return linears


def _check_compatible(previous: tuple[str, nn.Linear], current: tuple[str, nn.Linear]) -> None:
    (p_pos, p), (c_pos, c) = previous, current
    if c.in_features != p.out_features:
        raise _Refused(
            f"{_where(c_pos, c)} takes {c.in_features} inputs, but the Linear at [{p_pos}] gives {p.out_features}"
        )
    if (c.bias is None) != (p.bias is None):
        has, lacks = (p_pos, c_pos) if c.bias is None else (c_pos, p_pos)
        raise _Refused(
            f"the Linear at [{has}] has a bias and the one at [{lacks}] has none: a GLAIMLP has a bias in every "
            "layer or in none"
        )
    if (c.weight.dtype, c.weight.device) != (p.weight.dtype, p.weight.device):
        raise _Refused(
            f"{_where(c_pos, c)} is {c.weight.dtype} on {c.weight.device}, the Linear at [{p_pos}] "
            f"{p.weight.dtype} on {p.weight.device}: a GLAIMLP has one dtype and device"
        )


def _share(target: nn.Linear, source: nn.Linear) -> None:
    target.weight = source.weight
    if source.bias is not None:
        target.bias = source.bias


def from_mlp(mlp, *, reduction: int = 1, backend: str = "auto", cls: type[GLAIMLP] = GLAIMLP) -> GLAIMLP:
    """``GLAIMLP.from_mlp``: a structural-phase block that computes what ``mlp`` computes (module docstring)."""
    check_reduction(reduction, ())
    check_backend_name(backend)
    linears = [layer for _, layer in mlp_layers(mlp)]
    first = linears[0].weight
    widths = [layer.out_features for layer in linears[:-1]]
    # Built on the meta device: nothing is allocated or drawn from the RNG before the Parameters are taken over.
    model = cls(
        linears[0].in_features,
        [n * reduction for n in widths],
        linears[-1].out_features,
        reduction=reduction,
        bias=linears[0].bias is not None,
        backend=backend,
        device="meta",
        dtype=first.dtype,
    )
    for target, source in zip(model.layers, linears):
        _share(target, source)
    unset = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if unset:  # a tensor GLAIMLP.__init__ creates that conversion does not know about
        raise RuntimeError(f"GLAIMLP.from_mlp left {unset} unset on the meta device")
    return model.train(mlp.training)


def to_mlp(model: GLAIMLP) -> nn.Sequential:
    """``GLAIMLP.to_mlp``: the structural-phase network as ``nn.Sequential(Linear, ReLU, ..., Linear)``."""
    check_glaimlp(model, "to_mlp")
    if model.phase != "structural":
        raise PhaseError(
            "to_mlp() needs the structural phase: after freeze() the block is gated by frozen patterns and is no "
            "longer a ReLU MLP"
        )
    layers: list[nn.Module] = []
    for i, source in enumerate(model.layers):
        w = source.weight
        linear = nn.Linear(w.shape[1], w.shape[0], bias=source.bias is not None, device="meta", dtype=w.dtype)
        _share(linear, source)
        layers += [linear] if i == len(model.layers) - 1 else [linear, nn.ReLU()]
    return nn.Sequential(*layers).train(model.training)


def convert(
    model: nn.Module, *, predicate: Callable[[str, nn.Module], bool] | None = None, **kwargs
) -> list[str]:
    """Replace every convertible ``nn.Sequential`` MLP inside ``model`` by a :class:`GLAIMLP`, in place.

    Args:
        model: any module; its children are searched depth first.
        predicate: ``predicate(name, sequential)`` is asked about every ``nn.Sequential`` (``name`` qualified, as
            in ``named_modules``): ``True`` converts it, and then it must be convertible (a ValueError names the
            layer otherwise); ``False`` leaves it and looks inside. Without a predicate every convertible block is
            converted and the others are left as they are.
        **kwargs: ``reduction`` and ``backend``, passed to :meth:`GLAIMLP.from_mlp`.

    Returns the qualified names replaced, in the order found. A block held at several places is converted once
    and the same GLAIMLP put at each. Parameters are taken over, not copied (see the module docstring).
    """
    unknown = sorted(set(kwargs) - set(CONVERT_OPTIONS))
    if unknown:
        raise TypeError(
            f"convert() got unexpected keyword arguments {unknown}; it passes on {list(CONVERT_OPTIONS)}"
        )
    check_reduction(kwargs.get("reduction", 1), ())
    check_backend_name(kwargs.get("backend", "auto"))
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert() expects an nn.Module, got {type(model).__name__}")
    if predicate is not None and not callable(predicate):
        raise TypeError(
            f"predicate must be a callable (name, module) -> bool, got {type(predicate).__name__}"
        )
    if (
        isinstance(model, nn.Sequential)
        and _convertible(model)
        and (predicate is None or predicate("", model))
    ):
        raise ValueError(
            "the model is itself a convertible MLP and cannot be replaced in place: use GLAIMLP.from_mlp(model)"
        )
    done: dict[int, tuple[nn.Module, GLAIMLP]] = {}  # by id, the old block kept alive so its id is not reused
    replaced: list[str] = []

    def visit(parent: nn.Module, prefix: str) -> None:
        # _modules, not named_children(): that skips a module already seen, and a shared block is replaced at
        # every place that holds it.
        for name, child in list(parent._modules.items()):
            if child is None:
                continue
            qualified = f"{prefix}.{name}" if prefix else name
            new = done[id(child)][1] if id(child) in done else None
            if new is None and isinstance(child, nn.Sequential):
                new = _wanted(child, qualified, predicate, kwargs)
            if new is None:
                if not isinstance(child, GLAIMLP):
                    visit(child, qualified)
                continue
            done[id(child)] = (child, new)
            setattr(parent, name, new)
            replaced.append(qualified)

    visit(model, "")
    return replaced


def _convertible(seq: nn.Sequential) -> bool:
    try:
        mlp_layers(seq)
    except _Refused:
        return False
    return True


def _wanted(seq: nn.Sequential, name: str, predicate, kwargs) -> GLAIMLP | None:
    """The GLAIMLP for ``seq`` when it is to be converted, else None."""
    if predicate is None:
        try:
            return from_mlp(seq, **kwargs)
        except _Refused:
            return None
    if not predicate(name, seq):
        return None
    try:
        return from_mlp(seq, **kwargs)
    except _Refused as exc:
        raise ValueError(
            f"convert(): the predicate selected {name}, which cannot be converted: {exc}"
        ) from None
