"""Which modules ``glai.convert`` considers, and whether a candidate's weights are also used elsewhere."""

from __future__ import annotations

from torch import nn

from .convert_chain import Chain, Refused
from .convert_trace import is_block


def is_candidate(module: nn.Module) -> bool:
    """An ``nn.Sequential`` or an attribute-style block (:func:`glai.convert_trace.is_block`)."""
    return isinstance(module, nn.Sequential) or is_block(module)


def holders(model: nn.Module) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """Every qualified name of each module and of each Parameter, by ``id`` (duplicates kept)."""
    modules: dict[int, list[str]] = {}
    params: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        modules.setdefault(id(module), []).append(name)
    for name, p in model.named_parameters(remove_duplicate=False):
        params.setdefault(id(p), []).append(name)
    return modules, params


def check_not_shared(block: nn.Module, chain: Chain, owners) -> None:
    """Refuse a block whose Linear Parameters are also held outside it (a shared submodule, a tied weight).

    The GLAIMLP would take them over while the other holder keeps using them, and ``freeze()`` with
    ``reduction > 1`` resizes them in place. A block held whole at several places is no such case: convert puts
    the same GLAIMLP at each.
    """
    modules, params = owners
    prefixes = tuple(f"{name}." for name in modules.get(id(block), []))
    for position, linear in chain.linears:
        for attr in ("weight", "bias"):
            p = getattr(linear, attr)
            outside = [n for n in params.get(id(p), []) if not n.startswith(prefixes)]
            if p is not None and outside:
                raise Refused(
                    f"the {attr} of layer [{position}] is also held outside the block, as {outside[0]} (a shared "
                    "submodule or tied weight): the GLAIMLP would take it over while the other keeps using it, "
                    "and freeze() may resize it",
                    "shared",
                )
