"""``PatternCache``: the frozen patterns of a fixed dataset, computed once and looked up by sample index.

When a sample's input never changes (a fixed dataset, features of a frozen backbone), neither do its patterns
after the freeze, so the quantitative phase need never run the structure again. Each sample keeps the packed
words of every hidden layer side by side in one int32 row (docs/design.md section 2): hidden widths 1024 + 1024 cost
64 words, 256 bytes.

Where the rows live:

- on the host (``build``, ``load``): a NumPy array, memory-mapped when it is a file. A lookup for a CUDA device
  gathers the rows into pinned memory and copies them asynchronously; index with a CPU tensor or a list (a CUDA
  index would be copied back first, which waits for the GPU).
- on a device (``cache.to("cuda")``, 1 bit a unit: 50 000 samples of 2 x 1024 units take 12.8 MB): a tensor.
  A lookup by an index tensor on that device is one gather, with no host synchronisation (a bool mask still
  synchronises, as it does for any tensor; an index out of range fails in the kernel, as ``tensor[index]``
  does, since checking it on the host would synchronise).

Every lookup returns :class:`CachedPatterns` tagged with the structure digest, and the model refuses them unless
its frozen structure is that one (``glai.structure_check``). Files are checked on load (``glai.cache_files``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from glai_kernels import words_for

from . import cache_files as files
from .nn import GLAIMLP, PhaseError, check_glaimlp
from .structure_check import CachedPatterns, structure_digest

FORMAT, VERSION = files.FORMAT, files.VERSION


def _batches(data, batch_size: int):
    """Input batches from a tensor ``[N, in]`` or from an indexable dataset of ``x`` or ``(x, ...)`` items."""
    if isinstance(data, torch.Tensor):
        for start in range(0, data.shape[0], batch_size):
            yield data[start : start + batch_size]
        return
    for start in range(0, len(data), batch_size):
        items = [data[i] for i in range(start, min(start + batch_size, len(data)))]
        yield torch.stack([it[0] if isinstance(it, (tuple, list)) else it for it in items])


def _pin(device: torch.device) -> bool:
    """Stage host rows in pinned memory only for a CUDA target, and only where CUDA exists."""
    return device.type == "cuda" and torch.cuda.is_available()


def _host_buffer(shape, pin: bool) -> torch.Tensor:
    return torch.empty(shape, dtype=torch.int32, pin_memory=pin)


class PatternCache:
    """Packed patterns ``[N, sum_l words_l]`` of a frozen :class:`GLAIMLP`; ``cache[idx]`` gives one tensor per layer.

    ``words`` is a host NumPy array (possibly memory-mapped) or an int32 tensor on any device (see ``to``).
    ``digest`` is the structure digest the rows were computed with; lookups carry it to the model.
    """

    def __init__(self, words, widths, reduction: int = 1, digest: str | None = None):
        widths = tuple(int(n) for n in widths)
        expected = sum(words_for(n) for n in widths)
        dtype_ok = words.dtype == (torch.int32 if isinstance(words, torch.Tensor) else np.int32)
        if words.ndim != 2 or words.shape[1] != expected or not dtype_ok:
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
        frozen structure, in batches, on ``device`` (default: the model's); the rows are kept on the host. With
        ``path`` they go straight to a memory-mapped file there, hashed as they are written."""
        check_glaimlp(model, "PatternCache.build")
        if model.phase != "quantitative":
            raise PhaseError("a pattern cache needs frozen patterns: call model.freeze() before building it")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        n = data.shape[0] if isinstance(data, torch.Tensor) else len(data)
        shape = (n, sum(model.pattern_words))
        hasher = None
        if path is None:
            words = np.empty(shape, dtype=np.int32)
        else:
            folder = Path(path)
            folder.mkdir(parents=True, exist_ok=True)
            file = folder / files.ROWS_FILE
            words = np.lib.format.open_memmap(file, mode="w+", dtype=np.int32, shape=shape)
            hasher = files.new_hash()
            with open(file, "rb") as fh:  # the .npy header, written by open_memmap
                hasher.update(fh.read(words.offset))
        device = device if device is not None else model.layers[0].weight.device
        row = 0
        for xb in _batches(data, batch_size):
            block = torch.cat(model.patterns(xb.to(device)), dim=-1).cpu().numpy()
            words[row : row + xb.shape[0]] = block
            if hasher is not None:
                hasher.update(np.ascontiguousarray(block).data)  # C order: the file's byte order
            row += xb.shape[0]
        cache = cls(words, model.structural_widths, model.reduction, structure_digest(model))
        if path is not None:
            words.flush()
            cache._write_meta(folder, hasher.hexdigest(), os.path.getsize(file))
        return cache

    # ----------------------------------------------------------------- where the rows live
    @property
    def device(self) -> torch.device:
        return self.words.device if isinstance(self.words, torch.Tensor) else torch.device("cpu")

    def to(self, device) -> PatternCache:
        """A cache whose rows are a tensor on ``device`` (read in full from a memory-mapped file); ``self`` when
        they already are. Lookups by an index tensor on that device then run there without a host sync."""
        device = torch.device(device)
        if isinstance(self.words, torch.Tensor):
            if self.words.device == device:
                return self
            rows = self.words.to(device)
        else:
            # np.array copies: a memory-mapped file is read-only, and torch wants writable memory.
            rows = torch.from_numpy(np.array(self.words)).to(device)
        return PatternCache(rows, self.widths, self.reduction, self.digest)

    def __len__(self) -> int:
        return self.words.shape[0]

    @property
    def bytes_per_sample(self) -> int:
        return self.words.shape[1] * 4

    # ----------------------------------------------------------------- lookups
    def _device_index(self, index):
        """``index`` for a tensor-resident cache: tensors moved to its device, lists and arrays made tensors."""
        if isinstance(index, torch.Tensor):
            return index.to(self.words.device, non_blocking=True)
        if isinstance(index, (int, np.integer, slice)):
            return index
        index = np.asarray(index)
        if index.size == 0:  # np.asarray([]) is float64, which no tensor accepts as an index
            index = index.astype(np.int64)
        return torch.from_numpy(index).to(self.words.device, non_blocking=True)

    def _rows(self, index):
        if isinstance(index, tuple):
            # numpy would read cache[i, j] as row i, word j: a word of the packed row, not samples i and j.
            raise TypeError(
                f"a PatternCache is indexed by sample only, got a tuple {index!r}: pass a list of indices"
            )
        if isinstance(self.words, torch.Tensor):
            return self.words[self._device_index(index)]
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        return self.words[index]

    def __getitem__(self, index) -> CachedPatterns:
        """Patterns of the samples at ``index``, one tensor per layer: an int (negative counts from the end), a
        slice, a bool mask over the samples, or a list, array or tensor of indices (its shape leads the result)."""
        rows = self._rows(index)
        if not isinstance(rows, torch.Tensor):
            rows = torch.from_numpy(np.array(rows, dtype=np.int32, copy=True))
        return CachedPatterns([rows[..., cols] for cols in self._columns], self.digest)

    def lookup(self, index, device=None) -> CachedPatterns:
        """``cache[index]`` on ``device`` (default: the cache's), contiguous per layer, ready for
        ``model(x, patterns=...)``. From a host cache to a CUDA device the rows are staged in pinned memory and
        copied without blocking."""
        device = self.device if device is None else torch.device(device)
        rows = self._rows(index)
        if isinstance(rows, torch.Tensor):
            parts = [rows[..., cols].contiguous() for cols in self._columns]
            if parts and parts[0].device != device:
                pin = _pin(device) and parts[0].device.type == "cpu"
                parts = [(p.pin_memory() if pin else p).to(device, non_blocking=True) for p in parts]
            return CachedPatterns(parts, self.digest)
        rows = np.asarray(rows)  # a fancy index copied the rows already; a slice of a memmap is a view
        pin = _pin(device)
        parts = []
        for cols in self._columns:
            part = _host_buffer(rows.shape[:-1] + (cols.stop - cols.start,), pin)
            part.numpy()[...] = rows[..., cols]
            parts.append(part if device.type == "cpu" else part.to(device, non_blocking=True))
        return CachedPatterns(parts, self.digest)

    # ----------------------------------------------------------------- files
    def _host_words(self) -> np.ndarray:
        if isinstance(self.words, torch.Tensor):
            return self.words.cpu().numpy()
        return np.asarray(self.words)

    def _write_meta(self, folder: Path, hexdigest: str, size: int) -> None:
        files.write_meta(
            folder,
            rows=len(self),
            widths=self.widths,
            reduction=self.reduction,
            digest=self.digest,
            hexdigest=hexdigest,
            size=size,
        )

    def save(self, path) -> None:
        """Write ``patterns.npy`` and ``meta.json`` (with the file's checksum) into the folder ``path``.

        The file is written beside the old one and moved over it, so a cache memory-mapped from the same folder
        keeps reading the old rows."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / (files.ROWS_FILE + ".tmp")
        with open(tmp, "wb") as fh:
            np.save(fh, self._host_words(), allow_pickle=False)
        hexdigest, size = files.hash_file(tmp), os.path.getsize(tmp)
        os.replace(tmp, folder / files.ROWS_FILE)
        self._write_meta(folder, hexdigest, size)

    @classmethod
    def load(
        cls, path, *, model: GLAIMLP | None = None, mmap: bool = True, verify: bool = True
    ) -> PatternCache:
        """Open a saved cache (memory-mapped unless ``mmap=False``), its header and file checked first.

        ``verify=False`` skips the checksum (a streamed read of the whole file); the size is checked anyway.
        With ``model``, the cache must also have been built for its current frozen structure (lookups are checked
        against the model they are used with in any case)."""
        folder = Path(path)
        meta = files.read_meta(folder)
        rows_file = files.check_rows_file(folder, meta, verify)
        words = files.open_rows(rows_file, meta, mmap)
        cache = cls(words, meta["widths"], meta["reduction"], meta["digest"])
        if model is not None:
            cache.check(model)
        return cache

    def check(self, model: GLAIMLP) -> None:
        """Raise unless this cache was built from ``model``'s current frozen structure."""
        digest = structure_digest(model)
        if self.digest != digest:
            raise ValueError(
                f"pattern cache was built for structure {self.digest}, but the model's frozen structure is "
                f"{digest}: rebuild the cache"
            )

    def __getstate__(self) -> dict:
        # A memory-mapped cache pickles as its file (e.g. into DataLoader workers started with spawn), not as
        # a copy of every row.
        state = dict(self.__dict__)
        words = self.words
        if isinstance(words, np.memmap) and words.filename is not None:
            state["words"] = ("memmap", words.filename, words.offset, words.shape)
        return state

    def __setstate__(self, state: dict) -> None:
        words = state["words"]
        if isinstance(words, tuple) and words[0] == "memmap":
            _, filename, offset, shape = words
            state["words"] = np.memmap(filename, dtype=np.int32, mode="r", offset=offset, shape=shape)
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return (
            f"PatternCache(rows={len(self)}, widths={list(self.widths)}, reduction={self.reduction}, "
            f"bytes_per_sample={self.bytes_per_sample}, device={self.device}, digest={self.digest})"
        )


class PatternDataset(torch.utils.data.Dataset):
    """The items of ``dataset`` with their cached patterns, for a standard ``DataLoader``.

    An ``(x, y)`` item becomes ``(x, y, patterns)`` (any tuple gets the patterns appended; a bare ``x`` gives
    ``(x, patterns)``); the default collate stacks the patterns into one tensor per layer, still tagged with the
    cache's digest. Item ``i`` takes row ``i`` of the cache: build it from the same dataset, in the same order.
    The cache must live on the host (workers cannot share CUDA tensors; with a device cache, look the patterns
    up in the training loop instead)."""

    def __init__(self, dataset, cache: PatternCache):
        if not isinstance(cache, PatternCache):
            raise TypeError(f"PatternDataset expects a PatternCache, got {type(cache).__name__}")
        if cache.device.type != "cpu":
            raise ValueError(
                f"PatternDataset needs a host cache, got one on {cache.device}: DataLoader workers cannot use "
                "device tensors; look the patterns up with cache.lookup(index) in the training loop instead"
            )
        if len(dataset) != len(cache):
            raise ValueError(
                f"dataset has {len(dataset)} items but the cache {len(cache)} rows: build it from this dataset"
            )
        self.dataset, self.cache = dataset, cache

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        item = self.dataset[index]
        item = tuple(item) if isinstance(item, (tuple, list)) else (item,)
        return (*item, self.cache[index])
