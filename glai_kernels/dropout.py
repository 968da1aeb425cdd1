"""Inverted dropout on the hidden activations of a GLAI stack: the rates, the seed of a step, and its masks.

``h_l`` (the gated output of hidden layer ``l``) becomes ``h_l * m_l / (1 - q_l)`` with ``q_l`` the layer's
rate and ``m_l`` a keep-mask drawn with probability ``1 - q_l`` per element, exactly as ``nn.Dropout(q_l)`` after
each ReLU. The pattern ``p_l`` stays the pre-dropout sign ``[z_l > 0]``: a dropped unit is a zeroed activation,
never a flipped bit. With the pattern and the mask fixed the stack is still linear in its weights, and the
gradients are those of docs/design.md section 1 with the gate ``p_l`` replaced by ``p_l m_l / (1 - q_l)``:

    g_{l-1} = (g_l W_l) * p_{l-1} * m_{l-1} / (1 - q_{l-1}),     dW_l = g_l^T h_{l-1}   (h the dropped input)

The ``"torch"`` backend draws its masks with ``torch.nn.functional.dropout`` (torch's own generator and
kernels). The Triton kernels draw them inside the kernel from one 64-bit seed a step (:func:`draw_seed`):
``keep(seed, layer, row, col) = philox(seed; col, row, layer, 0)[0] >> 1 >= round(p 2^31)`` (``kernels/dropout.py``), so
the backward regenerates the very bits of the forward from the same seed and no mask ever goes to memory. The
per-layer kernels and the fused ones use the same function, so the two Triton paths drop the same units for the
same seed. ``dropout_launch.keep_mask`` materialises a mask for tests and for the float64 reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

# The mask compares 31 random bits with a threshold: the keep rate is 1 - p to within 2**-31.
THRESHOLD_BITS = 31


def check_rates(dropout, n_hidden: int, what: str = "dropout") -> tuple[float, ...]:
    """``dropout`` (one rate, or one per hidden layer) as a tuple of ``n_hidden`` floats in ``[0, 1)``, or an
    error naming what was expected and what came."""
    if isinstance(dropout, (int, float)) and not isinstance(dropout, bool):
        rates = (dropout,) * n_hidden
    elif isinstance(dropout, Sequence) and not isinstance(dropout, str):
        if len(dropout) != n_hidden:
            raise ValueError(
                f"{what} must be one rate or one per hidden layer ({n_hidden}), got {len(dropout)} rates"
            )
        rates = tuple(dropout)
    else:
        raise TypeError(f"{what} must be a float or a sequence of floats, got {type(dropout).__name__}")
    for i, p in enumerate(rates):
        if isinstance(p, bool) or not isinstance(p, (int, float)):
            raise TypeError(f"{what}[{i}] must be a float, got {type(p).__name__}")
        if not 0 <= p < 1 or math.isnan(p):
            raise ValueError(
                f"{what} probability has to be in [0, 1) (1 would drop every unit), got {p} at layer {i}"
            )
    return tuple(float(p) for p in rates)


def active(rates) -> bool:
    """Whether any rate draws a mask (``None`` or all zeros: nothing is drawn, the old path runs)."""
    return rates is not None and any(rates)


def threshold(p: float) -> int:
    """The integer threshold of rate ``p``: a unit is kept when its 31 random bits are at least this."""
    return min(round(p * 2**THRESHOLD_BITS), 2**THRESHOLD_BITS - 1)


def scale(p: float) -> float:
    """What a kept unit is multiplied by: ``1 / (1 - p)`` (inverted dropout: the expectation is unchanged)."""
    return 1.0 / (1.0 - p)


def draw_seed(device: torch.device) -> torch.Tensor:
    """The seed of one step: one int64 drawn from torch's default generator for ``device``, as a tensor there.

    On CUDA this is a tiny kernel on the current stream that advances the device generator's Philox offset,
    as ``torch.nn.functional.dropout`` does: no host synchronisation (the kernels load the seed from device
    memory), and inside a CUDA graph the draw is captured with the generator's offset, so each replay draws a
    new seed. ``torch.manual_seed`` makes a run repeat its masks bit for bit.
    """
    return torch.randint(0, 2**62, (1,), dtype=torch.int64, device=device)


class Draw:
    """The dropout of one step on the Triton kernels: the rate of each hidden layer and the step's seed. The
    autograd Functions take it as a trailing argument and keep it for the backward, which regenerates the
    forward's masks from it."""

    __slots__ = ("rates", "seed")

    def __init__(self, rates: tuple[float, ...], seed: torch.Tensor):
        self.rates, self.seed = rates, seed

    def of(self, layer: int):
        """``(seed, layer, rate)`` of hidden layer ``layer`` as the ops' ``dropout=`` takes it, or None."""
        p = self.rates[layer]
        return (self.seed, layer, p) if p else None


def split_draw(tensors: tuple) -> tuple[tuple, Draw | None]:
    """An autograd Function's tensor arguments without their trailing :class:`Draw`, and the draw (or None)."""
    if tensors and type(tensors[-1]) is Draw:
        return tensors[:-1], tensors[-1]
    return tensors, None


def refuse_when_compiling(what: str) -> None:
    """Dropout on the Triton kernels runs eagerly (a CUDA graph captured from eager steps included: the seed is
    drawn on the device); ``torch.compile`` would have to trace the seed into each launch's custom op."""
    if torch.compiler.is_compiling():
        raise NotImplementedError(
            f"dropout > 0 on the {what} is not supported under torch.compile; compile with dropout=0, run "
            "eagerly, or use backend='torch' (F.dropout, which torch.compile handles)"
        )
