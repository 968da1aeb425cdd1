"""The PyTorch reference of every GLAI op: the ``"torch"`` backend and the ground truth of the kernel tests.

Each function is one kernel of docs/design.md section 4 with the same signature as its Triton twin, so the autograd
Function runs over either. Gates multiply (``p * z``) rather than select, so a NaN or inf entering a closed
unit still propagates, exactly as the formula and ``nn.Linear`` + ReLU do.

:func:`stack` is the ``"torch"`` backend of a whole training step: the same forward written with differentiable
ops, so that autograd runs the backward in C++ as it does for an MLP, and the gates of each layer are unpacked
once per step instead of again in the backward. The price is memory: it keeps the float gates of every hidden
layer for the backward (``B x n_l`` values, as large as that layer's activation), where the autograd Function
over the per-op functions keeps one bit a structural unit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .layout import gates_of, pack_patterns, unit_gates


def gate(a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, relu_out: bool = True):
    """One structural layer: ``relu(a W^T + b)`` (None unless ``relu_out``) and the packed pattern of the
    units that fire."""
    z = F.linear(a, weight, bias)
    return (torch.relu(z) if relu_out else None), pack_patterns(z > 0)


def masked_forward(
    h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, words, reduction: int, dropout=None
):
    """``p * (h W^T + b)``; ``words=None`` means an ungated (output) layer. ``dropout``: None, or ``(seed,
    layer, rate)``: the result is then multiplied by the Triton kernels' mask of hidden layer ``layer``
    (``glai_kernels.dropout_launch.keep_mask``, which needs Triton)."""
    z = F.linear(h, weight, bias)
    if words is not None:
        # z is a fresh temporary here (ops run without autograd), so the gates multiply in place.
        z.mul_(unit_gates(words, weight.shape[0], reduction, z.dtype))
    return _drop(z, dropout)


def backward_data(g: torch.Tensor, weight: torch.Tensor, words, reduction: int, dropout=None):
    """``(g W) * p_prev``: the gradient reaching the previous layer's output; ``words=None`` for ``dx``.
    ``dropout``: ``(seed, layer, rate)`` of the previous layer (its forward's mask), or None."""
    d = g @ weight
    if words is not None:
        d.mul_(unit_gates(words, weight.shape[1], reduction, d.dtype))
    return _drop(d, dropout)


def _drop(t: torch.Tensor, dropout) -> torch.Tensor:
    if dropout is None or not dropout[2]:
        return t
    from .dropout_launch import keep_mask

    seed, layer, p = dropout
    return t.mul_(keep_mask(seed, layer, t.shape[0], t.shape[1], p).to(t.dtype))


def backward_weights(g: torch.Tensor, h: torch.Tensor, need_bias: bool):
    """``dW = g^T h`` and ``db = sum_rows g`` (``None`` when no bias)."""
    dw = g.t() @ h
    db = g.sum(dim=0) if need_bias else None
    return dw, db


# torch's own test for an active torch.func transform; without it (another torch), always out of place.
_transforms_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: True)


def stack(x: torch.Tensor, weights, biases, patterns, reduction: int, drop=None) -> torch.Tensor:
    """``y`` of the whole quantitative stack on 2-d ``x``, differentiable by autograd in ``x``, weights and biases.

    ``drop``: None, or per hidden layer the dropout applied to its gated output ``h_l``: ``0``/None (none), a
    rate ``p`` (``F.dropout``, torch's generator) or a float mask tensor (``0`` or ``1 / (1 - p)``, e.g. the
    Triton kernels' mask from ``glai_kernels.dropout_launch.keep_mask``) that ``h_l`` is multiplied by.

    The same products as :func:`masked_forward` layer by layer, so forward and gradients equal those of the
    autograd Function over the per-op functions bit for bit: ``dW_l = g_l^T h_{l-1}`` by ``AddmmBackward``, and
    ``g_l = (g_{l+1} W_{l+1}) * p_l`` by the multiply's backward, which reads the gates saved here.
    """
    h = x
    last = len(weights) - 1
    for i, (w, b) in enumerate(zip(weights, biases)):
        h = F.linear(h, w, b)
        if i < last:
            # In place: the linear's backward keeps its input and weight, not this output, so autograd allows
            # it, and the multiply's backward keeps only the gates. The caller (glai_mlp) checked the patterns.
            # Under a torch.func transform the gates may be batched where h is not: out of place there.
            gates = gates_of(patterns[i], w.shape[0], reduction, h.dtype)
            h = h * gates if _transforms_active() else h.mul_(gates)
            if drop is not None and drop[i] is not None:
                h = _dropped(h, drop[i])
    return h


def _dropped(h: torch.Tensor, d) -> torch.Tensor:
    """``h`` after dropout ``d``: a rate (``F.dropout``, training mode) or a float mask to multiply by."""
    if isinstance(d, torch.Tensor):
        return h * d.to(h.dtype)
    return F.dropout(h, d, True) if d else h
