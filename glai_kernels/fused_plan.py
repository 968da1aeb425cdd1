"""What the fused path keeps per call signature: the verdict that it runs there, and its launches.

The front door (``glai_kernels.dispatch``) checks a call in full once per signature and keeps a
:class:`FusedPlan`. The plan builds each launch (``fused_launch.Forward``, ``GradData``, ``GradWeights``) from the tensors of the first step that
runs it, and keeps it. That is sound because the signature fixes the shape and strides of every operand a launch
sees: the casts under autocast and the flattening of leading dimensions give the same layout for the same
signature, and the outputs a launch allocates are row-major every time. Later steps allocate the outputs and
gather data pointers, nothing else; the upstream gradient's strides, which the signature does not fix, are read
at each backward. The backward's launches also depend on which inputs want a gradient (frozen first layers end
the data chain early, ``x`` may or may not want one): they are kept per ``needs_input_grad``.
"""

from __future__ import annotations

from .fused_table import FROM_STRUCTURE, GIVEN, STRUCTURAL  # noqa: F401  (the forward modes)

_LAUNCH = None


def launcher():
    """``glai_kernels.fused_launch``, imported at the first launch (it imports Triton)."""
    global _LAUNCH
    if _LAUNCH is None:
        from . import fused_launch

        _LAUNCH = fused_launch
    return _LAUNCH


def chain_ends(needs, n_layers: int) -> tuple[int, int, bool]:
    """``(lowest, first, need_dx)`` from ``FusedStackFunction``'s ``needs_input_grad``: ``first`` the lowest
    layer whose weight or bias wants a gradient (``n_layers`` when none does), ``lowest`` where the data chain
    ends (0 when ``x`` wants its gradient, else ``first``: frozen first layers stop it above them)."""
    L = n_layers
    need_w, need_b = needs[5 : 5 + L], needs[5 + L : 5 + 2 * L]
    first = next((i for i in range(L) if need_w[i] or need_b[i]), L)
    return (0 if needs[0] else first), first, bool(needs[0])


class FusedPlan:
    """The fused path's verdict for one call signature, and its launches once built."""

    __slots__ = ("mode", "reduction", "n_layers", "has_bias", "down", "_forward", "_backward")

    def __init__(self, mode: int, reduction: int, has_bias):
        self.mode, self.reduction = mode, reduction  # reduction 1 in the structural phase
        self.n_layers, self.has_bias = len(has_bias), tuple(has_bias)
        self.down = None  # the path this signature takes since a launch was refused ("triton": per-layer)
        self._forward: dict = {}  # dropout rates (None: none) -> Forward
        self._backward: dict = {}  # (needs_input_grad, dropout rates) -> _Backward

    def forward(self, x, weights, biases, extra_w, extra_b, draw=None) -> tuple:
        """``(y, *hidden)``, then the patterns made (modes ``STRUCTURAL``, ``FROM_STRUCTURE``); ``draw``: the
        step's dropout (``glai_kernels.dropout.Draw``) or None."""
        mode = self.mode
        patterns = extra_w if mode == GIVEN else None
        structure = (extra_w, extra_b) if mode == FROM_STRUCTURE else None
        rates, seed = (None, None) if draw is None else (draw.rates, draw.seed)
        launch = self._forward.get(rates)
        if launch is None:
            launch = launcher().Forward(
                x, weights, biases, mode, self.reduction, patterns, structure, dropout=rates
            )
            self._forward[rates] = launch
        y, hidden, words = launch.run(x, weights, biases, patterns, structure, seed=seed)
        return (y, *hidden) if mode == GIVEN else (y, *hidden, *words)

    def backward(self, ctx, grad_y) -> tuple:
        """``FusedStackFunction.backward``'s gradients, through this signature's launches."""
        needs, draw = ctx.needs_input_grad, ctx.draw
        rates, seed = (None, None) if draw is None else (draw.rates, draw.seed)
        b = self._backward.get((needs, rates))
        if b is None:
            # The arguments after the weights and biases: the extra tensors, and the draw when there is one.
            b = _Backward(needs, self.n_layers, len(needs) - 5 - 2 * self.n_layers)
            self._backward[(needs, rates)] = b
        L = self.n_layers
        saved = ctx.saved_tensors
        weights, words = saved[1 : L + 1], saved[2 * L :]
        grads, dx = [None] * (L - 1), None
        if b.lowest < L - 1:
            launch = b.grad_data
            if launch is None:
                launch = b.grad_data = launcher().GradData(
                    grad_y, weights, words, self.reduction, b.lowest, b.need_dx, dropout=rates
                )
            grads, dx = launch.run(grad_y, weights, words, seed=seed)
        if b.first == L:
            return (dx, *b.nothing)
        grads.append(grad_y)
        inputs = (saved[0], *saved[L + 1 : 2 * L])  # x, then the hidden outputs
        launch = b.grad_weights
        if launch is None:
            launch = b.grad_weights = launcher().GradWeights(grads, inputs, self.has_bias, b.first)
        dws, dbs = launch.run(grads, inputs)
        return (
            dx, None, None, None, None,
            *[d if n else None for d, n in zip(dws, b.need_w)],
            *[d if n else None for d, n in zip(dbs, b.need_b)],
            *b.tail,
        )  # fmt: skip


class _Backward:
    """A plan's backward for one ``needs_input_grad``: where the chain ends, and its launches once built."""

    __slots__ = ("lowest", "first", "need_dx", "need_w", "need_b", "tail", "nothing", "grad_data",
                 "grad_weights")  # fmt: skip

    def __init__(self, needs, n_layers: int, n_extra: int):
        L = n_layers
        self.lowest, self.first, self.need_dx = chain_ends(needs, L)
        self.need_w, self.need_b = needs[5 : 5 + L], needs[5 + L : 5 + 2 * L]
        self.tail = (None,) * n_extra
        self.nothing = (None,) * (4 + 2 * L + n_extra)  # every gradient after dx, when no layer wants one
        self.grad_data = self.grad_weights = None
