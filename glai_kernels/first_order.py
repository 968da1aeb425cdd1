"""Backward passes that are first order only, and say so when differentiated again.

The Triton backward kernels (per layer and fused) compute gradients without recording a graph: they are not
differentiable. When a caller records one anyway (``create_graph=True``, ``torch.func``), their results are
routed through :class:`FirstOrderOnly`, whose own backward raises a message naming the way out, instead of
autograd reading the missing second derivatives as zero or raising a generic error.
"""

from __future__ import annotations

import torch

UNSUPPORTED = (
    "double backward through the GLAI stack is supported on the 'torch' backend only: the 'triton' backward "
    "kernels (per layer and fused) are not differentiable (pass backend='torch' for second derivatives)"
)


class FirstOrderOnly(torch.autograd.Function):
    """Identity on gradients, whose backward raises :data:`UNSUPPORTED`. ``anchor`` is a tensor that requires
    grad, so the outputs hang off this node even though they were computed without grad."""

    generate_vmap_rule = True

    @staticmethod
    def forward(anchor, *grads):
        return tuple(g.clone() for g in grads)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(UNSUPPORTED)


def first_order(grads, tensors) -> tuple:
    """``grads`` of a backward computed under ``no_grad``, returned as they are unless grad mode is on (a graph
    of the backward is being recorded); then routed through :class:`FirstOrderOnly`, anchored on the first of
    ``tensors`` (the backward's inputs and saved tensors) that requires grad."""
    grads = tuple(grads)
    if not torch.is_grad_enabled():
        return grads
    anchors = [t for t in tensors if t is not None and t.requires_grad]
    live = [i for i, t in enumerate(grads) if t is not None]
    if not anchors or not live:
        return grads
    out = list(grads)
    for i, t in zip(live, FirstOrderOnly.apply(anchors[0], *[grads[i] for i in live])):
        out[i] = t
    return tuple(out)
