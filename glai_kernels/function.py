"""The quantitative forward and backward of a whole GLAI stack, as one ``torch.autograd.Function``.

With the patterns fixed (DESIGN section 1, ``d`` the upstream gradient):

    h_l  = p_l * (W_l h_{l-1} + b_l)     l < L        y = W_L h_{L-1} + b_L
    dW_l = g_l^T h_{l-1},  db_l = sum_rows g_l,  g_{l-1} = (g_l W_l) * p_{l-1},  g_L = d,  dx = g_1 W_1

The Function saves the layer inputs ``h_{l-1}`` and the packed patterns (one bit a structural unit), never a
float mask. The per-layer work goes to the backend's ops (``reference`` or ``triton_ops``), which share one
signature, so the Function runs over either. :func:`glai_mlp`'s ``"torch"`` backend takes ``reference.stack``
instead, the same forward in plain differentiable ops: on a CPU its C++ backward and a single unpacking of the
gates per step make a step cost about what an MLP step does (it keeps float gates for the backward, not bits).
"""

from __future__ import annotations

import contextlib

import torch
from torch.autograd.function import once_differentiable

from . import backend as _backend
from . import reference
from .checks import check_devices, check_input, check_patterns, check_reduction, check_stack, match_dtypes

_NO_OP = contextlib.nullcontext()


def _ops(name: str):
    return reference if name == "torch" else _backend.triton_ops()


class GLAIStackFunction(torch.autograd.Function):
    """``forward(x, backend, reduction, n_layers, *weights, *biases, *patterns)`` on 2-d ``x``."""

    @staticmethod
    def forward(ctx, x, backend: str, reduction: int, n_layers: int, *tensors):
        ops = _ops(backend)
        weights, biases, patterns = (
            tensors[:n_layers],
            tensors[n_layers : 2 * n_layers],
            tensors[2 * n_layers :],
        )
        inputs = [x]
        h = x
        for i in range(n_layers):
            words = patterns[i] if i < n_layers - 1 else None
            h = ops.masked_forward(h, weights[i], biases[i], words, reduction)
            if i < n_layers - 1:
                inputs.append(h)
        ctx.save_for_backward(*inputs, *weights, *patterns)
        ctx.backend, ctx.reduction, ctx.n_layers = backend, reduction, n_layers
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        ops, r, n = _ops(ctx.backend), ctx.reduction, ctx.n_layers
        saved = ctx.saved_tensors
        inputs, weights, patterns = saved[:n], saved[n : 2 * n], saved[2 * n :]
        need = ctx.needs_input_grad
        need_w, need_b = need[4 : 4 + n], need[4 + n : 4 + 2 * n]
        grad_w, grad_b = [None] * n, [None] * n
        grad_x = None
        g = grad_out.contiguous()
        for i in reversed(range(n)):
            if need_w[i] or need_b[i]:
                dw, db = ops.backward_weights(g, inputs[i], need_b[i])
                grad_w[i] = dw if need_w[i] else None
                grad_b[i] = db
            if not (need[0] or any(need_w[:i]) or any(need_b[:i])):
                break  # nothing below layer i wants a gradient (frozen first layers): stop the data chain
            if i > 0:
                g = ops.backward_data(g, weights[i], patterns[i - 1], r)
            else:  # i == 0, reached only when x needs its gradient
                grad_x = ops.backward_data(g, weights[0], None, r)
        return (grad_x, None, None, None, *grad_w, *grad_b, *([None] * len(patterns)))


def glai_mlp(x, weights, biases, patterns, *, reduction: int = 1, backend: str = "auto") -> torch.Tensor:
    """Quantitative forward of a GLAI stack with fixed patterns, differentiable in ``x``, weights and biases.

    Args:
        x: input ``(*, in_features)``, floating point.
        weights: ``L`` tensors ``[n_l, n_{l-1}]`` (the last one is the ungated output layer).
        biases: ``None`` or ``L`` tensors ``[n_l]`` / ``None``.
        patterns: ``L - 1`` int32 tensors ``(*, ceil(n_l / reduction / 32))`` from :func:`pack_patterns`,
            at structural width: quantitative unit ``j`` reads bit ``j // reduction``.
        reduction: structural reduction factor ``r``; must divide every hidden width.
        backend: ``"auto"``, ``"torch"`` or ``"triton"``.

    Returns ``(*, out_features)``. No gradient flows to ``patterns``.
    """
    _backend.check_backend_name(backend)
    weights, biases = check_stack(weights, biases)
    check_input(x, weights[0].shape[1])
    hidden = [w.shape[0] for w in weights[:-1]]
    check_reduction(reduction, hidden)
    lead = tuple(x.shape[:-1])
    patterns = check_patterns(patterns, hidden, reduction, lead, x.device)
    check_devices(x, weights, biases)
    x, weights, biases = match_dtypes(x, weights, biases)
    name = _backend.resolve_backend(backend, x.device)
    x2 = x.reshape(-1, x.shape[-1])
    flat = [p.reshape(-1, p.shape[-1]) for p in patterns]
    # Autocast off inside (match_dtypes cast the operands already); entering the context costs microseconds of
    # host time a step, so it is entered only when autocast is on.
    off = torch.autocast(x.device.type, enabled=False) if torch.is_autocast_enabled(x.device.type) else _NO_OP
    with off:
        if name == "torch":  # autograd over plain ops: a C++ backward, gates unpacked once (reference.stack)
            y = reference.stack(x2, weights, biases, flat, reduction)
        else:
            y = GLAIStackFunction.apply(x2, name, reduction, len(weights), *weights, *biases, *flat)
    return y if x.dim() == 2 else y.reshape(*lead, y.shape[-1])


@torch.no_grad()
def structural_patterns(x, weights, biases=None, *, backend: str = "auto") -> list[torch.Tensor]:
    """Packed patterns ``(*, ceil(n_l / 32))`` of every layer of a structural ReLU stack.

    ``weights``/``biases`` are the structural net's hidden layers (the output layer gates nothing).
    """
    _backend.check_backend_name(backend)
    weights, biases = check_stack(weights, biases)
    check_input(x, weights[0].shape[1])
    check_devices(x, weights, biases)
    lead = tuple(x.shape[:-1])
    x, weights, biases = match_dtypes(x, weights, biases)
    ops = _ops(_backend.resolve_backend(backend, x.device))
    a = x.reshape(-1, x.shape[-1])
    out = []
    with torch.autocast(x.device.type, enabled=False):
        for w, b in zip(weights, biases):
            a, words = ops.gate(a, w, b)
            out.append(words.reshape(*lead, words.shape[-1]))
    return out
