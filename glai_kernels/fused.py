"""The fused head path: a whole GLAI stack in three launches per training step, in both phases.

One launch runs the forward of every layer for a block of rows (``kernels/fused_forward.py``); the backward is
one launch for the data-gradient chain and one for every layer's weight gradient (``kernels/fused_backward.py``).
Both phases go through :class:`FusedStackFunction`: the structural phase computes ``relu(z) = p z`` with
``p = [z > 0]`` and saves the packed ``p``, so its backward is the quantitative one.

**When it runs** is decided by the front door (``glai_kernels.dispatch``), once per call signature; its
verdict for this path is a :class:`~glai_kernels.fused_plan.FusedPlan`, which keeps each launch with its
stride arguments, so a step only allocates outputs and gathers pointers. The limits (the dispatch table,
``glai_kernels.fused_table``) are in ``docs/fused.md``. Eagerly the launches are called directly; under
``torch.compile`` each launch is one custom op (``torch.ops.glai.fused_forward``, ``fused_grad_data``,
``fused_grad_weights``) with a shape-only fake.
"""

from __future__ import annotations

import torch

from . import fused_table, reference
from .checks import match_dtypes
from .dropout import Draw, draw_seed, refuse_when_compiling, split_draw
from .eager import eager_apply
from .fallback import fall_back, stack_case
from .first_order import first_order
from .fused_plan import FROM_STRUCTURE, GIVEN, STRUCTURAL, FusedPlan, chain_ends
from .fused_plan import launcher as _launch
from .layout import PATTERN_DTYPE, words_for


# ----------------------------------------------------------------------------- running a plan
def run(plan: FusedPlan, x, weights, biases, patterns, structure, autocast, dropout=None):
    """The fused forward of a call whose verdict is ``plan``, ``x`` of any leading shape; ``dropout`` None or
    the checked rates of the hidden layers (at least one above 0). None where the launch was refused
    (``glai_kernels.fallback``): ``plan.down`` then names the path to run instead."""
    try:
        return _run(plan, x, weights, biases, patterns, structure, autocast, dropout)
    except Exception as exc:
        if torch.compiler.is_compiling():
            raise
        _refused(
            exc, plan, [w.shape[0] for w in weights], x.dtype if autocast is None else autocast, x.device
        )
        return None


def _refused(exc, plan: FusedPlan, widths, dtype, device) -> None:
    """A fused launch of ``plan`` raised ``exc``: re-raised unless it is a resource error outside strict mode;
    else one warning, and the signature goes to the per-layer path."""
    case = stack_case(widths, dtype, device, fused_table.MODE_NAMES[plan.mode])
    fall_back(exc, case, "fused", "per-layer")
    plan.down = "triton"


def _run(plan: FusedPlan, x, weights, biases, patterns, structure, autocast, dropout=None):
    mode, L = plan.mode, plan.n_layers
    biases = (None,) * L if biases is None else biases
    extra_w = patterns if mode == GIVEN else (structure[0] if mode == FROM_STRUCTURE else ())
    extra_b = structure[1] if mode == FROM_STRUCTURE else ()
    if autocast is not None:  # casts in the autograd graph: fp32 master weights get their gradients
        x, weights, biases = match_dtypes(x, list(weights), list(biases))
        if mode == FROM_STRUCTURE:
            extra_w = [w.to(autocast) for w in extra_w]
            extra_b = [b if b is None else b.to(autocast) for b in extra_b]
    x2 = x
    if x.dim() != 2:
        x2 = x.reshape(-1, x.shape[-1])
        if mode == GIVEN:
            extra_w = [p.reshape(-1, p.shape[-1]) for p in extra_w]
    flags = (mode, plan.reduction, L, None if torch.compiler.is_compiling() else plan)
    tensors = (*weights, *biases, *extra_w, *extra_b)
    if dropout is not None:  # the step's seed, drawn on the device: the backward regenerates the masks
        refuse_when_compiling("fused path")
        tensors += (Draw(dropout, draw_seed(x.device)),)
    if autocast is not None:
        with torch.autocast(x.device.type, enabled=False):
            y = eager_apply(FusedStackFunction, (x2, *flags), tensors)[0]
    else:
        y = eager_apply(FusedStackFunction, (x2, *flags), tensors)[0]
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], y.shape[-1])


# ----------------------------------------------------------------------------- the Function
class FusedStackFunction(torch.autograd.Function):
    """``apply(x, mode, reduction, n_layers, plan, *weights, *biases, *extra)`` on 2-d ``x``; ``extra`` is the
    patterns (``GIVEN``), nothing (``STRUCTURAL``) or the structure's weights then biases
    (``FROM_STRUCTURE``); ``plan`` the call's :class:`FusedPlan` eagerly (its launches), None while
    ``torch.compile`` traces (the launches are custom ops then). Returns ``(y, *hidden, *words)`` (words only
    when made here); only ``y`` is differentiable. Saves ``x``, the weights, the hidden outputs and the packed
    patterns: nothing else."""

    @staticmethod
    def forward(x, mode, reduction, n_layers, plan, *tensors):
        L = n_layers
        tensors, draw = split_draw(tensors)
        weights, biases, extra = tensors[:L], tensors[L : 2 * L], tensors[2 * L :]
        extra_w, extra_b = (extra[: L - 1], extra[L - 1 :]) if mode == FROM_STRUCTURE else (extra, ())
        if plan is not None and not torch.compiler.is_compiling():
            return plan.forward(x, weights, biases, extra_w, extra_b, draw)
        args = (x, list(weights), list(biases), list(extra_w), list(extra_b), mode, reduction)
        return tuple(_op("forward")(*args))

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, mode, reduction, L, plan = inputs[:5]
        tensors, ctx.draw = split_draw(inputs[5:])
        hidden = output[1:L]
        words = output[L:] if mode != GIVEN else tensors[2 * L :]
        ctx.mark_non_differentiable(*output[1:])
        ctx.save_for_backward(x, *tensors[:L], *hidden, *words)
        ctx.plan, ctx.n_layers, ctx.n_extra = plan, L, len(tensors) - 2 * L
        if plan is None:  # traced: the plan's backward is not used
            ctx.reduction = 1 if mode == STRUCTURAL else reduction
            ctx.has_bias = [b is not None for b in tensors[L : 2 * L]]

    @staticmethod
    def backward(ctx, grad_y, *_):
        # First order only (glai_kernels.first_order): the kernels record no graph of their own. Grad mode is
        # on only while a graph of this backward is recorded (create_graph=True, torch.func).
        if not torch.is_grad_enabled():
            return FusedStackFunction._grads(ctx, grad_y)
        with torch.no_grad():
            grads = FusedStackFunction._grads(ctx, grad_y)
        return first_order(grads, (grad_y, *ctx.saved_tensors))

    @staticmethod
    def _grads(ctx, grad_y):
        plan = ctx.plan
        if plan is not None and not torch.compiler.is_compiling():
            try:
                return plan.backward(ctx, grad_y)
            except Exception as exc:
                x, weights = ctx.saved_tensors[0], ctx.saved_tensors[1 : ctx.n_layers + 1]
                _refused(exc, plan, [w.shape[0] for w in weights], x.dtype, x.device)
                return torch_grads(ctx, grad_y, plan)
        # Traced (torch.compile, compiled autograd): the launches as custom ops.
        L = ctx.n_layers
        r, has_b = (ctx.reduction, ctx.has_bias) if plan is None else (plan.reduction, plan.has_bias)
        saved = ctx.saved_tensors
        x, weights, hidden, words = (
            saved[0],
            list(saved[1 : L + 1]),
            list(saved[L + 1 : 2 * L]),
            list(saved[2 * L :]),
        )
        need = ctx.needs_input_grad
        lowest, first, need_dx = chain_ends(need, L)
        need_w, need_b = need[5 : 5 + L], need[5 + L : 5 + 2 * L]
        grads, dx = [None] * (L - 1), None
        if lowest < L - 1:
            res = _op("grad_data")(grad_y, weights, words, r, lowest, need_dx)
            grads[lowest:] = res[: L - 1 - lowest]
            dx = res[-1] if need_dx else None
        dws, dbs = [None] * L, [None] * L
        if first < L:
            res = _op("grad_weights")(grads[first:] + [grad_y], [x, *hidden], list(has_b), first)
            dws[first:] = res[: L - first]
            it = iter(res[L - first :])
            dbs = [next(it) if i >= first and has_b[i] else None for i in range(L)]
        dws = [d if need_w[i] else None for i, d in enumerate(dws)]
        dbs = [d if need_b[i] else None for i, d in enumerate(dbs)]
        return (dx, None, None, None, None, *dws, *dbs, *([None] * ctx.n_extra))


def torch_grads(ctx, grad_y, plan: FusedPlan) -> tuple:
    """``FusedStackFunction.backward``'s gradients in PyTorch ops from what the forward saved (the path a
    refused backward launch falls to): ``G_L = dy``, ``dW_l = G_l^T h_{l-1}``, ``db_l = sum_rows G_l``,
    ``G_{l-1} = (G_l W_l) * p_{l-1}``, ``dx = G_1 W_1``."""
    L, r = plan.n_layers, plan.reduction
    saved = ctx.saved_tensors
    weights, inputs, words = saved[1 : L + 1], (saved[0], *saved[L + 1 : 2 * L]), saved[2 * L :]
    needs = ctx.needs_input_grad
    lowest, first, need_dx = chain_ends(needs, L)
    need_w, need_b = needs[5 : 5 + L], needs[5 + L : 5 + 2 * L]
    dws, dbs, dx, g = [None] * L, [None] * L, None, grad_y
    for i in reversed(range(L)):
        if i >= first and (need_w[i] or need_b[i]):
            dw, db = reference.backward_weights(g, inputs[i], plan.has_bias[i] and need_b[i])
            dws[i] = dw if need_w[i] else None
            dbs[i] = db
        if i == 0:
            dx = reference.backward_data(g, weights[0], None, r) if need_dx else None
        elif i - 1 >= lowest:
            g = reference.backward_data(g, weights[i], words[i - 1], r)
        else:
            break
    return (dx, None, None, None, None, *dws, *dbs, *([None] * ctx.n_extra))


# ----------------------------------------------------------------------------- launches as ops
def _forward_impl(x, weights, biases, extra, extra_biases, mode, reduction):
    fl = _launch()
    patterns = extra if mode == GIVEN else None
    structure = (extra, extra_biases) if mode == FROM_STRUCTURE else None
    y, hidden, words = fl.forward(x, weights, biases, mode, reduction, patterns, structure)
    return [y, *hidden] + ([] if mode == GIVEN else list(words))


def _grad_data_impl(dy, weights, words, reduction, lowest, need_dx):
    grads, dx = _launch().grad_data(dy, weights, words, reduction, lowest, need_dx)
    return grads[lowest:] + ([dx] if need_dx else [])


def _grad_weights_impl(grads, inputs, has_bias, first):
    full = [None] * first + list(grads)
    dws, dbs = _launch().grad_weights(full, inputs, has_bias, first)
    return dws[first:] + [d for d in dbs[first:] if d is not None]


_IMPLS = {"forward": _forward_impl, "grad_data": _grad_data_impl, "grad_weights": _grad_weights_impl}


def _op(name: str):
    """The launch itself eagerly; the registered custom op (one opaque graph node) under torch.compile."""
    if torch.compiler.is_compiling():
        return getattr(torch.ops.glai, "fused_" + name)
    return _IMPLS[name]


@torch.library.custom_op(
    "glai::fused_forward",
    mutates_args=(),
    schema="(Tensor x, Tensor[] weights, Tensor?[] biases, Tensor[] extra, Tensor?[] extra_biases, int mode, "
    "int reduction) -> Tensor[]",
)
def _forward_op(x, weights, biases, extra, extra_biases, mode, reduction):
    return _forward_impl(x, weights, biases, extra, extra_biases, mode, reduction)


@_forward_op.register_fake
def _(x, weights, biases, extra, extra_biases, mode, reduction):
    M = x.shape[0]
    hidden = [w.shape[0] for w in weights[:-1]]
    out = [x.new_empty(M, weights[-1].shape[0])] + [x.new_empty(M, n) for n in hidden]
    if mode == GIVEN:
        return out
    s_n = hidden if mode == STRUCTURAL else [w.shape[0] for w in extra]
    return out + [x.new_empty(M, words_for(n), dtype=PATTERN_DTYPE) for n in s_n]


@torch.library.custom_op(
    "glai::fused_grad_data",
    mutates_args=(),
    schema="(Tensor dy, Tensor[] weights, Tensor[] words, int reduction, int lowest, bool need_dx) -> Tensor[]",
)
def _grad_data_op(dy, weights, words, reduction, lowest, need_dx):
    return _grad_data_impl(dy, weights, words, reduction, lowest, need_dx)


@_grad_data_op.register_fake
def _(dy, weights, words, reduction, lowest, need_dx):
    M = dy.shape[0]
    out = [dy.new_empty(M, w.shape[0]) for w in weights[lowest:-1]]
    return out + ([dy.new_empty(M, weights[0].shape[1])] if need_dx else [])


@torch.library.custom_op(
    "glai::fused_grad_weights",
    mutates_args=(),
    schema="(Tensor[] grads, Tensor[] inputs, bool[] has_bias, int first) -> Tensor[]",
)
def _grad_weights_op(grads, inputs, has_bias, first):
    return _grad_weights_impl(grads, inputs, has_bias, first)


@_grad_weights_op.register_fake
def _(grads, inputs, has_bias, first):
    L = len(inputs)
    dws = [g.new_empty(g.shape[1], inputs[i].shape[1]) for i, g in zip(range(first, L), grads)]
    return dws + [g.new_empty(g.shape[1]) for i, g in zip(range(first, L), grads) if has_bias[i]]
