"""The quantitative network's first weights at ``freeze()``: a function-preserving widening of the structural
net (Net2WiderNet, Chen, Goodfellow and Shlens, 2016), or a fresh random start.

Widths: the structural net ``S`` is ``d -> m_1 -> ... -> m_{L-1} -> o`` and the quantitative net ``Q`` is
``d -> n_1 -> ... -> n_{L-1} -> o`` with ``n_l = r m_l``; quantitative unit ``j r + k`` (``k = 0 .. r-1``) is
gated by structural bit ``j``. Widening sets, with ``i`` a unit of layer ``l - 1`` and ``k'`` one of its copies:

    first layer:   W^Q_1[j r + k, :]          = W^S_1[j, :]                          b^Q_l[j r + k] = b^S_l[j]
    layer 2..L-1:  W^Q_l[j r + k, i r + k']   = a_l[j r + k, i, k'] W^S_l[j, i]
    output layer:  W^Q_L[c, i r + k']         = a_L[c, i, k'] W^S_L[c, i]            b^Q_L = b^S_L

with shares ``a >= 0``, ``sum_k' a[row, i, k'] = 1`` for every receiving row and input unit. The function is then
unchanged, by induction over the layers: if every copy of layer ``l - 1`` equals its structural unit,
``h^Q_{l-1}[i r + k'] = h^S_{l-1}[i]``, then for every copy ``k`` of unit ``j``

    z^Q_l[j r + k] = sum_i (sum_k' a_l[j r + k, i, k']) W^S_l[j, i] h^S_{l-1}[i] + b^S_l[j] = z^S_l[j],

and its gate is structural bit ``j``, ``[z^S_l[j] > 0]``, so ``h^Q_l[j r + k] = relu(z^S_l[j]) = h^S_l[j]``. The
first layer reads the same input as ``S``, and the output layer sums the copies back the same way. A layer after
a widened layer thus has both sides widened: its rows copy, its columns split.

Why a random split, and which. Copies of a unit share their incoming weights and bias, so they differ only
through their outgoing weights. With an equal split ``a = 1 / r`` they receive identical gradients forever and the
network stays ``m`` units wide. Net2WiderNet's split shares one vector ``a[i, :]`` across all receiving rows; then
copy ``k'`` of unit ``i`` receives ``a[i, k']`` times one common gradient, and Adam, which divides each coordinate
by its own running scale, cancels that factor: the copies would still move together. Here every receiving row draws
its own shares, so the copies' gradients are different sums, not multiples of one vector, and they drift apart
under any optimizer. The shares are uniform on the simplex (Dirichlet(1, ..., 1), i.e. normalised exponential
draws): no split is preferred, every share is positive, so no copy's weight exceeds the structural one or flips
its sign (no cancelling pairs of large weights), and the relative spread of a share, ``sqrt((r - 1) / (r + 1))``,
is large enough to separate the copies within a few steps (0.58 at r = 2, 0.77 at r = 4).

Randomness: every draw comes from the ``generator`` given (a CPU generator; values move to the weights' device
afterwards, so a seed gives the same network on any device); nothing here reads the global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

INITS = ("widen", "random")


def check_init(init) -> str:
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    return init


def _shares(rows: int, inputs: int, r: int, generator: torch.Generator) -> torch.Tensor:
    """``[rows, inputs, r]`` float64 shares, each ``[row, i, :]`` uniform on the simplex (sums to 1)."""
    u = torch.rand(rows, inputs, r, generator=generator, dtype=torch.float64)
    e = -torch.log1p(-u)  # Exp(1) draws: 1 - u is in (0, 1], so the log is finite
    return e / e.sum(dim=-1, keepdim=True)


def _split_columns(weight: torch.Tensor, r: int, generator: torch.Generator) -> torch.Tensor:
    """``W[row, i] -> W[row, i r + k'] = a[row, i, k'] W[row, i]`` in float64."""
    rows, inputs = weight.shape
    a = _shares(rows, inputs, r, generator)
    return (weight.double().unsqueeze(-1) * a).reshape(rows, inputs * r)


@torch.no_grad()
def widen(
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor | None],
    r: int,
    generator: torch.Generator,
) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """Weights and biases of ``Q`` from those of ``S`` (all ``L`` layers, output layer last), in ``S``'s dtype and
    device. ``r = 1`` returns copies of the same values and draws nothing."""
    if r == 1:
        return [w.detach().clone() for w in weights], [
            None if b is None else b.detach().clone() for b in biases
        ]
    last = len(weights) - 1
    new_w, new_b = [], []
    for i, (w, b) in enumerate(zip(weights, biases)):
        q = w.detach()
        if i < last:  # rows: every hidden unit j becomes r copies j r .. j r + r - 1
            q = q.repeat_interleave(r, dim=0)
            b = None if b is None else b.detach().repeat_interleave(r, dim=0)
        if i > 0:  # columns: each input unit's weight split among its r copies, every row its own shares
            q = _split_columns(q.cpu(), r, generator)
        new_w.append(q.to(dtype=w.dtype, device=w.device).contiguous())
        new_b.append(None if b is None else b.detach().to(dtype=w.dtype, device=w.device).clone())
    return new_w, new_b


@torch.no_grad()
def random_like_linear(
    shapes: Sequence[tuple[int, int]], bias: bool, generator: torch.Generator, dtype, device
) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """``nn.Linear``'s default initialisation (weights and biases uniform in ``+-1/sqrt(fan_in)``, which is what
    its Kaiming-uniform with ``a = sqrt(5)`` amounts to), drawn from ``generator`` on the CPU."""
    weights, biases = [], []
    for out_f, in_f in shapes:
        bound = 1.0 / math.sqrt(in_f) if in_f > 0 else 0.0
        w = torch.empty(out_f, in_f, dtype=torch.float32).uniform_(-bound, bound, generator=generator)
        weights.append(w.to(dtype=dtype, device=device))
        if bias:
            b = torch.empty(out_f, dtype=torch.float32).uniform_(-bound, bound, generator=generator)
            biases.append(b.to(dtype=dtype, device=device))
        else:
            biases.append(None)
    return weights, biases


def seeded_generator(tensors: Sequence[torch.Tensor | None]) -> torch.Generator:
    """A fresh CPU generator seeded from a hash of ``tensors`` (the structural weights): with ``generator=None``
    the same model always widens the same way, and the global RNG is left alone."""
    import hashlib

    h = hashlib.sha256()
    for t in tensors:
        if t is not None:
            h.update(t.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
    return torch.Generator().manual_seed(int.from_bytes(h.digest()[:8], "little") & ((1 << 63) - 1))
