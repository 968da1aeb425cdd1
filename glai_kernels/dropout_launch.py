"""Host side of the in-kernel dropout mask (``kernels/dropout.py``): the arguments a kernel launch takes, and
the mask materialised for tests and for the float64 reference."""

from __future__ import annotations

import torch

from .dropout import scale, threshold
from .kernels.dropout import keep_mask_kernel

_BLOCK = 32


def constexprs(p: float) -> dict:
    """The kernels' dropout constexprs for rate ``p`` (``DROP_T = 0``: no dropout, the code without it)."""
    return {"DROP_T": threshold(p), "DROP_SCALE": scale(p)} if p else {"DROP_T": 0, "DROP_SCALE": 1.0}


def keep_mask(seed: torch.Tensor, layer: int, rows: int, cols: int, p: float) -> torch.Tensor:
    """The float32 ``[rows, cols]`` mask (``0`` or ``1 / (1 - p)``) of hidden layer ``layer`` for ``seed``, on
    ``seed``'s device, computed by the kernels' own mask function."""
    if not isinstance(seed, torch.Tensor) or seed.dtype != torch.int64 or seed.numel() != 1:
        got = (
            f"{seed.dtype} of {seed.numel()} elements"
            if isinstance(seed, torch.Tensor)
            else type(seed).__name__
        )
        raise TypeError(
            f"seed must be a one-element int64 tensor (glai_kernels.dropout.draw_seed), got {got}"
        )
    out = torch.empty(rows, cols, dtype=torch.float32, device=seed.device)
    if rows and cols:
        grid = (-(-rows // _BLOCK), -(-cols // _BLOCK))
        keep_mask_kernel[grid](
            seed, out, rows, cols, layer, threshold(p) if p else 0, scale(p), BLOCK_M=_BLOCK, BLOCK_N=_BLOCK
        )
    return out


def fused_constexprs(rates, n_hidden: int) -> dict:
    """The fused kernels' per-layer dropout constexprs (``DROP_T`` 0 everywhere: no dropout code at all)."""
    parts = [constexprs(p) for p in (rates or (0.0,) * n_hidden)]
    return {"DROP_T": tuple(c["DROP_T"] for c in parts), "DROP_SCALE": tuple(c["DROP_SCALE"] for c in parts)}
