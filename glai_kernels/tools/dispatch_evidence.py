"""The dispatch table's evidence: every fused kernel the table can pick, lowered for its architecture.

    python -m glai_kernels.tools.dispatch_evidence            regenerate the evidence of the installed Triton
    python -m glai_kernels.tools.dispatch_evidence --check    exit 1 (naming the entries) if it is stale or refused

For each architecture, dot precision and mode of ``fused_table.TABLE`` the rows are the widest hidden width
the table allows and the width just past the power of two below it (e.g. 257 when the widest is 512): the
fused forward in that mode, the data-gradient chain and the weight gradient are compiled for the architecture
(``fused_lowering``, Triton's compiler and ``ptxas -v``, no GPU) with the table's configuration, and each must
pass ``lowering.refusal`` (no spill, registers and shared memory within the architecture's). One width past the
widest is listed as a ``layers`` row: the per-layer kernels take it (their defaults are lowered by
``tests/_lower_kernels.py``).

Lowering everything takes minutes, so the figures are kept in ``dispatch_evidence.json`` beside this module, one
block per Triton version, keyed by a hash of the kernels' sources; each lowering is keyed by its table entry
(kernel, architecture, precision, mode, width, configuration). CI refuses a file whose hash or entries do not
match the code and lowers a fixed sample of entries to confirm the stored figures. ``glai-autotune --dispatch``
prints the rows from the file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from .. import fused_table
from .lowering import refusal, shared_limit

EVIDENCE = Path(__file__).with_name("dispatch_evidence.json")
REGENERATE = "python -m glai_kernels.tools.dispatch_evidence"
# What a fused lowering depends on: the fused kernels and every kernel module they import (followed by
# :func:`kernel_sources`), and the host modules that lower them. The per-layer kernels are not among them.
_ROOTS = ("kernels/fused_forward.py", "kernels/fused_backward.py")
_HOST = ("tools/fused_lowering.py", "tools/lowering.py", "layout.py", "dropout_launch.py", "dropout.py")
FIELDS = ("registers", "spill_stores", "spill_loads", "shared")


def triton_version() -> str:
    import triton

    return triton.__version__


def kernel_sources() -> list[str]:
    """The kernel modules a fused lowering compiles: the fused kernels and, transitively, the ``kernels/``
    modules they import (``from .name import ...``), as paths relative to the package."""
    root = Path(__file__).parents[1]  # the package
    seen, todo = set(), list(_ROOTS)
    while todo:
        rel = todo.pop()
        if rel in seen:
            continue
        seen.add(rel)
        for line in (root / rel).read_text().splitlines():
            if line.startswith("from .") and not line.startswith("from . "):
                todo.append(f"kernels/{line.split()[1][1:]}.py")
    return sorted(seen)


def sources_hash() -> str:
    """sha256 of the sources whose change can change a fused lowering (the kernels, how they are lowered)."""
    root = Path(__file__).parents[1]  # the package
    h = hashlib.sha256()
    for rel in [*kernel_sources(), *_HOST]:
        h.update(rel.encode() + b"\0" + (root / rel).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def widths(widest: int) -> list[int]:
    """The fused widths of an entry: the widest and the one just past the power of two below it."""
    if widest <= 0:
        return []
    below = 1 << (widest - 1).bit_length() - 1
    return sorted({widest, below + 1} if below >= 16 else {widest})


def rows() -> list[dict]:
    """One row per (architecture, precision, mode, width) with its path and the lowerings it stands on."""
    out = []
    for (cap, prec), (chain, modes) in sorted(fused_table.TABLE.items()):
        weights = fused_table.weights_config(cap, fused_table.DTYPE_OF[prec], prec.removeprefix("fp32-"))
        for mode, widest in sorted(modes.items()):
            for width in widths(widest):
                jobs = [
                    *(_job("forward", cap, prec, width, chain, mode, drop) for drop in (False, True)),
                    *(_job("grad_data", cap, prec, width, chain, None, drop) for drop in (False, True)),
                    _job("grad_weights", cap, prec, width, weights),
                ]
                out.append(dict(arch=cap, precision=prec, mode=mode, width=width, path="fused", jobs=jobs))
            layers = max(widest, 16) + 1
            out.append(dict(arch=cap, precision=prec, mode=mode, width=layers, path="layers", jobs=[]))
    return out


def _job(
    kernel: str, cap: int, prec: str, width: int, cfg: dict, mode: int | None = None, dropout: bool = False
) -> str:
    """The key of one lowering: everything of the table entry it depends on. ``dropout``: the kernel with its
    in-kernel dropout masks (a Philox draw in every hidden epilogue, ``kernels/dropout.py``), a kernel of its
    own that the dispatcher sends wherever a model has a dropout rate."""
    cfg_text = ",".join(f"{k}={v}" for k, v in sorted(cfg.items()))
    m = "" if mode is None else f" mode={mode}"
    d = " dropout" if dropout else ""
    return f"{kernel} sm{cap} {prec} w={width}{m}{d} {cfg_text}"


def _parse(job: str) -> tuple:
    kernel, sm, prec, w, *rest = job.split()
    mode = int(rest.pop(0)[5:]) if rest[0].startswith("mode=") else None
    dropout = rest[0] == "dropout"
    if dropout:
        rest.pop(0)
    cfg = {}
    for item in rest[0].split(","):
        k, v = item.split("=")
        cfg[k] = None if v == "None" else int(v)
    return kernel, int(sm[2:]), prec, int(w[2:]), mode, cfg, dropout


def lower_job(job: str) -> dict:
    """Compile one job and return its figures (raises where it does not compile)."""
    from . import fused_lowering as fl

    kernel, cap, prec, width, mode, cfg, dropout = _parse(job)
    dt, dot = fl.TRITON_TYPES[prec]
    rate = 0.1 if dropout else 0.0  # the rate is a constant of the kernel: any rate gives the same code
    if kernel == "forward":
        _, thunk = fl.forward_case(width, dt, dot, cap, cfg, mode=mode, dropout=rate)
    elif kernel == "grad_data":
        _, thunk = fl.data_case(width, dt, dot, cap, cfg, dropout=rate)
    else:
        _, thunk = fl.weights_case(width, dt, dot, cap, dict(cfg, SPLITS=8))
    res = thunk()
    return {k: res[k] for k in FIELDS}


def _timed(job: str) -> tuple[str, dict]:
    start = time.perf_counter()
    try:
        res = lower_job(job)
    except Exception as exc:
        res = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    res["seconds"] = round(time.perf_counter() - start, 1)
    return job, res


def load() -> dict:
    return json.loads(EVIDENCE.read_text()) if EVIDENCE.exists() else {}


def block(evidence: dict | None = None, version: str | None = None) -> dict | None:
    """The evidence of the installed Triton (or ``version``), or None."""
    evidence = load() if evidence is None else evidence
    return evidence.get(version or triton_version())


def problems(evidence: dict | None = None, version: str | None = None) -> list[str]:
    """What is wrong with the stored evidence of this Triton for the current code and table (empty: none)."""
    version = version or triton_version()
    found = block(evidence, version)
    fix = f"regenerate it with `{REGENERATE}`"
    if found is None:
        return [f"{EVIDENCE.name} holds no evidence for Triton {version}: {fix}"]
    if found["sources"] != sources_hash():
        return [f"{EVIDENCE.name} is stale for Triton {version}: the kernel sources changed (hash "
                f"{found['sources']}, now {sources_hash()}): {fix}"]  # fmt: skip
    out = []
    for job, cap in sorted({(j, r["arch"]) for r in rows() for j in r["jobs"]}):
        fig = found["jobs"].get(job)
        if fig is None:
            out.append(f"no lowering of `{job}` (the table changed): {fix}")
        elif "error" in fig:
            out.append(f"`{job}` does not compile: {fig['error']}")
        elif (why := refusal(fig, cap)) is not None:
            out.append(f"`{job}` is in the table but {why}")
    return out


def summary(row: dict, found: dict | None) -> dict:
    """A row as ``glai-autotune --dispatch`` prints it: the worst figures over its lowerings."""
    figs = [found["jobs"].get(j, {}) for j in row["jobs"]] if found else []
    have = bool(figs) and all("registers" in f for f in figs)
    return {
        "arch": f"sm_{row['arch']}",
        "dtype": str(fused_table.DTYPE_OF[row["precision"]]).replace("torch.", ""),
        "precision": row["precision"],
        "mode": fused_table.MODE_NAMES[row["mode"]],
        "width": row["width"],
        "path": row["path"],
        "registers": max(f["registers"] for f in figs) if have else None,
        "spill_bytes": max(f["spill_stores"] + f["spill_loads"] for f in figs) if have else None,
        "shared_bytes": max(f["shared"] for f in figs) if have else None,
        "shared_limit": shared_limit(row["arch"]),
    }


def _store(version: str, found: dict) -> dict:
    """Write ``found`` as the evidence of Triton ``version``, keeping every other version's block as the file
    holds it now (runs with two Tritons may write at once: a lock, and a rename so a reader never sees half)."""
    import fcntl

    with open(EVIDENCE.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        evidence = load()
        evidence[version] = found
        tmp = EVIDENCE.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(evidence, indent=1, sort_keys=True) + "\n")
        tmp.replace(EVIDENCE)
    return evidence


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only check the stored evidence")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiler processes")
    ap.add_argument(
        "--arch", type=int, help="only this architecture's lowerings (e.g. 90); the rest are kept"
    )
    args = ap.parse_args(argv)
    if args.check:
        found = problems()
        print("\n".join(found) or f"{EVIDENCE.name}: up to date for Triton {triton_version()}")
        return 1 if found else 0
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: interpreted kernels cannot be compiled", file=sys.stderr)
        return 2
    order = {90: 0, 80: 1, 86: 2}  # the GPU check's architecture first: a long run is useful when cut short
    # Widths past a power of two first: their masked columns are where registers run out.
    todo = sorted(
        {j for r in rows() for j in r["jobs"]},
        key=lambda j: (order.get(_parse(j)[1], 9), _parse(j)[3] & (_parse(j)[3] - 1) == 0, j),
    )
    todo = [j for j in todo if args.arch is None or _parse(j)[1] == args.arch]
    version, sources = triton_version(), sources_hash()
    old = block(version=version) or {}
    jobs = old.get("jobs", {}) if old.get("sources") == sources else {}
    jobs = {j: f for j, f in jobs.items() if "error" not in f}
    start = time.perf_counter()
    with ProcessPoolExecutor(max(1, args.jobs)) as pool:
        for job, res in pool.map(_timed, [j for j in todo if j not in jobs]):
            jobs[job] = res
            print(json.dumps({"job": job, **res}), flush=True)
            _store(version, {"sources": sources, "jobs": dict(sorted(jobs.items()))})  # kept as it grows
    needed = {j for r in rows() for j in r["jobs"]}
    evidence = _store(
        version, {"sources": sources, "jobs": {j: f for j, f in sorted(jobs.items()) if j in needed}}
    )
    bad = problems(evidence, version)
    print(f"{len(todo)} lowerings, {time.perf_counter() - start:.0f} s; {len(bad)} problems", file=sys.stderr)
    print("\n".join(bad), file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
