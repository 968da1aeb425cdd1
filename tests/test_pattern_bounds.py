"""No kernel reads a pattern word past the end of its buffer.

A chunked fused layer runs every ``CHUNK``-column tile up to its padded width ``P``, so a tile may start at or
past the layer's width ``N``, in a word that does not exist. :func:`kernels.bits.apply_pattern` is run here under
Triton's interpreter exactly as a chunked layer runs it (one program a chunk, ``n0 = c * CHUNK`` up to ``P``),
with the patterns in a buffer of exactly ``ceil(N / r / 32)`` words a row, while a guard checks every address
the interpreter loads against the bytes of the kernel's tensor arguments.

Cases: every padded width ``P`` 16..512 (512 is the widest the fused table allows), every reduction r <= 8,
every chunk 16, 32, 64, 128 narrower than ``P`` and the unchunked tile (``CHUNK = P``), each at the narrowest
and the widest width ``N`` with that padded width that r divides. Those two are the extremes of every width in
between: the tiles (hence the words they address) depend on ``P`` alone, while the word count grows with ``N``,
so the narrowest ``N`` has the fewest words to stay inside, and the widest the most columns that must read
their own word (chunk 16, narrower than any table's chunk, at the narrowest only). All 512 widths under the
interpreter would take minutes; these take seconds.
"""

import numpy as np
import pytest
import torch

triton = pytest.importorskip("triton", reason="the kernels need Triton")
if not torch.cuda.is_available():
    interpreter = pytest.importorskip("triton.runtime.interpreter")
from glai_kernels.fused_config import MAX_WIDTH, padded  # noqa: E402
from glai_kernels.layout import PATTERN_DTYPE, WORD_BITS, words_for  # noqa: E402

tl = triton.language
bits = pytest.importorskip("glai_kernels.kernels.bits", reason="the kernels need Triton")

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the guard hooks Triton's interpreter")

ROWS = 2
CHUNKS = (16, 32, 64, 128)


@triton.jit
def _gate_chunks_kernel(words_ptr, out_ptr, N, stride_wm, stride_ww, BLOCK_N: tl.constexpr, R: tl.constexpr,
                        WB: tl.constexpr, ROWS_: tl.constexpr):  # fmt: skip
    """Program ``c`` gates the ones tile of columns ``c * BLOCK_N ..`` as a chunked layer's epilogue does."""
    n0 = tl.program_id(0) * BLOCK_N
    rows = tl.arange(0, ROWS_)
    z = tl.full((ROWS_, BLOCK_N), 1.0, tl.float32)
    z = bits.apply_pattern(z, words_ptr, rows, n0, N, stride_wm, stride_ww, ROWS_, BLOCK_N, R, WB)
    cols = n0 + tl.arange(0, BLOCK_N)
    tl.store(out_ptr + rows[:, None] * N + cols[None, :], z, mask=(cols < N)[None, :])


class _Guard:
    """Wraps the interpreter's masked load: every address a load reads (mask on) must lie inside one of the
    launch's tensor arguments, recorded as the interpreter hands them to the kernel."""

    def __init__(self, monkeypatch):
        self.spans: list[tuple[int, int]] = []
        self.bad: list[int] = []
        builder, executor = interpreter.InterpreterBuilder, interpreter.GridExecutor
        real_load, real_args = builder.create_masked_load, executor._init_args_hst

        def init_args(executor_self, args_dev, kwargs):
            args_hst, kwargs_hst = real_args(executor_self, args_dev, kwargs)
            self.spans = [
                (a.data_ptr(), a.data_ptr() + a.numel() * a.element_size())
                for a in list(args_hst) + list(kwargs_hst.values())
                if isinstance(a, torch.Tensor)
            ]
            return args_hst, kwargs_hst

        def load(builder_self, ptrs, mask, *rest):
            addr = np.asarray(ptrs.data, dtype=np.uint64)
            read = addr[np.broadcast_to(np.asarray(mask.data, dtype=bool), addr.shape)]
            inside = np.zeros(read.shape, dtype=bool)
            for lo, hi in self.spans:
                inside |= (read >= lo) & (read < hi)
            self.bad.extend(int(a) for a in read[~inside])
            return real_load(builder_self, ptrs, mask, *rest)

        monkeypatch.setattr(executor, "_init_args_hst", init_args)
        monkeypatch.setattr(builder, "create_masked_load", load)


def _cases():
    for p in (padded(n) for n in (16, 32, 64, 128, 256, 512) if n <= MAX_WIDTH):
        for r in range(1, 9):
            widths = [n for n in range(1, p + 1) if n % r == 0 and padded(n) == p]
            for chunk in [c for c in CHUNKS if c < p] + [p]:
                # Chunk 16 (narrower than any table's chunk) only at the narrowest width: the time of CI.
                for n in sorted({widths[0], widths[-1] if chunk > 16 else widths[0]}) if widths else ():
                    yield n, r, chunk


def test_every_pattern_word_a_chunked_layer_loads_is_inside_the_buffer(monkeypatch):
    guard = _Guard(monkeypatch)
    g = torch.Generator().manual_seed(4)
    cases = 0
    for n, r, block_n in _cases():
        width = n // r
        words = torch.randint(-(2**31), 2**31, (ROWS, words_for(width)), generator=g).to(PATTERN_DTYPE)
        out = torch.full((ROWS, n), float("nan"))
        guard.bad = []
        _gate_chunks_kernel[(padded(n) // block_n,)](
            words, out, n, words.stride(0), words.stride(1), BLOCK_N=block_n, R=r, WB=WORD_BITS, ROWS_=ROWS
        )
        cases += 1
        assert not guard.bad, (
            f"width {n}, r {r}, chunk {block_n}: loaded {len(guard.bad)} address(es) outside the kernel's "
            f"tensors (pattern buffer of {words.numel()} words at {words.data_ptr():#x}, first bad "
            f"{guard.bad[0]:#x})"
        )
        # The gates are right too: unit j reads structural bit j // r.
        shifts = torch.arange(n) // r
        want = ((words[:, shifts // WORD_BITS] >> (shifts % WORD_BITS)) & 1).float()
        assert torch.equal(out, want), f"width {n}, r {r}, chunk {block_n}: wrong gates"
    assert cases > 250
