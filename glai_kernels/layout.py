"""The bit layout of activation patterns, defined once.

One layer's patterns for a batch are an ``int32`` tensor ``[..., ceil(n / 32)]``. Unit ``j`` is bit ``j % 32``
(least significant first) of word ``j // 32``; padding bits past ``n`` are 0. With a reduction ``r`` the
patterns stay at structural width ``n / r`` and quantitative unit ``j`` reads structural bit ``j // r``.

Every producer and consumer, PyTorch or Triton, goes through the constants and helpers of this module.
"""

from __future__ import annotations

import sys

import torch

WORD_BITS = 32
PATTERN_DTYPE = torch.int32


def words_for(n: int) -> int:
    """Number of int32 words holding ``n`` pattern bits."""
    return (n + WORD_BITS - 1) // WORD_BITS


def pack_patterns(mask: torch.Tensor) -> torch.Tensor:
    """Pack a boolean pattern ``[..., n]`` into int32 words ``[..., ceil(n / 32)]``.

    Any tensor whose nonzero entries mean "the unit fires" is accepted (bool, or integer/float 0/1).
    """
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"pack_patterns expected a torch.Tensor, got {type(mask).__name__}")
    if mask.dim() == 0:
        raise ValueError(
            "pack_patterns expected a tensor of shape [..., n] with at least one dimension, got a 0-d tensor"
        )
    n = mask.shape[-1]
    words = words_for(n)
    bits = mask.ne(0)
    pad = words * WORD_BITS - n
    if pad:
        bits = torch.nn.functional.pad(bits, (0, pad))
    bits = bits.reshape(*mask.shape[:-1], words, WORD_BITS).to(PATTERN_DTYPE)
    shifts = torch.arange(WORD_BITS, device=bits.device, dtype=PATTERN_DTYPE)
    # Bits of one word are distinct powers of two, so their sum is their OR: an int32 sum never carries
    # (bit 31 is -2**31, and every partial sum stays in range).
    return (bits << shifts).sum(dim=-1, dtype=PATTERN_DTYPE)


def _check_words(words, n) -> None:
    if not isinstance(words, torch.Tensor):
        raise TypeError(f"unpack_patterns expected a torch.Tensor, got {type(words).__name__}")
    if words.dtype != PATTERN_DTYPE:
        raise TypeError(f"unpack_patterns expected int32 words, got {words.dtype}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"unpack_patterns expected a non-negative int n, got {n!r}")
    if words.dim() == 0 or words.shape[-1] != words_for(n):
        got = "a 0-d tensor" if words.dim() == 0 else f"{words.shape[-1]} words"
        raise ValueError(f"unpack_patterns expected {words_for(n)} words for n={n}, got {got}")


def _bits(words: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` bits of ``words`` as int32 0/1 ``[..., n]``."""
    shifts = torch.arange(WORD_BITS, device=words.device, dtype=PATTERN_DTYPE)
    # Arithmetic shift of a signed word: bit 31 smears into the high bits, which the & 1 discards.
    bits = (words.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(*words.shape[:-1], words.shape[-1] * WORD_BITS)[..., :n]


def unpack_patterns(words: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_patterns`: int32 ``[..., ceil(n / 32)]`` to bool ``[..., n]``."""
    _check_words(words, n)
    return _bits(words, n).bool()


def _structural_width(n, reduction) -> int:
    """``n / reduction``, the structural units gating ``n`` quantitative ones; a ValueError unless it is whole
    (otherwise ``n // reduction`` bits repeated ``reduction`` times would gate fewer than ``n`` units)."""
    if isinstance(reduction, bool) or not isinstance(reduction, int) or reduction < 1:
        raise ValueError(f"reduction must be a positive int, got {reduction!r}")
    if isinstance(n, int) and n % reduction:
        raise ValueError(f"reduction={reduction} must divide the number of units, got n={n}")
    return n // reduction


def unit_mask(words: torch.Tensor, n: int, reduction: int = 1) -> torch.Tensor:
    """The gate of each of ``n`` quantitative units as a bool ``[..., n]``: unit ``j`` reads bit ``j // reduction``."""
    structural = unpack_patterns(words, _structural_width(n, reduction))
    return structural.repeat_interleave(reduction, dim=-1) if reduction > 1 else structural


def unit_gates(words: torch.Tensor, n: int, reduction: int, dtype: torch.dtype) -> torch.Tensor:
    """:func:`unit_mask` as 0/1 in ``dtype`` ``[..., n]``, for multiplying: one table lookup per byte of the
    words (see :func:`gate_table`) instead of a shift, a mask, a cast and a repeat per bit."""
    width = _structural_width(n, reduction)
    _check_words(words, width)
    return gates_of(words, n, reduction, dtype)


def gates_of(words: torch.Tensor, n: int, reduction: int, dtype: torch.dtype) -> torch.Tensor:
    """:func:`unit_gates` without its argument checks, for callers that have checked the patterns already.

    Written for the host time of a small step (a few microseconds a call): the C++ embedding op directly, the
    table found by one dictionary lookup, no tensor shape read back that the arguments already give.

    The byte lookup reads the words as bytes (``view(torch.uint8)``), which neither ``torch.func`` transforms
    (no batching rule for ``aten::view.dtype``) nor Inductor (a dtype view needs a unit last stride, which a
    compiled graph may not give the words) can take; under either the bits are unpacked by shifts and masks
    instead, the same gates. Both checks cost about 0.1 us."""
    if (
        not _LITTLE_ENDIAN
        or words.stride(-1) != 1
        or torch.compiler.is_compiling()
        or torch._C._are_functorch_transforms_active()
    ):
        gates = _bits(words, n // reduction).to(dtype)
        return gates.repeat_interleave(reduction, dim=-1) if reduction > 1 else gates
    device = words.device
    table = _TABLES.get((reduction, dtype, device))
    if table is None:
        table = gate_table(reduction, dtype, device)
    # Little-endian: byte k of word w holds bits 8k .. 8k + 7 of that word, i.e. structural units
    # 32 w + 8 k + b for b = 0 .. 7, so the bytes in memory order list the units in order.
    gates = torch.embedding(table, words.view(torch.uint8).to(torch.int32)).flatten(-2)
    return gates if n % (WORD_BITS * reduction) == 0 else gates[..., :n]


_LITTLE_ENDIAN = sys.byteorder == "little"
_TABLES: dict[tuple, torch.Tensor] = {}


def gate_table(reduction: int, dtype: torch.dtype, device) -> torch.Tensor:
    """``[256, 8 * reduction]`` in ``dtype``: row ``v`` holds bit ``b`` of the byte ``v`` (least significant
    first) at columns ``b * r .. b * r + r - 1``, the gates of the quantitative units that bit drives.

    One table per (reduction, dtype, device), 8 KB * reduction in float32, built once."""
    key = (reduction, dtype, torch.device(device))  # words.device is a torch.device: the same key
    table = _TABLES.get(key)
    if table is None:
        byte = torch.arange(256, dtype=torch.int32)
        bits = (byte[:, None] >> torch.arange(8, dtype=torch.int32)) & 1
        table = bits.repeat_interleave(reduction, dim=1).to(dtype=dtype, device=device).contiguous()
        _TABLES[key] = table
    return table
