"""``GLAIMLP``: a drop-in replacement for a ReLU MLP that trains in two phases.

Structural phase: the block *is* a ReLU MLP ``S`` (hidden widths ``n_l / r``). ``freeze()`` copies the hidden
layers of ``S`` into frozen buffers that from then on only produce activation patterns, and the trainable layers
become the quantitative network ``Q``:

    h_l = p_l(x) * (W_l h_{l-1} + b_l),    y = W_L h_{L-1} + b_L

With ``reduction=1``, ``Q`` *is* ``S`` and the function is unchanged at the freeze, since
``relu(z) = 1[z > 0] z``. With ``reduction=r > 1``, ``Q`` is full width and starts, by default, as a
function-preserving widening of ``S`` (``glai.widen``), so the function is unchanged there too. Either way the
trainable ``Parameter`` objects stay the same (resized in place when ``r > 1``, ``glai.resize``): an optimizer
built before the freeze keeps training them, once ``freeze(optimizer=...)`` has dropped its state of the old shape.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from glai_kernels import words_for
from glai_kernels.backend import check_backend_name
from glai_kernels.checks import check_input, check_reduction, match_dtypes
from glai_kernels.dispatch import (
    check_fused_request,
    frozen_mlp,
    glai_mlp,
    structural_mlp,
    structural_patterns,
)
from glai_kernels.dropout import active, check_rates

from . import resize, widen
from .convert_mlp import MLPConversion
from .phases import PHASES, PhaseError

# How Q starts at an r > 1 freeze when freeze() is not told: see freeze() and bench/results/experiments.
DEFAULT_INIT = "widen"


def check_glaimlp(model, what: str) -> None:
    """Raise a TypeError unless ``model`` is a :class:`GLAIMLP`, naming the wrapped one when it is wrapped."""
    if isinstance(model, GLAIMLP):
        return
    hint = ""
    for attr in ("module", "_orig_mod"):  # (Distributed)DataParallel, torch.compile
        if isinstance(getattr(model, attr, None), GLAIMLP):
            hint = f": pass the GLAIMLP inside the wrapper, model.{attr}"
    raise TypeError(f"{what} expects a GLAIMLP, got {type(model).__name__}{hint}")


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return value


def _hidden_widths(hidden_features, depth) -> tuple[int, ...]:
    if isinstance(hidden_features, Sequence) and not isinstance(hidden_features, str):
        if depth is not None and depth != len(hidden_features):
            raise ValueError(
                f"depth={depth} disagrees with the {len(hidden_features)} widths in hidden_features"
            )
        if len(hidden_features) == 0:
            raise ValueError(
                "hidden_features must name at least one hidden layer (depth >= 1), got an empty sequence"
            )
        return tuple(_positive_int(n, f"hidden_features[{i}]") for i, n in enumerate(hidden_features))
    width = _positive_int(hidden_features, "hidden_features")
    return (width,) * _positive_int(1 if depth is None else depth, "depth")


def _rates_repr(rates: tuple[float, ...]):
    return rates[0] if len(set(rates)) == 1 else list(rates)


class FrozenStructure(nn.Module):
    """The hidden layers of the structural net after the freeze, as buffers: they get no gradient and are
    no parameters, but they move with ``.to()`` and live in the ``state_dict``."""

    def __init__(self, widths: Sequence[int], bias: bool, device=None, dtype=None):
        super().__init__()
        self.widths = tuple(widths)
        for i, (n_in, n_out) in enumerate(zip(self.widths[:-1], self.widths[1:])):
            self.register_buffer(f"weight{i}", torch.empty(n_out, n_in, device=device, dtype=dtype))
            self.register_buffer(f"bias{i}", torch.empty(n_out, device=device, dtype=dtype) if bias else None)

    # Read from the buffer dict: nn.Module's attribute lookup costs about a microsecond a name, every step.
    @property
    def weights(self) -> list[torch.Tensor]:
        return [self._buffers[f"weight{i}"] for i in range(len(self.widths) - 1)]

    @property
    def biases(self) -> list[torch.Tensor | None]:
        return [self._buffers[f"bias{i}"] for i in range(len(self.widths) - 1)]

    def extra_repr(self) -> str:
        return f"widths={list(self.widths)}"


class GLAIMLP(MLPConversion, nn.Module):
    """A GLAI block: ``in_features -> hidden_features -> out_features`` with ReLU patterns that freeze.

    Args:
        in_features: size of each input sample.
        hidden_features: hidden widths, a sequence, or one int repeated ``depth`` times.
        out_features: size of each output sample.
        depth: number of hidden layers when ``hidden_features`` is an int (default 1).
        reduction: the structural net has hidden widths ``n_l / reduction``; structural unit ``j`` gates
            quantitative units ``j*r .. j*r + r - 1``. Must divide every hidden width.
        bias: whether every layer has a bias.
        backend: ``"auto"`` (Triton on CUDA when available, else PyTorch), ``"torch"`` or ``"triton"``.
        fused: ``None`` trains both phases through the fused head path (a whole step in three launches) when
            the backend resolves to ``"triton"`` and the widths fit (``glai_kernels.dispatch``), and through the
            per-layer path (``nn.Linear`` + ReLU in the structural phase) otherwise; ``True`` forces it (a
            ValueError names the limit where it cannot); ``False`` never takes it.
        dropout: inverted dropout on the hidden activations, one rate or one per hidden layer, in ``[0, 1)``:
            like ``nn.Dropout(p)`` after each ReLU, in both phases, on every path, and off in ``eval()``. The
            patterns are the pre-dropout signs: dropout zeroes activations, it never flips a pattern bit. The
            structural net that makes the patterns in the quantitative phase runs without it. ``0`` (the
            default) draws nothing and runs exactly the code without dropout.

    Shape: input ``(*, in_features)``, output ``(*, out_features)``; patterns ``(*, ceil(n_l / r / 32))`` int32.

    From and to a plain ReLU MLP: ``GLAIMLP.from_mlp(mlp)``, ``model.to_mlp()`` and ``model.to_mlp_class``, defined
    in :class:`glai.convert_mlp.MLPConversion`.
    """

    # Class defaults: a model pickled whole before dropout existed unpickles without these attributes.
    _dropout: tuple = ()
    _drops = False

    def __init__(
        self,
        in_features: int,
        hidden_features: int | Sequence[int],
        out_features: int,
        *,
        depth: int | None = None,
        reduction: int = 1,
        bias: bool = True,
        backend: str = "auto",
        fused: bool | None = None,
        dropout: float | Sequence[float] = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.in_features = _positive_int(in_features, "in_features")
        self.hidden_features = _hidden_widths(hidden_features, depth)
        self.out_features = _positive_int(out_features, "out_features")
        check_reduction(reduction, self.hidden_features)
        self.reduction = reduction
        self.bias = bool(bias)
        self.backend = check_backend_name(backend)
        check_fused_request(fused, self.hidden_features, [n // reduction for n in self.hidden_features])
        self.fused = fused
        self.dropout = check_rates(dropout, len(self.hidden_features))
        self.layers = self._make_layers(self.structural_widths, device=device, dtype=dtype)
        self.register_module("structure", None)  # the frozen structure once frozen: it alone says the phase

    # ----------------------------------------------------------------- shape bookkeeping
    @property
    def phase(self) -> str:
        """``"structural"`` or ``"quantitative"``."""
        return "structural" if self.structure is None else "quantitative"

    @property
    def depth(self) -> int:
        return len(self.hidden_features)

    @property
    def structural_widths(self) -> tuple[int, ...]:
        """Hidden widths of the structural net, ``n_l / reduction``: the number of pattern bits per layer."""
        return tuple(n // self.reduction for n in self.hidden_features)

    @property
    def pattern_words(self) -> tuple[int, ...]:
        """int32 words per sample of each layer's packed pattern."""
        return tuple(words_for(n) for n in self.structural_widths)

    def _make_layers(self, hidden: Sequence[int], device=None, dtype=None) -> nn.ModuleList:
        widths = (self.in_features, *hidden, self.out_features)
        return nn.ModuleList(
            nn.Linear(a, b, bias=self.bias, device=device, dtype=dtype)
            for a, b in zip(widths[:-1], widths[1:])
        )

    def _factory(self) -> dict:
        w = self.layers[0].weight
        return {"device": w.device, "dtype": w.dtype}

    def reset_parameters(self) -> None:
        """Re-initialise the trainable layers (``S`` before the freeze, ``Q`` after) as ``nn.Linear`` does."""
        for layer in self.layers:
            layer.reset_parameters()

    # ----------------------------------------------------------------- phases
    def freeze(self, *, init: str | None = None, generator=None, optimizer=None) -> GLAIMLP:
        """End the structural phase: keep ``S``'s hidden layers as the frozen structure, train ``Q`` from now on.

        Args:
            init: how ``Q`` starts. ``"widen"`` (the default): as ``S`` widened without changing its function
                (with ``reduction=1``, ``Q`` is ``S`` and nothing is drawn); quantitative unit ``j*r + k`` copies
                structural unit ``j`` and the outgoing weights of the copies are split at random so that they
                sum to ``S``'s (see ``glai.widen``). ``"random"``: ``nn.Linear``'s initialisation, at any ``r``.
            generator: a ``torch.Generator`` for the random numbers of the split or of ``"random"``. ``None``: a
                fresh generator seeded from a hash of ``S``'s weights, so the same model always gives the same
                ``Q``. The global RNG is never read. Nothing is drawn with ``reduction=1`` and ``"widen"``.
            optimizer: a ``torch.optim.Optimizer`` holding this model's parameters; its per-parameter state for
                every parameter that changed (all of them when ``reduction > 1`` or ``init="random"``) is dropped,
                so it starts them afresh. Without it, a state of the old shape stops the next step with an error.

        The trainable ``Parameter`` objects are kept either way (resized in place when ``reduction > 1``); a
        ``DistributedDataParallel`` wrapper, whose buckets were sized at construction, must be rebuilt then.
        """
        if self.phase == "quantitative":
            raise PhaseError("freeze() was already called: the model is in the quantitative phase")
        init = widen.check_init(DEFAULT_INIT if init is None else init)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}"
            )
        weights = [m.weight for m in self.layers]
        biases = [m.bias for m in self.layers]
        changed = self.reduction > 1 or init == "random"
        if changed and generator is None:
            generator = widen.seeded_generator(weights + biases)
        if init == "widen":
            new_w, new_b = (
                widen.widen(weights, biases, self.reduction, generator) if changed else (None, None)
            )
        else:
            shapes = [(b, a) for a, b in zip(self._widths()[:-1], self._widths()[1:])]
            new_w, new_b = widen.random_like_linear(shapes, self.bias, generator, **self._factory())
        hidden = list(self.layers[:-1])
        self.structure = FrozenStructure(
            (self.in_features, *self.structural_widths), self.bias, **self._factory()
        )
        self._set_structure(hidden)
        if changed:
            self._resize(new_w, new_b)
            if optimizer is not None:
                resize.reset_state(optimizer, self.parameters())
        return self

    @torch.no_grad()
    def _set_structure(self, hidden: Sequence[nn.Linear]) -> None:
        for w, b, layer in zip(self.structure.weights, self.structure.biases, hidden):
            w.copy_(layer.weight)
            if b is not None:
                b.copy_(layer.bias)

    def refreeze(self) -> GLAIMLP:
        """Take the frozen structure again from the current quantitative hidden weights (``reduction=1`` only).

        Patterns then follow what ``Q`` has learnt since the freeze; the function is unchanged at the refresh,
        as at the freeze. Caches built before it no longer match ``structure_digest()`` and must be rebuilt.
        """
        if self.phase != "quantitative":
            raise PhaseError("refreeze() needs a frozen model: call freeze() first")
        if self.reduction != 1:
            raise PhaseError(
                f"refreeze() needs reduction 1: with reduction={self.reduction} the quantitative layers are "
                "wider than the structure they would replace"
            )
        self._set_structure(self.layers[:-1])
        return self

    def _widths(self, hidden: Sequence[int] | None = None) -> tuple[int, ...]:
        hidden = self.hidden_features if hidden is None else hidden
        return (self.in_features, *hidden, self.out_features)

    def _resize(self, weights, biases) -> None:
        """Give every trainable layer new values, resized in place (the ``Parameter`` objects stay)."""
        for layer, w, b in zip(self.layers, weights, biases):
            resize.resize_(layer.weight, w)
            if b is not None:
                resize.resize_(layer.bias, b)
            layer.out_features, layer.in_features = w.shape

    def _resize_empty(self, hidden: Sequence[int]) -> None:
        # Zeros rather than uninitialised memory: what a checkpoint leaves out stays defined.
        widths, factory = self._widths(hidden), self._factory()
        weights = [torch.zeros(b, a, **factory) for a, b in zip(widths[:-1], widths[1:])]
        biases = [torch.zeros(b, **factory) if self.bias else None for b in widths[1:]]
        self._resize(weights, biases)

    def _become_quantitative(self) -> None:
        factory = self._factory()
        self.structure = FrozenStructure((self.in_features, *self.structural_widths), self.bias, **factory)
        if self.reduction > 1:
            self._resize_empty(self.hidden_features)

    def _become_structural(self) -> None:
        if self.reduction > 1:
            self._resize_empty(self.structural_widths)
        self.structure = None

    def get_extra_state(self) -> dict:
        return {"phase": self.phase}

    def set_extra_state(self, state) -> None:
        # Called before the children load, so reshaping here lets the checkpoint's tensors land in place.
        phase = state.get("phase") if isinstance(state, dict) else None
        if phase not in PHASES:
            raise ValueError(f"GLAIMLP state must name a phase in {PHASES}, got {state!r}")
        if phase == "quantitative" and self.phase == "structural":
            self._become_quantitative()
        elif phase == "structural" and self.phase == "quantitative":
            self._become_structural()

    # ----------------------------------------------------------------- compute
    @torch.no_grad()
    def patterns(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Packed activation patterns of every hidden layer for ``x``: ``(*, ceil(n_l / r / 32))`` int32.

        From the trainable ``S`` in the structural phase, from the frozen structure afterwards.
        """
        check_input(x, self.in_features)
        if self.phase == "structural":
            hidden = self.layers[:-1]
            weights, biases = [m.weight for m in hidden], [m.bias for m in hidden]
        else:
            weights, biases = self.structure.weights, self.structure.biases
        return structural_patterns(x, weights, biases, backend=self.backend)

    def _stack(self) -> tuple[list, list]:
        """The trainable layers' weights and biases, read at every call: never cached, since ``load_state_dict``,
        ``.to()``, ``functional_call`` or a new Parameter change them. A plain ``nn.Linear``'s come from its
        parameter dict (where its attribute lookup finds them, without ``nn.Module.__getattr__``'s microsecond
        a name), any other layer's (parametrized, replaced) through its attributes."""
        weights, biases = [], []
        for layer in self._modules["layers"]._modules.values():
            params = layer._parameters
            if type(layer) is nn.Linear and "weight" in params and "bias" in params:
                weights.append(params["weight"])
                biases.append(params["bias"])
            else:
                weights.append(layer.weight)
                biases.append(layer.bias)
        return weights, biases

    @property
    def dropout(self) -> tuple[float, ...]:
        """The dropout rate of each hidden layer (assigning one rate or a sequence validates it)."""
        return self._dropout

    @dropout.setter
    def dropout(self, value) -> None:
        self._dropout = check_rates(value, len(self.hidden_features))
        self._drops = active(self._dropout)

    def forward(self, x: torch.Tensor, patterns: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        # The input is checked with the rest of the call, once per signature (glai_kernels.signature); here
        # only on the structural phase's nn.Linear path, which has no such check.
        weights, biases = self._stack()
        drop = self._dropout if self._drops and self.training else None
        structure = self._modules["structure"]
        if structure is None:  # the structural phase
            if patterns is not None:
                check_input(x, self.in_features)
                raise PhaseError("patterns can only be passed in the quantitative phase; call freeze() first")
            # The fused path saves the packed patterns made in its forward (relu(z) = p z); elsewhere
            # nn.Linear + ReLU, the fastest there.
            y = structural_mlp(x, weights, biases, backend=self.backend, fused=self.fused, dropout=drop)
            if y is not None:
                return y
            check_input(x, self.in_features)
            if not torch.is_autocast_enabled(x.device.type):
                # Only the check: under autocast each nn.Linear casts its own operands, and match_dtypes'
                # casts would be built and thrown away on every step.
                match_dtypes(x, weights, biases)
            layers = self._modules["layers"]
            h = x
            if drop is None:
                for layer in layers[:-1]:
                    h = torch.relu(layer(h))
            else:  # nn.Dropout after each ReLU, torch's generator
                for layer, p in zip(layers[:-1], drop):
                    h = F.dropout(torch.relu(layer(h)), p, True) if p else torch.relu(layer(h))
            return layers[-1](h)
        if patterns is None:  # the frozen structure's patterns (in the same launch where the path is fused)
            return frozen_mlp(
                x, weights, biases, (structure.weights, structure.biases), reduction=self.reduction,
                backend=self.backend, fused=self.fused, dropout=drop,
            )  # fmt: skip
        if type(patterns) is not list and hasattr(patterns, "check_model"):
            patterns.check_model(self)  # looked up in a PatternCache: refused unless built for this structure
        return glai_mlp(
            x, weights, biases, patterns, reduction=self.reduction, backend=self.backend, fused=self.fused,
            dropout=drop,
        )  # fmt: skip

    def structure_digest(self) -> str:
        """A short hash of the frozen structure: patterns cached under one digest are valid only for it."""
        if self.phase != "quantitative":
            raise PhaseError(
                "the structure is only fixed after freeze(); it has no digest in the structural phase"
            )
        h = hashlib.sha256(repr((self.in_features, self.structural_widths, self.reduction)).encode())
        for t in self.structure.weights + [b for b in self.structure.biases if b is not None]:
            h.update(t.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, hidden_features={list(self.hidden_features)}, "
            f"out_features={self.out_features}, reduction={self.reduction}, bias={self.bias}, "
            f"phase={self.phase}, backend={self.backend}"
        ) + (f", dropout={_rates_repr(self._dropout)}" if self._drops else "")
