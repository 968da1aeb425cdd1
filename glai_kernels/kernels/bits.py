"""The pattern layout of ``glai_kernels.layout`` as seen from inside a kernel.

Unit ``j`` is bit ``j % WORD_BITS`` (least significant first) of int32 word ``j // WORD_BITS``; with a reduction
``r`` quantitative unit ``j`` reads structural bit ``j // r``. ``WORD_BITS`` and ``r`` arrive as ``tl.constexpr``
from the host, which takes them from ``layout.py``: the layout is not redefined here, only read and written.
"""

import triton
import triton.language as tl


@triton.jit
def unit_bits(words_ptr, rows, cols, stride_wm, stride_ww, REDUCTION: tl.constexpr, WORD_BITS: tl.constexpr):
    """The 0/1 gate (int32 ``[len(rows), len(cols)]``) of quantitative units ``cols`` for samples ``rows``.

    ``rows`` and ``cols`` must be valid indices. Every column of a tile reads its own word, a gather; lanes of a
    warp that hit the same word are served by one transaction, so this costs about one load per 32/r columns.
    """
    unit = cols // REDUCTION
    word_ptrs = words_ptr + rows.to(tl.int64)[:, None] * stride_wm + (unit // WORD_BITS)[None, :] * stride_ww
    words = tl.load(word_ptrs)
    # Arithmetic shift of a signed word: bit 31 smears into the high bits, which the & 1 discards.
    return (words >> (unit % WORD_BITS)[None, :]) & 1


@triton.jit
def pack_bits(fire, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WORD_BITS: tl.constexpr):
    """Pack a 0/1 int32 tile ``[BLOCK_M, BLOCK_N]`` into words ``[BLOCK_M, BLOCK_N // WORD_BITS]``.

    The tile must start on a word boundary (``BLOCK_N`` a multiple of ``WORD_BITS``), so column ``c`` of the tile
    is bit ``c % WORD_BITS`` of the tile's word ``c // WORD_BITS``. Shifting each bit into place and summing each
    group of ``WORD_BITS`` columns gives the word: the bits of one word are distinct powers of two, so their sum
    is their OR and never carries (bit 31 is -2**31 in int32, and every partial sum stays in range).
    """
    shift = tl.arange(0, BLOCK_N) % WORD_BITS
    placed = fire << shift[None, :]
    return tl.sum(tl.reshape(placed, (BLOCK_M, BLOCK_N // WORD_BITS, WORD_BITS)), axis=2)
