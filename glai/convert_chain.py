"""The grammar of a convertible block: ``Linear -> ReLU -> (Dropout) -> Linear -> ... -> Linear``.

Both readers of :mod:`glai.conversion` end here: the layers of an ``nn.Sequential`` in call order, and the
calls traced from the ``forward`` of an attribute-style block (:mod:`glai.convert_trace`). A *step* is
``(position, module)``; :func:`read_chain` accepts the steps or raises :class:`Refused` naming the step.

Why each rule:

- A hidden layer is ``Linear`` then ``ReLU``: the pattern ``p_l(x) = 1[z_l > 0]`` must be a function of the
  Linear's output alone.
- An ``nn.Dropout`` in a hidden layer becomes the GLAIMLP's rate for that layer, whether it stands before or
  after the ReLU: an inverted-dropout mask ``m / (1 - p)`` is non-negative, so
  ``relu(m z / (1 - p)) = m relu(z) / (1 - p)`` and the pattern is that of ``z`` either way.
- Dropout before the first ``Linear`` (on the block's input) or after the last one (on its output) is no
  hidden-unit dropout: it stays outside the GLAIMLP, as its own module (``lead`` and ``trail``).
- A ``BatchNorm1d`` directly after a ``Linear`` is, in eval mode, the affine map
  ``s (z - mean) + beta`` with ``s = gamma / sqrt(var + eps)``, which folds into the Linear
  (``W' = diag(s) W``, ``b' = s (b - mean) + beta``) when asked (``fold_batchnorm=True``). In training mode it
  uses the batch's statistics, so a sample's pattern would depend on the other samples of its batch: refused.
- Every other normalisation mixes a sample's units (LayerNorm, GroupNorm, RMSNorm) or the batch: refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.dropout import _DropoutNd
from torch.nn.utils import parametrize

NORMS = (
    _NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    *([nn.RMSNorm] if hasattr(nn, "RMSNorm") else []),
)

# How close a refused candidate came to converting, for convert()'s warning: a block refused for one layer
# (an activation, a norm, a hook...) is a near miss; a lone Linear or an untraceable forward is further off.
CLOSENESS = {"layer": 4, "norm": 4, "activation": 4, "hooked": 4, "shared": 4, "single": 3, "chain": 2}


class Refused(ValueError):
    """A block that cannot become a GLAIMLP; ``kind`` says what kind of reason (keys of ``CLOSENESS``)."""

    def __init__(self, message: str, kind: str = "layer"):
        super().__init__(message)
        self.kind = kind


@dataclass
class Chain:
    """What :func:`read_chain` found: the Linear layers, one dropout rate per hidden layer, the dropout kept
    outside the block (before the first Linear, after the last), and the BatchNorm1d layers to fold."""

    linears: list[tuple[str, nn.Linear]]
    dropout: list[float]
    lead: list[nn.Module] = field(default_factory=list)
    trail: list[nn.Module] = field(default_factory=list)
    folds: list[tuple[nn.Linear, nn.BatchNorm1d]] = field(default_factory=list)

    @property
    def layers(self) -> list[nn.Linear]:
        return [layer for _, layer in self.linears]


def where(position: str, module: nn.Module) -> str:
    return f"layer [{position}] {module!r}".replace("\n", " ")


def check_plain(module: nn.Module, position: str | None) -> None:
    """Hooks and parametrizations change what a layer computes or records; a GLAIMLP would silently drop them."""
    what = "the MLP" if position is None else where(position, module)
    if module._forward_hooks or module._forward_pre_hooks or module._backward_hooks:
        raise Refused(f"{what} has hooks registered, which a GLAIMLP would drop: remove them first", "hooked")
    if parametrize.is_parametrized(module):
        raise Refused(f"{what} is parametrized (e.g. weight_norm), which a GLAIMLP would drop", "hooked")


def _torch_own(module: nn.Module, cls: type) -> bool:
    """``module`` is ``cls`` or a subclass computing the same thing (its forward not overridden)."""
    return isinstance(module, cls) and type(module).forward is cls.forward


def is_dropout(module: nn.Module) -> bool:
    # torch's element-wise dropout only: Dropout1d/2d/3d drop whole channels, AlphaDropout keeps SELU's
    # statistics, a subclass may compute something else.
    return type(module) is nn.Dropout


def is_identity(module: nn.Module) -> bool:
    if type(module) is nn.Identity:
        return True
    return (
        isinstance(module, _DropoutNd) and type(module).__module__ == _DropoutNd.__module__ and module.p == 0
    )


def norm_reason(module: nn.Module, fold: bool) -> str:
    name = type(module).__name__
    if _torch_own(module, nn.BatchNorm1d):
        if not fold:
            return (
                f"a GLAIMLP has no normalisation layers: with {name} inside the block the pattern depends on "
                "the batch's statistics, not only on the input; pass fold_batchnorm=True to fold an eval-mode "
                "BatchNorm1d into the Linear before it"
            )
        if module.training:
            return (
                f"fold_batchnorm=True needs the {name} in eval mode (call model.eval() first): in training "
                "mode it normalises with the batch's statistics, which no Linear can hold"
            )
        if not module.track_running_stats or module.running_mean is None:
            return (
                f"fold_batchnorm=True cannot fold a {name} with track_running_stats=False: it always uses "
                "the batch's statistics, which no Linear can hold"
            )
        return ""
    return (
        f"a GLAIMLP has no normalisation layers: {name} makes each pre-activation depend on the batch or on "
        "the sample's other units, so the pattern is no longer a function of one Linear's output "
        "(only an eval-mode BatchNorm1d right after a Linear can be folded, fold_batchnorm=True)"
    )


def why_not(module: nn.Module) -> tuple[str, str]:
    """The reason a layer that is no Linear, ReLU, Dropout or identity is refused, and its kind."""
    name = type(module).__name__
    if isinstance(module, _DropoutNd):
        return f"a GLAIMLP's dropout is nn.Dropout's, element-wise on the hidden units; got {name}", "layer"
    for plain in (nn.Linear, nn.ReLU, nn.Dropout):
        if isinstance(module, plain):
            return f"{name} overrides forward, so it is not a plain nn.{plain.__name__}", "layer"
    if type(module).__module__ == "torch.nn.modules.activation":
        return f"a GLAIMLP's only activation is ReLU, got {name}", "activation"
    return f"expected nn.Linear, nn.ReLU or nn.Dropout, got {name}", "layer"


class _Hidden:
    """The steps of the current layer after its Linear: ReLU, dropout and BatchNorm, each at most once."""

    def __init__(self):
        self.relu = self.dropout = self.norm = None


def read_chain(steps: Iterable[tuple[str, nn.Module]], *, fold_batchnorm: bool = False) -> Chain:
    """Read ``(position, module)`` steps in call order as a GLAIMLP's chain, or raise :class:`Refused`."""
    linears: list[tuple[str, nn.Linear]] = []
    layers: list[_Hidden] = []
    lead: list[nn.Module] = []
    for position, layer in steps:
        if isinstance(layer, nn.modules.lazy.LazyModuleMixin) and layer.has_uninitialized_params():
            raise Refused(f"{where(position, layer)} is not initialised yet: run one forward first")
        check_plain(layer, position)
        if is_identity(layer):
            continue
        current = layers[-1] if layers else None
        if _torch_own(layer, nn.Linear):
            if current is not None and current.relu is None:
                raise Refused(
                    f"{where(position, layer)} follows the Linear at [{linears[-1][0]}] without a ReLU between: "
                    "a GLAIMLP gates every hidden layer by ReLU (merge the two Linear layers or add the ReLU)"
                )
            if linears:
                _check_chains(linears[-1], (position, layer))
            linears.append((position, layer))
            layers.append(_Hidden())
        elif _torch_own(layer, nn.ReLU):
            if current is None or current.relu is not None:
                raise Refused(
                    f"{where(position, layer)}: expected an nn.Linear here (a ReLU must follow a Linear)"
                )
            current.relu = position
        elif is_dropout(layer):
            if current is None:
                lead.append(layer)
            elif current.dropout is not None:
                raise Refused(
                    f"{where(position, layer)} is a second dropout in the layer of the Linear at "
                    f"[{linears[-1][0]}]: a GLAIMLP has one rate per hidden layer"
                )
            else:
                current.dropout = (position, layer)
        elif isinstance(layer, NORMS):
            reason = norm_reason(layer, fold_batchnorm)
            if not reason and (current is None or current.relu or current.dropout or current.norm):
                reason = "a BatchNorm1d can be folded only into the Linear right before it"
            if reason:
                raise Refused(f"{where(position, layer)}: {reason}", "norm")
            current.norm = layer
        else:
            reason, kind = why_not(layer)
            raise Refused(f"{where(position, layer)}: {reason}", kind)
    return _finish(linears, layers, lead)


def _finish(linears, layers: list[_Hidden], lead: list[nn.Module]) -> Chain:
    if layers and layers[-1].relu is not None:
        raise Refused(
            f"layer [{layers[-1].relu}] ReLU follows the last Linear: a GLAIMLP's output layer is linear; convert "
            "the layers before it and apply torch.relu to the output"
        )
    if len(linears) < 2:
        what = "a single Linear" if linears else "no Linear"
        raise Refused(
            f"{what}: an MLP with at least one hidden layer (two Linear layers) is needed, got {len(linears)} "
            "Linear",
            "single",
        )
    folds = [(layer, hidden.norm) for (_, layer), hidden in zip(linears, layers) if hidden.norm is not None]
    folded = {id(layer) for layer, _ in folds}
    has_bias = [(pos, layer.bias is not None or id(layer) in folded) for pos, layer in linears]
    if len({b for _, b in has_bias}) > 1:
        has = next(pos for pos, b in has_bias if b)
        lacks = next(pos for pos, b in has_bias if not b)
        raise Refused(
            f"the Linear at [{has}] has a bias and the one at [{lacks}] has none: a GLAIMLP has a bias in every "
            "layer or in none"
        )
    trail = [layers[-1].dropout[1]] if layers[-1].dropout is not None else []
    rates = [float(h.dropout[1].p) if h.dropout is not None else 0.0 for h in layers[:-1]]
    return Chain(linears, rates, lead, trail, folds)


def _check_chains(previous: tuple[str, nn.Linear], current: tuple[str, nn.Linear]) -> None:
    (p_pos, p), (c_pos, c) = previous, current
    if c.in_features != p.out_features:
        raise Refused(
            f"{where(c_pos, c)} takes {c.in_features} inputs, but the Linear at [{p_pos}] gives {p.out_features}"
        )
    if (c.weight.dtype, c.weight.device) != (p.weight.dtype, p.weight.device):
        raise Refused(
            f"{where(c_pos, c)} is {c.weight.dtype} on {c.weight.device}, the Linear at [{p_pos}] "
            f"{p.weight.dtype} on {p.weight.device}: a GLAIMLP has one dtype and device"
        )


@torch.no_grad()
def fold_batchnorm(linear: nn.Linear, norm: nn.BatchNorm1d) -> None:
    """Write ``norm(linear(x))`` (eval mode) into ``linear``'s own Parameters, in place (float64 arithmetic).

    ``W' = diag(s) W`` and ``b' = s (b - mean) + beta`` with ``s = gamma / sqrt(var + eps)``. A Linear
    without a bias gets one (a new Parameter, which an optimizer built before does not hold).
    """
    w = linear.weight
    var, mean = norm.running_var.double(), norm.running_mean.double()
    s = torch.rsqrt(var + norm.eps)
    beta = torch.zeros_like(mean)
    if norm.weight is not None:
        s = s * norm.weight.double()
        beta = norm.bias.double()
    bias = linear.bias.double() if linear.bias is not None else torch.zeros_like(mean)
    new_bias = (s * (bias - mean) + beta).to(w.dtype)
    w.copy_((s[:, None] * w.double()).to(w.dtype))
    if linear.bias is None:
        linear.bias = nn.Parameter(new_bias, requires_grad=w.requires_grad)
    else:
        linear.bias.copy_(new_bias)
