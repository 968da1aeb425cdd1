"""Swapping GLAI into existing models: ReLU MLPs to :class:`GLAIMLP` and back.

One block converts with the block's own methods, ``GLAIMLP.from_mlp(mlp)``, ``model.to_mlp()`` and
``model.to_mlp_class`` (:mod:`glai.convert_mlp`, on the block's side of the imports); :func:`from_mlp`,
:func:`to_mlp` and :func:`to_mlp_class` here are the same as functions. :func:`convert` (``glai.convert``) finds
and replaces every convertible block inside a whole model. This module imports :mod:`glai.nn`, never the reverse.

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

from collections.abc import Callable

from torch import nn

from glai_kernels.backend import check_backend_name
from glai_kernels.checks import check_reduction

from .convert_chain import CLOSENESS, Chain, Refused
from .convert_mlp import build, read_module
from .convert_report import Candidate, ConversionReport
from .convert_scan import check_not_shared, holders, is_candidate
from .nn import GLAIMLP, check_glaimlp

CONVERT_OPTIONS = ("reduction", "backend")


# The conversion API is the block's own: GLAIMLP.from_mlp, .to_mlp(), .to_mlp_class (glai.convert_mlp). These
# are the same as functions, for code that maps a conversion over modules.
def from_mlp(
    mlp,
    *,
    reduction: int = 1,
    backend: str = "auto",
    fold_batchnorm: bool = False,
    cls: type[GLAIMLP] = GLAIMLP,
) -> GLAIMLP:
    """``cls.from_mlp(mlp, ...)``: an alias of :meth:`GLAIMLP.from_mlp`."""
    return cls.from_mlp(mlp, reduction=reduction, backend=backend, fold_batchnorm=fold_batchnorm)


def to_mlp(model: GLAIMLP) -> nn.Module:
    """``model.to_mlp()``, after checking that ``model`` is a GLAIMLP: an alias of :meth:`GLAIMLP.to_mlp`."""
    check_glaimlp(model, "to_mlp")
    return model.to_mlp()


def to_mlp_class(model: GLAIMLP) -> type[nn.Module]:
    """``model.to_mlp_class``, after checking that ``model`` is a GLAIMLP."""
    check_glaimlp(model, "to_mlp_class")
    return model.to_mlp_class


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
    new = build(module, chain, GLAIMLP, **{"reduction": 1, "backend": "auto", **kwargs})
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
