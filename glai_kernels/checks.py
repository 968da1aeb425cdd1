"""Argument checks shared by the ops: every bad input is named with what was expected and what came."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .layout import PATTERN_DTYPE, words_for

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_input(x, in_features: int, what: str = "input") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{what} must be a floating-point tensor (float16, bfloat16, float32, float64), got {x.dtype}"
        )
    if x.dim() == 0:
        raise ValueError(f"{what} must have shape (*, {in_features}), got a 0-d tensor")
    if x.shape[-1] != in_features:
        raise ValueError(
            f"{what} must have shape (*, {in_features}): expected {in_features} features in the last dimension, "
            f"got shape {tuple(x.shape)}"
        )


def check_stack(weights, biases) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """Weights ``[n_l, n_{l-1}]`` that chain, and biases ``[n_l]`` or None; returns them as lists."""
    if isinstance(weights, torch.Tensor) or not isinstance(weights, Sequence) or len(weights) == 0:
        raise ValueError(f"weights must be a non-empty sequence of 2-d tensors, got {type(weights).__name__}")
    weights = list(weights)
    if biases is None:
        biases = [None] * len(weights)
    elif isinstance(biases, torch.Tensor) or not isinstance(biases, Sequence) or len(biases) != len(weights):
        got = f"{len(biases)} entries" if isinstance(biases, Sequence) else type(biases).__name__
        raise ValueError(f"biases must be None or a sequence of {len(weights)} tensors or None, got {got}")
    biases = list(biases)
    for i, w in enumerate(weights):
        if not isinstance(w, torch.Tensor) or w.dim() != 2:
            got = f"shape {tuple(w.shape)}" if isinstance(w, torch.Tensor) else type(w).__name__
            raise ValueError(f"weights[{i}] must be a 2-d tensor [out, in], got {got}")
        if i and w.shape[1] != weights[i - 1].shape[0]:
            raise ValueError(
                f"weights[{i}] must take {weights[i - 1].shape[0]} inputs (the outputs of weights[{i - 1}]), "
                f"got shape {tuple(w.shape)}"
            )
        b = biases[i]
        if b is not None and (not isinstance(b, torch.Tensor) or tuple(b.shape) != (w.shape[0],)):
            got = f"shape {tuple(b.shape)}" if isinstance(b, torch.Tensor) else type(b).__name__
            raise ValueError(f"biases[{i}] must have shape ({w.shape[0]},), got {got}")
    return weights, biases


def check_reduction(reduction, widths: Sequence[int]) -> None:
    if isinstance(reduction, bool) or not isinstance(reduction, int) or reduction < 1:
        raise ValueError(f"reduction must be a positive int, got {reduction!r}")
    for i, n in enumerate(widths):
        if n % reduction:
            raise ValueError(
                f"reduction={reduction} must divide every hidden width, got width {n} at layer {i}"
            )


def check_patterns(patterns, widths: Sequence[int], reduction: int, lead: tuple[int, ...], device) -> list:
    """Patterns of every hidden layer: int32 ``lead + (ceil(n_l / r / 32),)``."""
    if isinstance(patterns, torch.Tensor) or not isinstance(patterns, Sequence):
        raise TypeError(
            f"patterns must be a sequence of int32 tensors, one per hidden layer, got {type(patterns).__name__}"
        )
    if len(patterns) != len(widths):
        raise ValueError(f"expected patterns for {len(widths)} hidden layers, got {len(patterns)}")
    for i, (p, n) in enumerate(zip(patterns, widths)):
        expected = lead + (words_for(n // reduction),)
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"patterns[{i}] must be an int32 tensor, got {type(p).__name__}")
        if p.dtype != PATTERN_DTYPE:
            raise TypeError(f"patterns[{i}] must be int32 packed words (see pack_patterns), got {p.dtype}")
        if tuple(p.shape) != expected:
            raise ValueError(
                f"patterns[{i}] must have shape {expected} ({n // reduction} structural units in "
                f"{expected[-1]} words for a batch of shape {lead}), got {tuple(p.shape)}"
            )
        if p.device != device:
            raise ValueError(f"patterns[{i}] must be on {device} like the input, got {p.device}")
    return list(patterns)


def check_devices(x: torch.Tensor, weights, biases) -> None:
    for t in weights + [b for b in biases if b is not None]:
        if t.device != x.device:
            raise ValueError(
                f"weights and biases must be on {x.device} like the input, got a tensor on {t.device}"
            )


def match_dtypes(x: torch.Tensor, weights, biases):
    """Under autocast every operand takes the autocast dtype (the cast is part of the autograd graph, so fp32
    master weights get their gradients); otherwise operands must already agree, as in ``F.linear``."""
    kind = x.device.type
    if torch.is_autocast_enabled(kind):
        cast = torch.get_autocast_dtype(kind)
        return x.to(cast), [w.to(cast) for w in weights], [b if b is None else b.to(cast) for b in biases]
    for name, group in (("weights", weights), ("biases", biases)):
        for i, t in enumerate(group):
            if t is not None and t.dtype != x.dtype:
                raise TypeError(f"{name}[{i}] must have the input's dtype {x.dtype}, got {t.dtype}")
    return x, weights, biases
