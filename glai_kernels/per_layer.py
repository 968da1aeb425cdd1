"""The per-layer path: the quantitative forward and backward of a whole GLAI stack as one
``torch.autograd.Function``, each layer's work one launch of its own.

With the patterns fixed (docs/design.md section 1, ``d`` the upstream gradient):

    h_l  = p_l * (W_l h_{l-1} + b_l)     l < L        y = W_L h_{L-1} + b_L
    dW_l = g_l^T h_{l-1},  db_l = sum_rows g_l,  g_{l-1} = (g_l W_l) * p_{l-1},  g_L = d,  dx = g_1 W_1

The Function saves the layer inputs ``h_{l-1}`` and the packed patterns (one bit a structural unit), never a
float mask. The per-layer work goes to the backend's ops (``reference`` or ``per_layer_ops``), which share one
signature, so the Function runs over either. It is written in the ``setup_context`` style with a ``vmap`` rule,
so ``torch.func`` transforms (``grad``, ``vmap``, ``jacrev``) apply to it. The front door
(``glai_kernels.dispatch``) sends a call here on the ``"triton"`` backend only; on ``"torch"`` it takes
``reference.stack`` instead, the same forward in plain differentiable ops: on a CPU its C++
backward and a single unpacking of the gates per step make a step cost about what an MLP step does (it keeps
float gates for the backward, not bits), and torch.func and double backward work there natively.
"""

from __future__ import annotations

import torch

from . import backend as _backend
from . import reference
from .dropout import Draw, draw_seed, refuse_when_compiling, split_draw
from .eager import eager_apply
from .fallback import fall_back, is_resource_error, stack_case, strict
from .first_order import first_order
from .layout import unit_gates

_REFUSED: set = set()  # cases whose per-layer backward launch was refused (warned once each)


def _ops(name: str):
    return reference if name == "torch" else _backend.per_layer_ops()


def _split(tensors, n: int):
    """``*weights, *biases, *patterns`` of an ``n``-layer stack (``n - 1`` patterns)."""
    return tensors[:n], tensors[n : 2 * n], tensors[2 * n :]


class GLAIStackFunction(torch.autograd.Function):
    """``apply(x, backend, reduction, n_layers, *weights, *biases, *patterns)`` on 2-d ``x``.

    Returns ``(y, h_1, ..., h_{L-1})``: the output and the gated output of every hidden layer. The backward
    needs the hidden outputs (the inputs of layers ``2..L``); returning them is how ``setup_context`` gets to save
    them, which torch.func requires of a Function. ``glai_mlp`` keeps ``y`` only.

    torch.func: ``grad``, ``vjp``, ``jacrev`` and ``vmap`` work (the ``vmap`` rule folds the vmapped dimension
    into the rows, so both backends run it as one larger batch); forward mode (``jvp``, ``jacfwd``) is not
    implemented. Double backward works on the ``"torch"`` backend, whose backward is made of differentiable
    torch ops and takes the hidden outputs' gradients too, so the second-order terms through ``h_l`` are
    exact; on the ``"triton"`` backend it raises an error that says so.
    """

    @staticmethod
    def forward(x, backend: str, reduction: int, n_layers: int, *tensors):
        ops = _ops(backend)
        tensors, draw = split_draw(tensors)
        weights, biases, patterns = _split(tensors, n_layers)
        hidden = []
        h = x
        for i in range(n_layers):
            words = patterns[i] if i < n_layers - 1 else None
            drop = draw.of(i) if draw is not None and i < n_layers - 1 else None
            h = ops.masked_forward(h, weights[i], biases[i], words, reduction, drop)
            if i < n_layers - 1:
                hidden.append(h)
        return (h, *hidden)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, backend, reduction, n_layers, *tensors = inputs
        tensors, ctx.draw = split_draw(tuple(tensors))
        weights, _, patterns = _split(tensors, n_layers)
        # Saved: the layer inputs h_{l-1} (x and the hidden outputs) and one bit a unit, never a float mask.
        ctx.save_for_backward(x, *output[1:], *weights, *patterns)
        ctx.backend, ctx.reduction, ctx.n_layers = backend, reduction, n_layers
        # The hidden outputs are dropped by glai_mlp: their gradients stay None instead of zero tensors.
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad_y, *grad_hidden):
        if ctx.backend == "torch":
            return _backward(ctx, grad_y, grad_hidden)
        return _backward_once(ctx, grad_y, grad_hidden)

    @staticmethod
    def vmap(info, in_dims, x, backend, reduction, n_layers, *tensors):
        if split_draw(tensors)[1] is not None:
            raise NotImplementedError("vmap over a GLAI stack with dropout on the Triton kernels")
        weights, biases, patterns = _split(tensors, n_layers)
        dims = in_dims[4:]
        w_dims, p_dims = dims[: 2 * n_layers], dims[2 * n_layers :]
        size = info.batch_size
        if all(d is None for d in w_dims):
            # Rows are independent: a vmapped batch of [M, in] inputs is one [size * M, in] batch.
            xs = _leading(x, in_dims[0], size)
            rows = xs.shape[0] * xs.shape[1]
            flat = [_leading(p, d, size).reshape(rows, -1) for p, d in zip(patterns, p_dims)]
            out = GLAIStackFunction.apply(
                xs.reshape(rows, -1), backend, reduction, n_layers, *weights, *biases, *flat
            )
            return tuple(o.reshape(size, xs.shape[1], -1) for o in out), (0,) * len(out)
        # The weights differ along the vmapped dimension (e.g. an ensemble): one stack per entry.
        args = (x, *tensors)
        arg_dims = (in_dims[0], *dims)
        per_entry = [
            GLAIStackFunction.apply(
                *_entry(args[:1], arg_dims[:1], k),
                backend,
                reduction,
                n_layers,
                *_entry(args[1:], arg_dims[1:], k),
            )
            for k in range(size)
        ]
        out = tuple(torch.stack(parts) for parts in zip(*per_entry))
        return out, (0,) * len(out)


def _leading(t: torch.Tensor, dim, size: int) -> torch.Tensor:
    """``t`` with its vmapped dimension first (``size`` copies when it has none)."""
    return t.unsqueeze(0).expand(size, *t.shape) if dim is None else t.movedim(dim, 0)


def _entry(tensors, dims, k: int) -> list:
    return [t if d is None or t is None else t.select(d, k) for t, d in zip(tensors, dims)]


def _backward(ctx, grad_y, grad_hidden):
    """With ``G_l = dL/dz_l`` (``z_l = W_l h_{l-1} + b_l``): ``G_L = dy``, ``dW_l = G_l^T h_{l-1}``,
    ``db_l = sum_rows G_l``, ``G_{l-1} = (G_l W_l + dh_{l-1}) * p_{l-1}``, ``dx = G_1 W_1``; ``dh_l`` is the
    gradient reaching a hidden output directly (None except in double backward)."""
    ops, r, n, draw = _ops(ctx.backend), ctx.reduction, ctx.n_layers, ctx.draw
    saved = ctx.saved_tensors
    inputs, weights, patterns = saved[:n], saved[n : 2 * n], saved[2 * n :]
    need = ctx.needs_input_grad
    need_w, need_b = need[4 : 4 + n], need[4 + n : 4 + 2 * n]
    grad_w, grad_b = [None] * n, [None] * n
    grad_x = None
    g = None if grad_y is None else grad_y.contiguous()
    for i in reversed(range(n)):
        if g is not None and (need_w[i] or need_b[i]):
            dw, db = ops.backward_weights(g, inputs[i], need_b[i])
            grad_w[i] = dw if need_w[i] else None
            grad_b[i] = db
        if not (need[0] or any(need_w[:i]) or any(need_b[:i])):
            break  # nothing below layer i wants a gradient (frozen first layers): stop the data chain
        if i > 0:
            direct = grad_hidden[i - 1]
            drop = draw.of(i - 1) if draw is not None else None
            if direct is not None:
                gates = unit_gates(patterns[i - 1], direct.shape[-1], r, direct.dtype)
                direct = reference._drop(direct * gates, drop)
            if g is not None:
                g = ops.backward_data(g, weights[i], patterns[i - 1], r, drop)
                g = g if direct is None else g + direct
            else:
                g = direct
        elif g is not None:  # i == 0, reached only when x needs its gradient
            grad_x = ops.backward_data(g, weights[0], None, r)
    return (grad_x, None, None, None, *grad_w, *grad_b, *([None] * (len(patterns) + (draw is not None))))


def _backward_once(ctx, grad_y, grad_hidden):
    """The Triton backward: first order only (:mod:`glai_kernels.first_order`)."""
    with torch.no_grad():
        try:
            grads = _backward(ctx, grad_y, grad_hidden)
        except Exception as exc:  # a refused launch: this backward in PyTorch ops
            x, weights = ctx.saved_tensors[0], ctx.saved_tensors[ctx.n_layers : 2 * ctx.n_layers]
            case = stack_case([w.shape[0] for w in weights], x.dtype, x.device, "given")
            if case not in _REFUSED:
                fall_back(exc, case, "per-layer backward", "torch")
                _REFUSED.add(case)
            elif strict() or not is_resource_error(exc):
                raise
            ctx.backend = "torch"
            grads = _backward(ctx, grad_y, grad_hidden)
    return first_order(grads, (grad_y, *grad_hidden, *ctx.saved_tensors))


def run(x, weights, biases, patterns, reduction: int, dropout=None) -> torch.Tensor:
    """The stack's output on 2-d ``x`` through the per-layer Triton kernels, for a call the front door
    (``glai_kernels.dispatch``) checked and sent here: ``biases`` a list (``None`` entries where absent),
    ``dropout`` None or the checked rates. Raises what a refused launch raises (the front door falls back)."""
    tensors = (*weights, *biases, *patterns)
    if dropout is not None:
        refuse_when_compiling("per-layer Triton kernels")
        tensors += (Draw(dropout, draw_seed(x.device)),)
    return eager_apply(GLAIStackFunction, (x, "triton", reduction, len(weights)), tensors)[0]


def patterns(x, weights, biases, backend: str) -> list[torch.Tensor]:
    """Packed patterns ``(*, ceil(n_l / 32))`` of every layer of a structural ReLU stack on checked operands,
    through ``backend``'s gate (``"torch"``: the reference's, ``"triton"``: the per-layer gate kernel)."""
    ops = _ops(backend)
    lead = tuple(x.shape[:-1])
    a = x.reshape(-1, x.shape[-1])
    out = []
    with torch.autocast(x.device.type, enabled=False):
        for w, b in zip(weights, biases):
            a, words = ops.gate(a, w, b, relu_out=len(out) + 1 < len(weights))  # the last ReLU feeds nothing
            out.append(words.reshape(*lead, words.shape[-1]))
    return out
