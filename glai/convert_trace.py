"""Attribute-style MLP blocks: a module whose ``forward`` chains its own ``Linear``, ``ReLU`` and ``Dropout``.

timm's ``Mlp`` (``fc1, act, drop1, norm, fc2, drop2``), the ReLU feed-forward of T5 (``wi, act, dropout, wo``)
and most hand-written heads keep their layers as attributes and call them in ``forward``. The module alone is
traced by ``torch.fx`` with every submodule a leaf, so the graph holds one node per call of a submodule or
function. It is convertible when that graph is a *chain*: one input, each call taking the previous call's output
(and constants) and giving it to the next call only, and the calls read as :func:`glai.convert_chain.read_chain`
accepts. ``F.relu``, ``torch.relu`` and ``x.relu()`` count as a ReLU.

What tracing cannot see is refused with the reason: a forward that does not trace (data-dependent control
flow; the tracer's message is kept), a residual or gate (a value used twice, a call on two values), a second
input, a parameter read directly, ``F.dropout`` (its ``training`` flag is fixed when traced: an ``nn.Dropout``
module follows ``.train()``/``.eval()``). When such a forward still holds a ``Linear -> ReLU -> Linear`` run of
its own submodules (OPT's decoder layer: ``fc1``, ``activation_fn``, ``fc2`` between attention, LayerNorms and
residual adds), the reason names it: that MLP is no module of its own, so there is nothing to swap.
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .convert_chain import NORMS, Chain, Refused, read_chain

_RELU = {torch.relu, torch.relu_, F.relu, F.relu_, "relu", "relu_"}
_ACTIVATIONS = {
    "gelu", "silu", "tanh", "sigmoid", "elu", "selu", "celu", "leaky_relu", "relu6", "hardswish", "hardtanh",
    "hardsigmoid", "mish", "softplus", "softsign", "glu", "prelu", "rrelu", "logsigmoid", "tanhshrink",
}  # fmt: skip
_NORM_FUNCTIONS = {"layer_norm", "batch_norm", "group_norm", "instance_norm", "rms_norm", "normalize"}


class _LeafTracer(torch.fx.Tracer):
    """Every submodule is a leaf: the graph shows which of the block's own modules its forward calls."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def is_block(module: nn.Module) -> bool:
    """A candidate attribute-style block: a user class (not torch's own) with a forward and a Linear child."""
    cls = type(module)
    if isinstance(module, nn.Sequential) or cls.__module__.startswith("torch."):
        return False
    if cls.forward is nn.Module.forward:  # a container: ModuleList, ModuleDict
        return False
    return any(isinstance(child, nn.Linear) for child in module.children())


def _function_name(node: torch.fx.Node) -> str:
    target = node.target
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


def _step(root: nn.Module, node: torch.fx.Node) -> tuple[str, nn.Module]:
    """The ``(position, module)`` step of one call, a ReLU function as an ``nn.ReLU``, or :class:`Refused`."""
    if node.op == "call_module":
        return node.target, root.get_submodule(node.target)
    name = _function_name(node)
    if node.target in _RELU:
        return f"{node.name}: {name}", nn.ReLU()
    if name in _ACTIVATIONS:
        raise Refused(f"calls {name} ({node.name}): a GLAIMLP's only activation is ReLU", "activation")
    if name in _NORM_FUNCTIONS:
        raise Refused(f"calls {name} ({node.name}): a GLAIMLP has no normalisation layers", "norm")
    if name in ("dropout", "dropout_"):
        raise Refused(
            f"calls {name} ({node.name}), a function whose training flag is fixed when traced: a GLAIMLP can "
            "take the rate of an nn.Dropout module, which follows .train() and .eval()"
        )
    what = "reads attribute" if node.op == "get_attr" else "calls"
    raise Refused(f"{what} {name} ({node.name}), which is no Linear, ReLU or Dropout", "chain")


def trace(module: nn.Module) -> torch.fx.Graph:
    """The module's forward, traced alone, or :class:`Refused` with the tracer's message."""
    try:
        return _LeafTracer().trace(module)
    except Exception as exc:  # noqa: BLE001 - any failure of the tracer is a reason to report, not to raise
        first = (str(exc).strip().splitlines() or [""])[0].split(". ")[0][:200]
        raise Refused(
            f"its forward could not be traced by torch.fx ({type(exc).__name__}: {first}){_held(module)}",
            "chain",
        ) from None


def _held(module: nn.Module) -> str:
    """What an untraceable module holds, when that looks like an MLP inside a larger forward (OPT's layer)."""
    linears = [name for name, m in module.named_children() if isinstance(m, nn.Linear)]
    relus = [name for name, m in module.named_children() if isinstance(m, nn.ReLU)]
    if len(linears) < 2 or not relus:
        return ""
    return (
        f"; it holds Linear layers {', '.join(linears)} and a ReLU ({', '.join(relus)}): if they form an MLP, it "
        "runs inside this larger forward, not in a module of its own, so there is nothing to swap (a module "
        "holding just that MLP would convert)"
    )


def _chain_steps(module: nn.Module, graph: torch.fx.Graph) -> list[tuple[str, nn.Module]]:
    nodes = [n for n in graph.nodes if not (n.op == "get_attr" and not n.users)]
    inputs = [n for n in nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise Refused(
            f"its forward takes {len(inputs)} inputs ({', '.join(n.target for n in inputs)}): a GLAIMLP takes one",
            "chain",
        )
    steps, previous = [], inputs[0]
    for node in nodes[1:]:
        values = node.all_input_nodes
        if node.op == "output":
            if values != [previous]:
                raise Refused(
                    f"its forward returns {node.args[0]}, not the last call's output alone", "chain"
                )
            break
        if values != [previous] or len(previous.users) != 1:
            raise Refused(
                f"{node.name} ({_function_name(node)}) takes {[v.name for v in values]} while "
                f"{previous.name} goes to {[u.name for u in previous.users]}: the forward is no chain of calls "
                "each on the previous call's output (a residual, a gate or a second input)",
                "chain",
            )
        steps.append(_step(module, node))
        previous = node
    return steps


def read_block(module: nn.Module, *, fold_batchnorm: bool = False) -> Chain:
    """The chain of an attribute-style block, or :class:`Refused` saying why it is none."""
    graph = trace(module)
    try:
        return read_chain(_chain_steps(module, graph), fold_batchnorm=fold_batchnorm)
    except Refused as exc:
        inner = _inner_mlp(module, graph)
        if inner is None or exc.kind not in ("chain", "single"):
            raise
        raise Refused(
            f"its forward runs {inner} inside a larger computation ({exc}): that MLP is no module of its own, "
            "so there is nothing to swap for a GLAIMLP (move it into a module of its own first)",
            "chain",
        ) from None


def _inner_mlp(module: nn.Module, graph: torch.fx.Graph) -> str | None:
    """``"fc1 -> activation_fn -> fc2"`` when the graph holds a Linear -> ReLU -> (Dropout) -> Linear run."""
    for node in graph.nodes:
        run = []
        while _kind(module, node) in ("linear", "relu", "dropout") and len(run) < 8:
            run.append(node)
            if len(node.users) != 1:
                break
            node = next(iter(node.users))
        kinds = [_kind(module, n) for n in run]
        if kinds[:2] == ["linear", "relu"] and "linear" in kinds[2:]:
            end = kinds.index("linear", 2)
            return " -> ".join(n.target if n.op == "call_module" else n.name for n in run[: end + 1])
    return None


def _kind(module: nn.Module, node: torch.fx.Node) -> str | None:
    if node.op == "call_module":
        sub = module.get_submodule(node.target)
        for kind, cls in (("linear", nn.Linear), ("relu", nn.ReLU), ("dropout", nn.Dropout)):
            if isinstance(sub, cls):
                return kind
        return "norm" if isinstance(sub, NORMS) else None
    if node.op in ("call_function", "call_method"):
        if node.target in _RELU:
            return "relu"
        if _function_name(node) == "dropout":
            return "dropout"
    return None
