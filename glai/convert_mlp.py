"""One ReLU MLP to one :class:`~glai.nn.GLAIMLP` and back: ``GLAIMLP.from_mlp``, ``.to_mlp()``, ``.to_mlp_class``.

These are the conversion API. ``GLAIMLP`` inherits them from :class:`MLPConversion`, so they live on the block's
side of the imports: this module imports no ``glai.nn`` (it builds through the class it is called on), and
:mod:`glai.conversion`, which replaces blocks inside whole models (``glai.convert``), imports both. What an MLP
may hold and how each layer is read is in :mod:`glai.conversion`'s docstring and :mod:`glai.convert_chain`.

With ``reduction=r`` the MLP is the *structural* network: the block has hidden widths ``r * n_l`` and structural
widths ``n_l``, so it computes the MLP's function in the structural phase for every ``r``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

from torch import nn

from glai_kernels.backend import check_backend_name
from glai_kernels.checks import check_reduction

from .convert_chain import Chain, Refused, check_plain, fold_batchnorm, read_chain
from .convert_trace import read_block
from .phases import PhaseError

# A block's plain attribute: (the module it was converted from, its Linear layers, its dropout rates).
_ORIGIN = "_mlp_origin"


def _flatten(seq: nn.Sequential, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """``(position, layer)`` in call order, nested ``nn.Sequential`` read through (positions like ``2][0``)."""
    for name, child in seq.named_children():
        position = f"{prefix}][{name}" if prefix else name
        if type(child).forward is nn.Sequential.forward and isinstance(child, nn.Sequential):
            check_plain(child, position)
            yield from _flatten(child, position)
        else:
            yield position, child


def read_module(module: nn.Module, *, fold_batchnorm: bool = False) -> Chain:
    """The chain of an ``nn.Sequential`` or attribute-style block, or :class:`Refused` naming what is wrong."""
    check_plain(module, None)
    if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
        return read_chain(_flatten(module), fold_batchnorm=fold_batchnorm)
    if not any(True for _ in module.children()):  # a lone layer (Linear, ReLU...): read as a chain of one
        return read_chain([("", module)], fold_batchnorm=fold_batchnorm)
    try:
        return read_block(module, fold_batchnorm=fold_batchnorm)
    except Refused as exc:
        if isinstance(module, nn.Sequential):
            raise Refused(
                f"{type(module).__name__} overrides nn.Sequential.forward, and it is no chain of its layers: {exc}",
                exc.kind,
            ) from None
        raise


def build(module: nn.Module, chain: Chain, cls: type, *, reduction: int, backend: str):
    """The block of class ``cls`` over ``chain``'s Parameters (BatchNorm folded first), remembering the module
    it came from when that has a class of its own."""
    for linear, norm in chain.folds:
        fold_batchnorm(linear, norm)
    linears = chain.layers
    first = linears[0].weight
    # Built on the meta device: nothing is allocated or drawn from the RNG before the Parameters are taken over.
    model = cls(
        linears[0].in_features,
        [layer.out_features * reduction for layer in linears[:-1]],
        linears[-1].out_features,
        reduction=reduction,
        bias=linears[0].bias is not None,
        backend=backend,
        device="meta",
        dtype=first.dtype,
        dropout=chain.dropout,
    )
    for target, source in zip(model.layers, linears):
        _share(target, source)
    unset = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if unset:  # a tensor GLAIMLP.__init__ creates that conversion does not know about
        raise RuntimeError(f"GLAIMLP.from_mlp left {unset} unset on the meta device")
    if type(module) is not nn.Sequential and not (chain.folds or chain.lead or chain.trail):
        setattr(model, _ORIGIN, (module, linears, tuple(chain.dropout)))  # a tuple: no submodule registered
    return model.train(module.training)


def _share(target: nn.Linear, source: nn.Linear) -> None:
    target.weight = source.weight
    if source.bias is not None:
        target.bias = source.bias


def _check_container(mlp) -> None:
    block = isinstance(mlp, MLPConversion)
    if not isinstance(mlp, nn.Module) or type(mlp).forward is nn.Module.forward or block:
        raise TypeError(
            "GLAIMLP.from_mlp expects an nn.Sequential of Linear and ReLU layers, got "
            f"{type(mlp).__name__}"
            + (" (it is one already)" if block else " (or a module whose forward chains its Linear and ReLU)")
        )


def _origin(model) -> tuple[nn.Module, list[nn.Linear]] | None:
    """The module ``model`` was converted from, while a deep copy of it can still hold the same function: the
    structural phase with the same layer shapes and dropout rates."""
    origin = getattr(model, _ORIGIN, None)
    if origin is None:
        return None
    module, linears, rates = origin
    shapes = [m.weight.shape for m in model.layers] == [m.weight.shape for m in linears]
    biases = [m.bias is None for m in model.layers] == [m.bias is None for m in linears]
    return (module, linears) if shapes and biases and tuple(model.dropout) == rates else None


class MLPConversion:
    """The conversion methods of :class:`~glai.nn.GLAIMLP`, which inherits them (a mixin of methods only)."""

    @classmethod
    def from_mlp(
        cls, mlp: nn.Module, *, reduction: int = 1, backend: str = "auto", fold_batchnorm: bool = False
    ):
        """A structural-phase GLAIMLP computing what ``mlp`` computes: an ``nn.Sequential`` of ``Linear`` and
        ``ReLU`` (``nn.Dropout`` after a hidden layer becomes its rate, identities skipped), or a module whose
        ``forward`` chains its own such layers (timm's ``Mlp``). It takes over ``mlp``'s Parameters (no copy);
        with ``reduction=r`` the MLP is the structural net and the hidden widths are ``r`` times its widths;
        ``fold_batchnorm=True`` folds an eval-mode ``BatchNorm1d`` into the Linear before it. Anything else
        raises an error naming the layer and its position. See :mod:`glai.conversion`."""
        check_reduction(reduction, ())
        check_backend_name(backend)
        _check_container(mlp)
        chain = read_module(mlp, fold_batchnorm=fold_batchnorm)
        outside = chain.lead + chain.trail
        if outside:
            where = "before the first Linear" if chain.lead else "after the last Linear"
            raise Refused(
                f"{outside[0]!r} {where} acts on the block's {'input' if chain.lead else 'output'}, not on hidden "
                "units, so it stays outside a GLAIMLP: glai.convert(parent) keeps it beside the block "
                "(nn.Sequential(Dropout, GLAIMLP)); or convert the layers without it"
            )
        return build(mlp, chain, cls, reduction=reduction, backend=backend)

    @property
    def to_mlp_class(self) -> type[nn.Module]:
        """The class ``to_mlp()`` returns: the converted module's own class, or ``nn.Sequential``."""
        origin = _origin(self)
        return type(origin[0]) if origin else nn.Sequential

    def to_mlp(self) -> nn.Module:
        """The structural-phase network, sharing this block's Parameters: a deep copy of the module it was
        converted from when that had a class of its own (timm's ``Mlp``, an ``nn.Sequential`` subclass; same
        class and attribute names, its Linear layers holding the block's Parameters), else
        ``nn.Sequential(Linear, ReLU, (Dropout), ..., Linear)``; ``to_mlp_class`` says which."""
        if self.phase != "structural":
            raise PhaseError(
                "to_mlp() needs the structural phase: after freeze() the block is gated by frozen patterns and is "
                "no longer a ReLU MLP"
            )
        origin = _origin(self)
        if origin is not None:
            module, linears = origin
            memo = {}
            for old, new in zip(linears, self.layers):
                memo[id(old.weight)] = new.weight
                if old.bias is not None:
                    memo[id(old.bias)] = new.bias
            return copy.deepcopy(module, memo).train(self.training)
        layers: list[nn.Module] = []
        rates = self.dropout
        for i, source in enumerate(self.layers):
            w = source.weight
            linear = nn.Linear(
                w.shape[1], w.shape[0], bias=source.bias is not None, device="meta", dtype=w.dtype
            )
            _share(linear, source)
            layers.append(linear)
            if i < len(self.layers) - 1:
                layers += [nn.ReLU()] + ([nn.Dropout(rates[i])] if rates[i] else [])
        return nn.Sequential(*layers).train(self.training)
