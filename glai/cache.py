"""``PatternCache``: the frozen patterns of a fixed dataset, computed once and looked up by sample index.

When a sample's input never changes (a fixed dataset, features of a frozen backbone), neither do its patterns
after the freeze, so the quantitative phase need never run the structure again. Each sample keeps the packed
words of every hidden layer side by side in one int32 row (DESIGN section 2): hidden widths 1024 + 1024 cost
64 words, 256 bytes.

On disk a cache is a folder: ``patterns.npy`` (a plain int32 array, memory-mapped on load, never unpickled) and
``meta.json`` (widths, reduction, the structure's digest). A cache is only valid for the structure it was built
from, and loading with ``model=`` checks that.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from glai_kernels import words_for

from .nn import GLAIMLP, PhaseError, check_glaimlp

FORMAT = "glai-pattern-cache"
VERSION = 1


def _batches(data, batch_size: int):
    """Input batches from a tensor ``[N, in]`` or from an indexable dataset of ``x`` or ``(x, ...)`` items."""
    if isinstance(data, torch.Tensor):
        for start in range(0, data.shape[0], batch_size):
            yield data[start : start + batch_size]
        return
    for start in range(0, len(data), batch_size):
        items = [data[i] for i in range(start, min(start + batch_size, len(data)))]
        yield torch.stack([it[0] if isinstance(it, (tuple, list)) else it for it in items])


class PatternCache:
    """Packed patterns ``[N, sum_l words_l]`` of a frozen :class:`GLAIMLP`; ``cache[idx]`` gives one tensor per layer."""

    def __init__(self, words, widths, reduction: int = 1, digest: str | None = None):
        widths = tuple(int(n) for n in widths)
        expected = sum(words_for(n) for n in widths)
        if words.ndim != 2 or words.shape[1] != expected or words.dtype != np.int32:
            raise ValueError(
                f"pattern cache rows must be int32 [N, {expected}] for structural widths {list(widths)}, "
                f"got {words.dtype} {tuple(words.shape)}"
            )
        self.words, self.widths, self.reduction, self.digest = words, widths, reduction, digest
        bounds = np.cumsum([0] + [words_for(n) for n in widths])
        self._columns = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]

    @classmethod
    @torch.no_grad()
    def build(cls, model: GLAIMLP, data, *, batch_size: int = 4096, path=None, device=None) -> PatternCache:
        """Compute the patterns of every sample of ``data`` (tensor ``[N, in]`` or dataset) with ``model``'s
        frozen structure, in batches; with ``path`` the rows go straight to a memory-mapped file there."""
        check_glaimlp(model, "PatternCache.build")
        if model.phase != "quantitative":
            raise PhaseError("a pattern cache needs frozen patterns: call model.freeze() before building it")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        n = data.shape[0] if isinstance(data, torch.Tensor) else len(data)
        shape = (n, sum(model.pattern_words))
        if path is None:
            words = np.empty(shape, dtype=np.int32)
        else:
            Path(path).mkdir(parents=True, exist_ok=True)
            words = np.lib.format.open_memmap(
                Path(path) / "patterns.npy", mode="w+", dtype=np.int32, shape=shape
            )
        device = device if device is not None else model.layers[0].weight.device
        row = 0
        for xb in _batches(data, batch_size):
            parts = model.patterns(xb.to(device))
            words[row : row + xb.shape[0]] = torch.cat(parts, dim=-1).cpu().numpy()
            row += xb.shape[0]
        cache = cls(words, model.structural_widths, model.reduction, model.structure_digest())
        if path is not None:
            words.flush()
            cache._write_meta(Path(path))
        return cache

    def __len__(self) -> int:
        return self.words.shape[0]

    @property
    def bytes_per_sample(self) -> int:
        return self.words.shape[1] * 4

    def __getitem__(self, index) -> list[torch.Tensor]:
        """Patterns of the samples at ``index``, one tensor per layer: an int (negative counts from the end), a
        slice, a bool mask over the samples, or a list, array or tensor of indices (its shape leads the result)."""
        if isinstance(index, tuple):
            # numpy would read cache[i, j] as row i, word j: a word of the packed row, not samples i and j.
            raise TypeError(
                f"a PatternCache is indexed by sample only, got a tuple {index!r}: pass a list of indices"
            )
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        rows = torch.from_numpy(np.array(self.words[index], dtype=np.int32, copy=True))
        return [rows[..., cols] for cols in self._columns]

    def lookup(self, index, device=None) -> list[torch.Tensor]:
        """``cache[index]`` moved to ``device`` (contiguous per layer, ready for ``model(x, patterns=...)``).

        The rows live on the host: an index tensor on a GPU is copied back first, which waits for the GPU, so a
        training loop keeps a CPU copy of its batch indices for this."""
        return [p.contiguous().to(device, non_blocking=True) for p in self[index]]

    def _write_meta(self, folder: Path) -> None:
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "rows": len(self),
            "widths": list(self.widths),
            "reduction": self.reduction,
            "digest": self.digest,
        }
        tmp = folder / "meta.json.tmp"
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, folder / "meta.json")

    def save(self, path) -> None:
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "patterns.npy", np.asarray(self.words), allow_pickle=False)
        self._write_meta(folder)

    @classmethod
    def load(cls, path, *, model: GLAIMLP | None = None, mmap: bool = True) -> PatternCache:
        """Open a saved cache (memory-mapped unless ``mmap=False``); with ``model`` also check it matches."""
        folder = Path(path)
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{folder} is not a readable pattern cache (meta.json: {exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ValueError(f"{folder}/meta.json is not a {FORMAT} version {VERSION} header")
        words = np.load(folder / "patterns.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
        if words.shape[0] != meta["rows"]:
            raise ValueError(
                f"{folder}: header says {meta['rows']} rows, patterns.npy holds {words.shape[0]}"
            )
        cache = cls(words, meta["widths"], meta["reduction"], meta["digest"])
        if model is not None:
            cache.check(model)
        return cache

    def check(self, model: GLAIMLP) -> None:
        """Raise unless this cache was built from ``model``'s current frozen structure."""
        digest = model.structure_digest()
        if self.digest != digest:
            raise ValueError(
                f"pattern cache was built for structure {self.digest}, but the model's frozen structure is "
                f"{digest}: rebuild the cache"
            )

    def __repr__(self) -> str:
        return (
            f"PatternCache(rows={len(self)}, widths={list(self.widths)}, reduction={self.reduction}, "
            f"bytes_per_sample={self.bytes_per_sample}, digest={self.digest})"
        )
