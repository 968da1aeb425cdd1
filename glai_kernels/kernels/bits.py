"""The pattern layout of ``glai_kernels.layout`` as seen from inside a kernel.

Unit ``j`` is bit ``j % WORD_BITS`` (least significant first) of int32 word ``j // WORD_BITS``; with a
reduction ``r`` quantitative unit ``j`` reads structural bit ``j // r``. ``WORD_BITS`` and ``r`` arrive as
``tl.constexpr`` from the host, which takes them from ``layout.py``: the layout is not redefined here, only
read and written.
"""

import triton
import triton.language as tl


@triton.jit
def apply_pattern(
    z,
    words_ptr,
    rows,
    n0,
    N,
    stride_wm,
    stride_ww,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    REDUCTION: tl.constexpr,
    WORD_BITS: tl.constexpr,
):
    """``z * p``: the fp32 tile ``z`` ``[BLOCK_M, BLOCK_N]`` of units ``n0 .. n0 + BLOCK_N - 1`` for samples
    ``rows``, times its 0/1 gate ``p`` read from the pattern words. Multiplying rather than selecting keeps a
    NaN or inf of a closed unit (``0 * inf`` is NaN), as the formula does.

    ``n0`` is a multiple of ``BLOCK_N`` (it may be at or past ``N``: a chunked layer runs every chunk of its
    padded width); ``rows`` are valid; no word past the last one is read (``tests/test_pattern_bounds.py``);
    columns past ``N`` are never stored. One word covers ``WORD_BITS * REDUCTION`` quantitative units
    (``SPAN``). Since tiles start at multiples of ``BLOCK_N``, two cases need no per-element gather:

    - ``BLOCK_N`` a multiple of ``SPAN``: the tile holds ``BLOCK_N / SPAN`` whole words per row. Load that
      small ``[BLOCK_M, words]`` block, then expand each word to its ``SPAN`` columns (column ``c`` of a word
      reads bit ``c // REDUCTION``) and flatten: word ``w`` lands on columns ``w * SPAN ..``, in order.
    - ``SPAN`` a multiple of ``BLOCK_N``: the tile lies inside one word per row: load one word per row and
      shift it by the tile's offset into that word.

    Both hold for every power-of-two ``REDUCTION``. Any other ``REDUCTION`` (3, 5, ...) loads, per row, the few
    consecutive words the tile's units fall in (at most ``BLOCK_N // SPAN + 2``) and applies each once to the
    columns that read it: a handful of selects over the tile instead of a load (and a 64-bit address) per
    element, and no 0/1 tile beside ``z``.
    """
    if BLOCK_N % (WORD_BITS * REDUCTION) == 0:
        offs_w = n0 // (WORD_BITS * REDUCTION) + tl.arange(0, BLOCK_N // (WORD_BITS * REDUCTION))
        n_words = tl.cdiv(N // REDUCTION, WORD_BITS)
        word_ptrs = words_ptr + rows.to(tl.int64)[:, None] * stride_wm + offs_w[None, :] * stride_ww
        words = tl.load(word_ptrs, mask=(offs_w < n_words)[None, :], other=0)
        shift = tl.arange(0, WORD_BITS * REDUCTION) // REDUCTION
        bits = (words[:, :, None] >> shift[None, None, :]) & 1
        return z * tl.reshape(bits, (BLOCK_M, BLOCK_N)).to(tl.float32)
    elif (WORD_BITS * REDUCTION) % BLOCK_N == 0:
        # A chunked layer runs every chunk up to its padded width, so a tile may start at or past N, in a
        # word past the last one: it would only feed columns past N (never stored), so read the last word.
        word = tl.minimum(n0 // (WORD_BITS * REDUCTION), tl.cdiv(N // REDUCTION, WORD_BITS) - 1)
        words = tl.load(words_ptr + rows.to(tl.int64) * stride_wm + word * stride_ww)
        shift = (n0 % (WORD_BITS * REDUCTION) + tl.arange(0, BLOCK_N)) // REDUCTION
        return z * ((words[:, None] >> shift[None, :]) & 1).to(tl.float32)
    else:
        # Structural unit of each column, and which of the tile's words (0 .. WORDS - 1) and bit it is.
        unit = (n0 + tl.arange(0, BLOCK_N)) // REDUCTION
        w0 = n0 // (WORD_BITS * REDUCTION)
        local = unit // WORD_BITS - w0
        shift = unit % WORD_BITS
        n_words = tl.cdiv(N // REDUCTION, WORD_BITS)
        row_ptrs = words_ptr + rows.to(tl.int64) * stride_wm
        for w in tl.static_range(BLOCK_N // (WORD_BITS * REDUCTION) + 2):
            # A word past the last one would only feed columns past N, which are never stored: read the last.
            word = tl.load(row_ptrs + tl.minimum(w0 + w, n_words - 1) * stride_ww)
            # Arithmetic shift of a signed word: bit 31 smears into the high bits, which the & 1 discards.
            bit = ((word[:, None] >> shift[None, :]) & 1).to(tl.float32)
            z = tl.where(local[None, :] == w, z * bit, z)
        return z


@triton.jit
def pack_bits(fire, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WORD_BITS: tl.constexpr):
    """Pack a 0/1 int32 tile ``[BLOCK_M, BLOCK_N]`` into words ``[BLOCK_M, BLOCK_N // WORD_BITS]``.

    The tile must start on a word boundary (``BLOCK_N`` a multiple of ``WORD_BITS``), so column ``c`` of the
    tile is bit ``c % WORD_BITS`` of the tile's word ``c // WORD_BITS``. Shifting each bit into place and
    summing each group of ``WORD_BITS`` columns gives the word: the bits of one word are distinct powers of
    two, so their sum is their OR and never carries (bit 31 is -2**31 in int32, and every partial sum stays in
    range).
    """
    shift = tl.arange(0, BLOCK_N) % WORD_BITS
    placed = fire << shift[None, :]
    return tl.sum(tl.reshape(placed, (BLOCK_M, BLOCK_N // WORD_BITS, WORD_BITS)), axis=2)
