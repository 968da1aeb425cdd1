"""The on-disk form of a pattern cache: a folder with ``patterns.npy`` and ``meta.json``, checked before use.

``patterns.npy`` is a plain int32 ``.npy`` array (memory-mapped on load, never unpickled). ``meta.json`` holds the
format, the widths, reduction and structure digest, the file's size in bytes and a checksum of the whole file::

    {"format": "glai-pattern-cache", "version": 2, "rows": 50000, "widths": [1024, 1024], "reduction": 1,
     "digest": "3f9c...", "checksum": {"algorithm": "sha256", "hexdigest": "...", "bytes": 12800128}}

The checksum is SHA-256: with the SHA extensions of current x86 and ARM CPUs, hashlib's SHA-256 ran at
1.4-1.9 GB/s on our machine against 0.9-1.3 GB/s for BLAKE2b (a 1 GB file, page-cached). The file is hashed in
chunks of a few MB, so a file larger than RAM is checked in bounded memory; loading with ``verify=False`` skips
it (the size is still checked). A truncated, damaged or foreign file is refused with a ValueError that names the
file and what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from glai_kernels import words_for

FORMAT = "glai-pattern-cache"
VERSION = 2  # 1: no checksum
ROWS_FILE, META_FILE = "patterns.npy", "meta.json"
ALGORITHM = "sha256"
_CHUNK = 4 << 20


def new_hash(algorithm: str = ALGORITHM):
    return hashlib.new(algorithm)


def hash_file(path: Path, algorithm: str = ALGORITHM) -> str:
    """Hex digest of the file at ``path``, read in chunks (bounded memory whatever its size)."""
    h = hashlib.new(algorithm)
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buffer):
            h.update(view[:n])
    return h.hexdigest()


def write_meta(folder: Path, *, rows, widths, reduction, digest, hexdigest: str, size: int) -> None:
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "rows": int(rows),
        "widths": [int(n) for n in widths],
        "reduction": int(reduction),
        "digest": digest,
        "checksum": {"algorithm": ALGORITHM, "hexdigest": hexdigest, "bytes": int(size)},
    }
    tmp = folder / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, folder / META_FILE)


def _field(meta: dict, path: Path, name: str, ok, expected: str):
    value = meta.get(name)
    if not ok(value):
        raise ValueError(f"{path}: field {name!r} must be {expected}, got {value!r}")
    return value


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def read_meta(folder: Path) -> dict:
    """The header of the cache in ``folder``, every field checked; a ValueError naming the file otherwise."""
    path = folder / META_FILE
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{folder} is not a readable pattern cache ({META_FILE}: {exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} header (its format is {_get(meta, 'format')!r})")
    if meta.get("version") not in (1, VERSION):
        raise ValueError(
            f"{path}: {FORMAT} version {meta.get('version')!r}; this glai reads versions 1 and {VERSION}"
        )
    _field(meta, path, "rows", _count, "an int >= 0")
    _field(
        meta,
        path,
        "widths",
        lambda v: isinstance(v, list) and v and all(_count(n) and n for n in v),
        "a list of ints >= 1",
    )
    _field(meta, path, "reduction", lambda v: _count(v) and v >= 1, "an int >= 1")
    _field(meta, path, "digest", lambda v: v is None or isinstance(v, str), "a string or null")
    if meta["version"] >= 2:
        checksum = _field(meta, path, "checksum", lambda v: isinstance(v, dict), "an object")
        _field(
            checksum, path, "algorithm", lambda v: v in hashlib.algorithms_available, "a hashlib algorithm"
        )
        _field(checksum, path, "hexdigest", lambda v: isinstance(v, str) and v, "a hex string")
        _field(checksum, path, "bytes", _count, "an int >= 0")
    return meta


def _get(meta, key):
    return meta.get(key) if isinstance(meta, dict) else type(meta).__name__


def check_rows_file(folder: Path, meta: dict, verify: bool) -> Path:
    """Size (always) and checksum (unless ``verify=False``) of ``patterns.npy`` against the header."""
    path = folder / ROWS_FILE
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc.strerror})") from None
    checksum = meta.get("checksum")
    if checksum is None:  # version 1
        if verify:
            raise ValueError(
                f"{folder / META_FILE} has no checksum (format version 1): rebuild the cache, or load it with "
                "verify=False to use it unchecked"
            )
        return path
    if size != checksum["bytes"]:
        what = "truncated" if size < checksum["bytes"] else "longer than its header says"
        raise ValueError(f"{path} is {what}: {size} bytes, {META_FILE} says {checksum['bytes']}")
    if verify:
        got = hash_file(path, checksum["algorithm"])
        if got != checksum["hexdigest"]:
            raise ValueError(
                f"{path} is damaged or not the file {META_FILE} describes: its {checksum['algorithm']} is "
                f"{got[:16]}..., the header says {checksum['hexdigest'][:16]}...; rebuild the cache"
            )
    return path


def open_rows(path: Path, meta: dict, mmap: bool) -> np.ndarray:
    """The rows of a checked ``patterns.npy``, shaped as the header says."""
    try:
        words = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"{path} is not a readable .npy array ({exc})") from None
    expected = sum(words_for(n) for n in meta["widths"])
    if words.dtype != np.int32 or words.shape != (meta["rows"], expected):
        raise ValueError(
            f"{path} holds {words.dtype} {tuple(words.shape)}, {META_FILE} describes int32 "
            f"{(meta['rows'], expected)} (rows x words for widths {meta['widths']})"
        )
    return words
