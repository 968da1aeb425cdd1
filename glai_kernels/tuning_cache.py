"""The persistent autotuning cache: tuned launch configurations per GPU, Triton version and kernel source.

What a launch reads, second of the three tuning modules (see :mod:`glai_kernels.tuning`): it imports only
``tuning``, and :mod:`.launch_configs` reads it; ``tools.tuner`` writes it.

One JSON file per GPU model and Triton version, ``<root>/autotune/<gpu>--triton-<version>.json``, where
``<root>`` is ``$GLAI_CACHE_DIR`` when set, else ``$XDG_CACHE_HOME/glai``, else ``~/.cache/glai``::

    {"format": "glai-autotune", "version": 1, "gpu": "NVIDIA H200", "triton": "3.6.0",
     "kernel_source": "<sha256 of the kernel sources>", "torch": "...", "updated": "<UTC ISO date>",
     "entries": [{"kernel": "gate", "dtype": "bfloat16", "bucket": [2, 1, 1], "shape": [4096, 1024, 1024],
                  "config": {"BLOCK_M": 128, ...}, "ms": 0.031}, ...]}

A file is used only when its GPU, Triton version and kernel-source hash all equal this process's: a tile that was
fastest for other kernel code, another compiler or another GPU proves nothing here. Anything else (unreadable,
not JSON, truncated, another schema, another identity) is ignored with one warning per file and process, and the
kernels run with their defaults: a cache can cost speed, never correctness or a crash. Writes go to a temporary
file in the same folder, then ``os.replace``, so a reader sees the old file or the new one, never half of one.

"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import NamedTuple

import torch

from .tuning import KERNELS, check_tile_config

FORMAT = "glai-autotune"
VERSION = 1
ENV_DIR = "GLAI_CACHE_DIR"
_PACKAGE = Path(__file__).resolve().parent

_identities: dict[int, Identity | None] = {}
_tables: dict[Identity, dict] = {}
_source_hash: str | None = None


class TuningCacheWarning(UserWarning):
    """The autotuning cache could not be used; the kernels run with their default configurations."""


class Identity(NamedTuple):
    """What a tuned configuration is valid for."""

    gpu: str
    triton: str
    kernel_source: str


def cache_root() -> Path:
    """The folder of glai's caches: ``$GLAI_CACHE_DIR``, else ``$XDG_CACHE_HOME/glai``, else ``~/.cache/glai``."""
    env = os.environ.get(ENV_DIR)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "glai"
    try:
        return Path.home() / ".cache" / "glai"
    except RuntimeError:  # no home directory (some containers)
        return Path(tempfile.gettempdir()) / f"glai-{os.getuid() if hasattr(os, 'getuid') else 'user'}"


def check_cache_dir(path=None, name: str = ENV_DIR) -> str | None:
    """Why ``path`` (default: ``$GLAI_CACHE_DIR``) cannot hold glai's caches, as one line naming ``name``,
    what was expected and what came; None when it is unset or fine. A folder that does not exist yet is fine
    when it can be made: the nearest existing path above it must be a folder. Commands call this up front."""
    text = os.environ.get(ENV_DIR) if path is None else str(path)
    if not text:
        return None
    target = Path(text).expanduser()
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.is_dir():
        return None
    kind = "a file" if existing.is_file() else "not a directory"
    where = f"it is {kind}" if existing == target else f"{str(existing)!r} above it is {kind}"
    return f"{name} must be a directory (or a path where one can be made), got {text!r}: {where}"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "unknown"


def cache_path(gpu: str, triton_version: str) -> Path:
    return cache_root() / "autotune" / f"{_slug(gpu)}--triton-{_slug(triton_version)}.json"


def kernel_sources() -> list[Path]:
    """The files whose text defines the kernels and how they are launched: ``per_layer_ops.py``,
    ``per_layer_launch.py`` and everything under ``kernels/``."""
    files = [_PACKAGE / "per_layer_ops.py", _PACKAGE / "per_layer_launch.py"]
    kernels = _PACKAGE / "kernels"
    if kernels.is_dir():
        files += sorted(kernels.rglob("*.py"))
    return [f for f in files if f.is_file()]


def kernel_source_hash(files: list[Path] | None = None) -> str:
    """sha256 over the names and text of the kernel sources (memoised for the default files)."""
    global _source_hash
    if files is None and _source_hash is not None:
        return _source_hash
    h = hashlib.sha256()
    for f in kernel_sources() if files is None else files:
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    digest = h.hexdigest()[:32]
    if files is None:
        _source_hash = digest
    return digest


def triton_version() -> str | None:
    try:
        import triton
    except Exception:  # no Triton here: nothing is tuned, nothing is looked up
        return None
    return str(getattr(triton, "__version__", "unknown"))


def identity(device_index: int) -> Identity | None:
    """The identity of CUDA device ``device_index`` in this process (memoised), None without Triton."""
    if device_index not in _identities:
        version = triton_version()
        ident = None
        if version is not None:
            ident = Identity(torch.cuda.get_device_name(device_index), version, kernel_source_hash())
        _identities[device_index] = ident
    return _identities[device_index]


# What an entry is tuned for besides kernel and shape: the operand dtype, and for fp32 how ``tl.dot``
# multiplies (``per_layer_ops.dot_precision``). IEEE fp32 products run on the FMA units and TF32 ones on the
# tensor cores, so their best tiles differ: fp32 under TF32 is a key of its own.
DTYPE_KEYS = ("float16", "bfloat16", "float32", "tf32")


def dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_key(dtype, precision: str = "ieee") -> str:
    """The cache key of operands of ``dtype`` multiplied with ``tl.dot``'s ``input_precision`` ``precision``
    (which only matters for fp32): ``"tf32"`` for fp32 under TF32, else the dtype's name."""
    name = dtype_name(dtype)
    return "tf32" if name == "float32" and precision == "tf32" else name


def _parse_entries(data, ident: Identity | None) -> tuple[dict, str | None]:
    """``(table, problem)``: the entries of a decoded file, or why the file cannot be used."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return {}, f"it is not a {FORMAT} file"
    if data.get("version") != VERSION:
        return {}, f"it has schema version {data.get('version')!r}, this glai reads version {VERSION}"
    for field in ("gpu", "triton", "kernel_source"):
        if not isinstance(data.get(field), str):
            return {}, f"its {field!r} field is missing"
    if ident is not None:
        for field, want in zip(Identity._fields, ident):
            if data[field] != want:
                return (
                    {},
                    f"it was tuned for {field} {data[field]!r}, this process has {want!r}; rerun glai-autotune",
                )
    entries = data.get("entries")
    if not isinstance(entries, list):
        return {}, "its 'entries' field is not a list"
    table = {}
    try:
        for e in entries:
            bucket = tuple(e["bucket"])
            if e["kernel"] not in KERNELS or e["dtype"] not in DTYPE_KEYS:
                raise ValueError(f"unknown kernel or dtype in {e!r}")
            if len(bucket) != 3 or not all(isinstance(i, int) and not isinstance(i, bool) for i in bucket):
                raise ValueError(f"bad bucket in {e!r}")
            table[(e["kernel"], e["dtype"], bucket)] = check_tile_config(dict(e["config"]))
    except (KeyError, TypeError, ValueError) as exc:
        return {}, f"an entry is malformed ({exc})"
    return table, None


def read(path: Path, ident: Identity | None) -> tuple[dict, str | None, dict | None]:
    """``(table, problem, raw)`` of the cache file at ``path``. A missing file is no problem: an empty table.
    ``ident=None`` skips the identity check (to list a file's content on a machine without the GPU)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}, None, None
    except OSError as exc:
        return {}, f"it cannot be read ({exc})", None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return {}, f"it is not valid JSON, corrupt or truncated ({type(exc).__name__})", None
    table, problem = _parse_entries(data, ident)
    return table, problem, data if problem is None else None


def load(ident: Identity) -> dict:
    """The usable entries of this identity's cache file, ``{(kernel, dtype, bucket): config}``, read once."""
    table = _tables.get(ident)
    if table is None:
        path = cache_path(ident.gpu, ident.triton)
        table, problem, _ = read(path, ident)
        if problem is not None:
            warnings.warn(
                f"ignoring the autotuning cache {path}: {problem}. The kernels use default launch configurations.",
                TuningCacheWarning,
                stacklevel=4,
            )
        _tables[ident] = table
    return table


def save(ident: Identity, entries: list[dict]) -> Path:
    """Merge ``entries`` (dicts with kernel, dtype, bucket, config and optional shape/ms) into this identity's
    cache file, replacing those of the same kernel, dtype and bucket, and write it atomically."""
    path = cache_path(ident.gpu, ident.triton)
    path.parent.mkdir(parents=True, exist_ok=True)
    _, problem, old = read(path, ident)
    merged = {}
    for e in (old or {}).get("entries", []) + list(entries):
        e = dict(e, bucket=list(e["bucket"]), config=check_tile_config(e["config"]))
        merged[(e["kernel"], e["dtype"], tuple(e["bucket"]))] = e
    data = {
        "format": FORMAT,
        "version": VERSION,
        **ident._asdict(),
        "torch": torch.__version__,
        "updated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "entries": [merged[k] for k in sorted(merged)],
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _tables.pop(ident, None)
    return path


def forget() -> None:
    """Drop the loaded tables and identities, so the next lookup reads the files again."""
    global _source_hash
    _tables.clear()
    _identities.clear()
    _source_hash = None
