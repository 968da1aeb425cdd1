"""Swapping GLAI into existing models: ReLU MLPs to :class:`GLAIMLP` and back.

Two shapes of MLP convert:

- an ``nn.Sequential`` (or a subclass that keeps its forward, such as torchvision's ``MLP``) whose layers read
  ``Linear, ReLU, (Dropout), Linear, ..., Linear``; nested ``nn.Sequential`` containers are read through;
- an attribute-style block, a module of its own class whose ``forward`` chains its submodules in that order
  (timm's ``Mlp``, T5's ReLU feed-forward, most hand-written heads), read by tracing it with ``torch.fx``
  (:mod:`glai.convert_trace`).

The rules of the chain are in :mod:`glai.convert_chain`: identities (``nn.Identity``, dropout with ``p=0``) are
skipped, an ``nn.Dropout`` in a hidden layer becomes the GLAIMLP's rate for that layer, and dropout on the block's
input or output stays outside it (``convert`` puts ``nn.Sequential(Dropout, GLAIMLP)`` in the block's place;
``from_mlp``, which returns a GLAIMLP, refuses it). Anything else is refused with an error naming the layer: another
activation, a normalisation (an eval-mode ``BatchNorm1d`` right after a ``Linear`` folds into it with
``fold_batchnorm=True``), widths that do not chain, mixed biases, dtypes or devices, hooks or parametrizations.

The converted model *takes over* the MLP's ``Parameter`` objects rather than copying them, as
``nn.SyncBatchNorm.convert_sync_batchnorm`` does: same weights, dtype and device, no new memory, and an
optimizer built over the model before the conversion keeps training them. ``copy.deepcopy`` the MLP first for an
independent copy. ``to_mlp`` does the same the other way, into the block's own class where it can.

With ``reduction=r`` the MLP becomes the *structural* network: the GLAIMLP has hidden widths ``r * n_l`` and
structural widths ``n_l``, so the function is the MLP's in the structural phase for every ``r``; at ``freeze()``
the quantitative network is ``r`` times wider than the MLP.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

from torch import nn

from glai_kernels.backend import check_backend_name
from glai_kernels.checks import check_reduction

from .convert_chain import CLOSENESS, Chain, Refused, check_plain, fold_batchnorm, read_chain
from .convert_report import Candidate, ConversionReport
from .convert_scan import check_not_shared, holders, is_candidate
from .convert_trace import read_block
from .nn import GLAIMLP, PhaseError, check_glaimlp

CONVERT_OPTIONS = ("reduction", "backend")
# A GLAIMLP's plain attribute: (the module it was converted from, its Linear layers, its dropout rates).
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


def _build(module: nn.Module, chain: Chain, *, reduction: int, backend: str, cls: type[GLAIMLP]) -> GLAIMLP:
    """The GLAIMLP over ``chain``'s Parameters (BatchNorm folded first), remembering a class of its own."""
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
    if not isinstance(mlp, nn.Module) or type(mlp).forward is nn.Module.forward or isinstance(mlp, GLAIMLP):
        raise TypeError(
            "GLAIMLP.from_mlp expects an nn.Sequential of Linear and ReLU layers, got "
            f"{type(mlp).__name__}"
            + (" (it is one already)" if isinstance(mlp, GLAIMLP) else "")
            + ("" if isinstance(mlp, GLAIMLP) else " (or a module whose forward chains its Linear and ReLU)")
        )


def from_mlp(
    mlp,
    *,
    reduction: int = 1,
    backend: str = "auto",
    fold_batchnorm: bool = False,
    cls: type[GLAIMLP] = GLAIMLP,
) -> GLAIMLP:
    """``GLAIMLP.from_mlp``: a structural-phase block that computes what ``mlp`` computes (module docstring)."""
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
    return _build(mlp, chain, reduction=reduction, backend=backend, cls=cls)


def to_mlp_class(model: GLAIMLP) -> type[nn.Module]:
    """The class ``to_mlp`` returns: the converted block's own class, or ``nn.Sequential``."""
    return type(_origin(model)[0]) if _origin(model) else nn.Sequential


def _origin(model: GLAIMLP) -> tuple[nn.Module, list[nn.Linear]] | None:
    """The module ``model`` was converted from, while a deep copy of it can still hold the same function: the
    structural phase with the same layer shapes and dropout rates."""
    origin = getattr(model, _ORIGIN, None)
    if origin is None:
        return None
    module, linears, rates = origin
    shapes = [m.weight.shape for m in model.layers] == [m.weight.shape for m in linears]
    biases = [m.bias is None for m in model.layers] == [m.bias is None for m in linears]
    return (module, linears) if shapes and biases and tuple(model.dropout) == rates else None


def to_mlp(model: GLAIMLP) -> nn.Module:
    """``GLAIMLP.to_mlp``: the structural-phase network, sharing the model's Parameters.

    For a GLAIMLP converted from a module of its own class (timm's ``Mlp``, an ``nn.Sequential`` subclass) a deep
    copy of that module, same class and attribute names, its Linear layers holding the model's Parameters;
    otherwise ``nn.Sequential(Linear, ReLU, (Dropout), ..., Linear)``. :func:`to_mlp_class` says which.
    """
    check_glaimlp(model, "to_mlp")
    if model.phase != "structural":
        raise PhaseError(
            "to_mlp() needs the structural phase: after freeze() the block is gated by frozen patterns and is no "
            "longer a ReLU MLP"
        )
    origin = _origin(model)
    if origin is not None:
        module, linears = origin
        memo = {}
        for old, new in zip(linears, model.layers):
            memo[id(old.weight)] = new.weight
            if old.bias is not None:
                memo[id(old.bias)] = new.bias
        return copy.deepcopy(module, memo).train(model.training)
    layers: list[nn.Module] = []
    rates = model.dropout
    for i, source in enumerate(model.layers):
        w = source.weight
        linear = nn.Linear(w.shape[1], w.shape[0], bias=source.bias is not None, device="meta", dtype=w.dtype)
        _share(linear, source)
        layers.append(linear)
        if i < len(model.layers) - 1:
            layers += [nn.ReLU()] + ([nn.Dropout(rates[i])] if rates[i] else [])
    return nn.Sequential(*layers).train(model.training)


def convert(
    model: nn.Module,
    *,
    predicate: Callable[[str, nn.Module], bool] | None = None,
    verbose: bool = False,
    fold_batchnorm: bool = False,
    **kwargs,
) -> ConversionReport:
    """Replace every convertible MLP inside ``model`` by a :class:`GLAIMLP`, in place, and say what it did.

    Args:
        model: any module; its children are searched depth first.
        predicate: ``predicate(name, module)`` is asked about every candidate (each ``nn.Sequential`` and each
            attribute-style block; ``name`` qualified, as in ``named_modules``): ``True`` converts it, and
            then it must be convertible (a ValueError says why not); ``False`` leaves it and looks inside.
            Without a predicate every convertible candidate is converted and the others are left as they are.
        verbose: print the report (every candidate, and why each one left was left).
        fold_batchnorm: fold an eval-mode ``BatchNorm1d`` that directly follows a ``Linear`` into it (its
            Parameters rewritten in place); without it such a block is refused.
        **kwargs: ``reduction`` and ``backend``, passed to :meth:`GLAIMLP.from_mlp`.

    Returns a :class:`glai.convert_report.ConversionReport`: the list of qualified names replaced, in the order
    found, with ``.candidates``. When nothing was replaced (and no GLAIMLP was there already) it warns once,
    naming the closest candidate and its reason. A block held at several places is converted once and the same
    module put at each. Dropout before the first ``Linear`` or after the last stays outside, as
    ``nn.Sequential(Dropout, GLAIMLP)`` in the block's place. Parameters are taken over, not copied.
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
    itself = _itself(model, predicate, fold_batchnorm)
    if itself is not None:
        how = "use GLAIMLP.from_mlp(model)"
        if itself.lead or itself.trail:  # which refuses the outer dropout: convert can keep it, from a parent
            how = "hold it in a parent module (e.g. nn.ModuleDict({'head': model})) and convert that"
        raise ValueError(f"the model is itself a convertible MLP and cannot be replaced in place: {how}")
    owners = holders(model)
    done: dict[int, tuple[nn.Module, nn.Module, str]] = {}  # by id, the old block kept alive: no id reused
    report = ConversionReport()

    def visit(parent: nn.Module, prefix: str) -> None:
        # _modules, not named_children(): that skips a module already seen, and a shared block is replaced at
        # every place that holds it.
        for name, child in list(parent._modules.items()):
            if child is None:
                continue
            qualified = f"{prefix}.{name}" if prefix else name
            if id(child) in done:
                _, new, first = done[id(child)]
                setattr(parent, name, new)
                report.add(Candidate(qualified, type(child).__name__, True, f"the same block as {first}"))
                continue
            if isinstance(child, GLAIMLP):
                report.add(Candidate(qualified, "GLAIMLP", False, "already a GLAIMLP", 1))
                continue
            new = None
            if is_candidate(child):
                new = _candidate(child, qualified, predicate, owners, report, fold_batchnorm, kwargs)
            if new is None:
                visit(child, qualified)
                continue
            done[id(child)] = (child, new, qualified)
            setattr(parent, name, new)

    visit(model, "")
    if verbose:
        print(report.explain())
    report.warn_if_empty()
    return report


def _itself(model: nn.Module, predicate, fold: bool) -> Chain | None:
    """The chain of ``model`` when the model itself would be converted (it cannot replace itself)."""
    # Only a flat module is traced here (a whole network is no candidate and may be slow to trace).
    flat = all(not any(True for _ in child.children()) for child in model.children())
    if not (isinstance(model, nn.Sequential) or (is_candidate(model) and flat)):
        return None
    try:
        chain = read_module(model, fold_batchnorm=fold)
    except Refused:
        return None
    return chain if predicate is None or predicate("", model) else None


def _candidate(module, name, predicate, owners, report, fold, kwargs) -> nn.Module | None:
    """The module to put in ``module``'s place (its candidate recorded in ``report``), or None."""
    kind = type(module).__name__
    if predicate is not None and not predicate(name, module):
        report.add(Candidate(name, kind, False, "not selected by the predicate", 0))
        return None
    try:
        chain = read_module(module, fold_batchnorm=fold)
        check_not_shared(module, chain, owners)
    except Refused as exc:
        if predicate is not None:
            raise ValueError(
                f"convert(): the predicate selected {name}, which cannot be converted: {exc}"
            ) from None
        report.add(Candidate(name, kind, False, str(exc), _closeness(exc)))
        return None
    new = _build(module, chain, cls=GLAIMLP, **{"reduction": 1, "backend": "auto", **kwargs})
    notes = [f"GLAIMLP {new.in_features}-{list(new.hidden_features)}-{new.out_features}"]
    if any(chain.dropout):
        notes.append(f"dropout {chain.dropout}")
    if chain.folds:
        notes.append(f"{len(chain.folds)} BatchNorm1d folded into the Linear before it")
    if chain.lead or chain.trail:
        parts = [*(repr(m) for m in chain.lead), "GLAIMLP", *(repr(m) for m in chain.trail)]
        notes.append(
            f"dropout on the block's input or output kept outside: {name} is now Sequential({', '.join(parts)})"
        )
        new = nn.Sequential(*chain.lead, new, *chain.trail).train(module.training)
    report.add(Candidate(name, kind, True, "; ".join(notes)))
    return new


def _closeness(exc: Refused) -> int:
    return CLOSENESS.get(exc.kind, 2)
