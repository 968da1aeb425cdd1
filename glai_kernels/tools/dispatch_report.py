"""``glai-autotune --dispatch ARCH [--json]``: which path a model takes on an architecture, and why.

One row per dtype, dot precision, mode and hidden width of the dispatch table (``fused_table``): the path
(``fused``; ``layers``, the per-layer kernels, past the widest fused width), and the worst figures over the fused
kernels that row launches, as lowered for the architecture (registers a thread, spill bytes, shared memory) next
to the architecture's shared-memory limit. The figures come from the stored evidence
(``glai_kernels/tools/dispatch_evidence.json``), so nothing is compiled and no GPU is needed. float64 operands and the
``torch`` backend take the ``torch`` path whatever the width (one row says so).
"""

from __future__ import annotations

import json

from .. import fused_table
from . import dispatch_evidence as ev

COLUMNS = ("arch", "dtype", "precision", "mode", "width", "path", "registers", "spill_bytes", "shared_bytes",
           "shared_limit")  # fmt: skip


def parse_arch(text: str) -> int:
    """``sm_90``, ``sm90`` or ``90`` as the table's capability; a ValueError naming what was expected."""
    t = text.strip().lower().removeprefix("sm_").removeprefix("sm")
    known = ", ".join(f"sm_{c}" for c in fused_table.CAPABILITIES)
    if not t.isdigit() or int(t) not in fused_table.CAPABILITIES:
        raise ValueError(f"argument --dispatch: expected one of {known} (or the number alone), got {text!r}")
    return int(t)


def _evidence() -> tuple[dict | None, str]:
    """The stored evidence of the installed Triton, else of the newest Triton the file holds; and a note."""
    stored = ev.load()
    try:
        version = ev.triton_version()
    except ImportError:
        version = None
    if version in stored:
        stale = stored[version]["sources"] != ev.sources_hash()
        return stored[version], f"Triton {version}" + (" (stale: the kernels changed since)" if stale else "")
    if stored:
        newest = max(stored, key=lambda v: tuple(int(p) for p in v.split(".")[:3] if p.isdigit()))
        return stored[newest], f"Triton {newest} (the installed Triton {version} has none)"
    return None, f"none ({ev.REGENERATE} makes it)"


def rows(capability: int) -> tuple[list[dict], str]:
    found, note = _evidence()
    out = [ev.summary(r, found) for r in ev.rows() if r["arch"] == capability]
    order = {p: i for i, p in enumerate(fused_table.PRECISIONS)}
    out.sort(key=lambda r: (order[r["precision"]], r["mode"] != "given", r["mode"], r["width"]))
    torch_row = dict.fromkeys(COLUMNS)
    torch_row.update(arch=f"sm_{capability}", dtype="float64", precision="fp64", mode="any", width="any",
                     path="torch", shared_limit=out[0]["shared_limit"])  # fmt: skip
    return out + [torch_row], note


def report(capability: int, as_json: bool = False) -> str:
    table, note = rows(capability)
    if as_json:
        return json.dumps(table, indent=1)
    lines = [f"dispatch on sm_{capability}; lowering evidence: {note}",
             "fused up to the widest width of each row's dtype, precision and mode; layers: the per-layer "
             "kernels; - : no figures (not a fused launch)"]  # fmt: skip
    widths = (6, 9, 9, 14, 5, 6, 9, 11, 12, 12)
    lines.append(
        " ".join(f"{c[:w]:>{w}}" if i > 3 else f"{c:<{w}}" for i, (c, w) in enumerate(zip(COLUMNS, widths)))
    )
    for r in table:
        cells = ["-" if r[c] is None else str(r[c]) for c in COLUMNS]
        lines.append(
            " ".join(f"{v:>{w}}" if i > 3 else f"{v:<{w}}" for i, (v, w) in enumerate(zip(cells, widths)))
        )
    return "\n".join(lines)
