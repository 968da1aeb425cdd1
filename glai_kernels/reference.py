"""The PyTorch reference of every GLAI op: the ``"torch"`` backend and the ground truth of the kernel tests.

Each function is one kernel of DESIGN section 4 with the same signature as its Triton twin, so the autograd
Function runs over either. Gates multiply (``p * z``) rather than select, so a NaN or inf entering a closed
unit still propagates, exactly as the formula and ``nn.Linear`` + ReLU do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .layout import pack_patterns, unit_gates


def gate(a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, relu_out: bool = True):
    """One structural layer: ``relu(a W^T + b)`` (None unless ``relu_out``) and the packed pattern of the
    units that fire."""
    z = F.linear(a, weight, bias)
    return (torch.relu(z) if relu_out else None), pack_patterns(z > 0)


def masked_forward(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, words, reduction: int):
    """``p * (h W^T + b)``; ``words=None`` means an ungated (output) layer."""
    z = F.linear(h, weight, bias)
    if words is None:
        return z
    # z is a fresh temporary here (ops run without autograd), so the gates multiply in place.
    return z.mul_(unit_gates(words, weight.shape[0], reduction, z.dtype))


def backward_data(g: torch.Tensor, weight: torch.Tensor, words, reduction: int):
    """``(g W) * p_prev``: the gradient reaching the previous layer's output; ``words=None`` for ``dx``."""
    d = g @ weight
    if words is None:
        return d
    return d.mul_(unit_gates(words, weight.shape[1], reduction, d.dtype))


def backward_weights(g: torch.Tensor, h: torch.Tensor, need_bias: bool):
    """``dW = g^T h`` and ``db = sum_rows g`` (``None`` when no bias)."""
    dw = g.t() @ h
    db = g.sum(dim=0) if need_bias else None
    return dw, db
