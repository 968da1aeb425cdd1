"""Reading a run's JSONL back, whole or cut short, and the tables made from it (terminal and Markdown).

``gpu_check`` prints these tables while it runs; :mod:`bench.gpu.report` (``python -m bench.gpu_report``)
writes them, with the run's CSV rows and plots, into ``bench/results``."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

from bench.gpu import configs
from bench.head_step import VARIANTS

SHORT = {v.name: v.short for v in VARIANTS}
STEP_ROWS = 10  # heads in the closing table on standard output (the headline's first; the report has all)
DTYPE_ABBREV = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "tf32": "tf32"}


def read(path: Path) -> tuple[list[dict], int]:
    """``(records, bad)``: every line that parses as a JSON object, and how many did not (a killed run can
    leave its last line cut)."""
    records, bad = [], 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if isinstance(rec, dict):
                records.append(rec)
            else:
                bad += 1
    return records, bad


def num(value) -> float:
    """A figure of a line: floats stay, the strings "nan"/"inf" become floats, anything else NaN."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return math.nan


def first(records, kind):
    return next((r for r in records if r.get("kind") == kind), None)


def missing(records: list[dict]) -> dict:
    """What a cut-short run did not record: ``{section: [case ids]}`` of the plan line with no line of their
    own, in plan order (empty when the plan line itself is missing)."""
    plan = first(records, "plan")
    done = {r.get("case") for r in records if r.get("case")}
    out = {}
    for section in (plan or {}).get("sections", []):
        left = [c for c in section.get("cases", []) if c not in done]
        if left:
            out[section["name"]] = left
    return out


def status_lines(records: list[dict], bad: int = 0) -> list[str]:
    summary, pre = first(records, "summary"), first(records, "preflight")
    lines = []
    if pre is None:
        lines.append("no preflight line: this is not a gpu_check JSONL, or its first line was lost")
    elif not pre.get("ok"):
        lines.append(f"the preflight refused to run: {pre.get('error')}")
    if bad:
        lines.append(f"{bad} line(s) are not complete JSON (a run killed while writing): ignored")
    cases = [r for r in records if r.get("case")]
    counts = Counter(r.get("status") for r in cases)
    if summary is None and pre is not None and pre.get("ok"):
        last = cases[-1] if cases else None
        where = f"; last line at {last.get('t')} s, {last.get('case')}" if last else ""
        lines.append(
            f"INCOMPLETE: the run stopped before its end (no summary line: killed or timed out){where}"
        )
    elif summary is not None and summary.get("timed_out"):
        lines.append(f"INCOMPLETE: stopped at --deadline-s {summary.get('deadline_s'):g} while running "
                     f"{summary.get('timed_out_case')}")  # fmt: skip
    elif summary is not None and not summary.get("complete"):
        lines.append(f"INCOMPLETE: stopped by signal {summary.get('signal')}")
    if summary is not None and summary.get("poisoned"):
        lines.append(f"POISONED: {summary['poisoned']}; every later case skipped")
    for section, ids in missing(records).items():
        shown = ", ".join(ids[:3]) + (f", ... ({len(ids)} in all)" if len(ids) > 3 else "")
        lines.append(f"missing from {section}: {shown}")
    skipped = Counter((r.get("error") or "").split(":")[0] for r in cases if r.get("status") == "skipped")
    tally = ", ".join(f"{counts[s]} {s}" for s in ("ok", "fail", "crash", "timeout", "skipped") if counts[s])
    why = ", ".join(f"{n} {reason}" for reason, n in skipped.most_common())
    lines.append(f"lines: {tally or 'none'}" + (f" (skipped: {why})" if why else ""))
    worst = {}
    for r in records:
        if r.get("kind") == "check" and r.get("unit") == "rel_err":
            worst[r["dtype"]] = max(worst.get(r["dtype"], 0.0), num(r.get("value")), key=_nan_high)
    for dtype, err in worst.items():
        lines.append(f"largest relative error vs float64, {dtype}: {err:.2e}")
    sources = Counter(
        s.strip() for r in records if r.get("config_source") not in (None, "none")
        for s in str(r["config_source"]).split("+")
    )  # fmt: skip
    if sources:
        lines.append("launch configs: " + ", ".join(f"{k} ({n} lines)" for k, n in sources.most_common()))
    if summary is not None:
        lines.append(f"exit status {summary.get('exit_status')}, {summary.get('wall_s')} s in all")
    return lines


def _nan_high(x: float) -> float:
    return math.inf if math.isnan(x) else x


def kernel_rows(records):
    return [
        r
        for r in records
        if r.get("kind") == "timing" and r.get("what") != "copy" and r.get("status") == "ok"
    ]


def memory_rate(records) -> float | None:
    r = next((r for r in records if r.get("kind") == "timing" and r.get("what") == "copy"), None)
    return num(r.get("value")) if r and r.get("status") == "ok" else None


def step_table(records) -> tuple[list[str], list[list[str]]]:
    """Head x variant: the eager MLP's ms, every other variant as its speedup over it."""
    points: dict[tuple, dict] = {}
    for r in records:
        if r.get("section") not in ("headline", "steps", "compiled") or r.get("what") not in SHORT:
            continue
        key = (r.get("shape"), r.get("dtype"))
        row = points.setdefault(key, {})
        row[SHORT[r["what"]]] = r
    columns = [v.short for v in VARIANTS]
    head = ["head", "dtype", "eager ms", *[f"{c} x" for c in columns[1:]], "floor ms"]
    rows = []
    for (shape, dtype), cells in points.items():
        eager = cells.get("eager")
        base = num(eager.get("value")) if eager and eager.get("status") == "ok" else math.nan
        row = [shape, DTYPE_ABBREV.get(dtype, dtype), _ms(base)]
        row += [_cell(cells.get(c), base) for c in columns[1:]]
        floor = num(eager.get("floor_ms")) if eager else math.nan
        row.append(_ms(floor))
        rows.append(row)
    return head, rows


def _cell(rec: dict | None, base: float) -> str:
    """A variant's speedup over the eager MLP (its ms without an eager figure), or why there is none."""
    if rec is None:
        return ""
    if rec.get("status") == "ok":
        ms = num(rec.get("value"))
        return _ms(ms) if math.isnan(base) else f"{base / ms:.2f}"
    if rec.get("status") in ("crash", "fail"):
        return rec["status"].upper()
    return "n/a" if "unavailable" in str(rec.get("error")) else "-"


def _ms(x: float) -> str:
    return "-" if math.isnan(x) else (f"{x:.3f}" if x < 100 else f"{x:.0f}")


def kernel_table(records) -> tuple[list[str], list[list[str]]]:
    head = [
        "kernel",
        "dtype",
        "batch x in x out",
        "ms",
        "TFLOP/s",
        "cuBLAS ms",
        "% cuBLAS",
        "config (source)",
    ]
    rows = []
    for r in kernel_rows(records):
        cfg = r.get("config")
        cfg_s = configs.short(cfg) if isinstance(cfg, dict) else str(cfg)
        dtype = DTYPE_ABBREV.get(r["dtype"], r["dtype"])
        rows.append([r["what"], dtype, r["shape"], _ms(num(r["value"])), f"{num(r.get('tflops')):.0f}",
                     _ms(num(r.get("baseline_ms"))), f"{num(r.get('pct_of_cublas')):.1f}",
                     f"{cfg_s} ({r.get('config_source')})"])  # fmt: skip
    return head, rows


def kernel_pivot(records) -> tuple[list[str], list[list[str]]]:
    """The terminal's kernel table: a row per kernel and shape, each dtype's TFLOP/s and % of cuBLAS side by
    side (the Markdown report keeps a row per dtype, with times and configurations)."""
    cells: dict[tuple, dict] = {}
    dtypes: list[str] = []
    for r in kernel_rows(records):
        dtype = DTYPE_ABBREV.get(r["dtype"], r["dtype"])
        if dtype not in dtypes:
            dtypes.append(dtype)
        cells.setdefault((r["what"], r["shape"]), {})[dtype] = r
    head = ["kernel", "batch x in x out"]
    for dtype in dtypes:
        head += [f"{dtype} TFLOP/s", f"{dtype} %cuBLAS"]
    rows = []
    for (what, shape), by_dtype in cells.items():
        row = [what, shape]
        for dtype in dtypes:
            r = by_dtype.get(dtype)
            row += (
                ["-", "-"]
                if r is None
                else [f"{num(r.get('tflops')):.0f}", f"{num(r.get('pct_of_cublas')):.1f}"]
            )
        rows.append(row)
    return head, rows


def _drop_empty(head, rows):
    """Without the columns no head has a figure in (the fused variants before that path exists)."""
    keep = [i for i, h in enumerate(head) if i < 3 or any(row[i] not in ("", "-", "n/a") for row in rows)]
    return [head[i] for i in keep], [[row[i] for i in keep] for row in rows]


def _text(head, rows, limit: int | None = None) -> list[str]:
    shown = rows if limit is None else rows[:limit]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *shown)] if shown else [len(h) for h in head]
    fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    out = [fmt.format(*head)] + [fmt.format(*row) for row in shown]
    if limit is not None and len(rows) > limit:
        out.append(f"... {len(rows) - limit} more rows: python -m bench.gpu_report")
    return out


def _markdown(head, rows) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + [
        "| " + " | ".join(str(c) for c in row) + " |" for row in rows
    ]


def headline(records, section: str) -> str:
    """The headline as soon as its cases are done: ``headline`` the step table of its heads (eager ms, every
    other variant's speedup), ``headline-kernels`` each kernel's TFLOP/s and % of cuBLAS."""
    mine = [r for r in records if r.get("section") == section]
    if section == "headline-kernels":
        rows = [[r["what"], r["shape"], DTYPE_ABBREV.get(r["dtype"], r["dtype"]), f"{num(r.get('tflops')):.0f}",
                 f"{num(r.get('pct_of_cublas')):.1f}"] for r in kernel_rows(mine)]  # fmt: skip
        head = ["headline kernel", "batch x in x out", "dtype", "TFLOP/s", "% cuBLAS"]
        return "\n".join(_text(head, rows)) if rows else ""
    head, rows = _drop_empty(*step_table(mine))
    if not rows:
        return ""
    return "\n".join(["headline: ms of the eager MLP, each other variant's speedup over it (x):"]
                     + _text(head[:-1], [r[:-1] for r in rows]))  # fmt: skip


def plan_text(rows: list[dict], budget_s: float, deadline_s: float, preflight_s: float, crashes) -> str:
    """``--plan``: the headline sections case by case, every later section as one line (its first case's start,
    its case count, how many start past the budget)."""
    from bench.gpu.plan import HEADLINE_SECTIONS

    out = [
        f"plan: deadline {deadline_s:g} s; preflight about {preflight_s:g} s; budget {budget_s:.0f} s after it "
        f"(first third: {budget_s / 3:.0f} s); estimated start of each case, seconds after the preflight:"
    ]
    sections: dict[str, list] = {}
    for r in rows:
        sections.setdefault(r["section"], []).append(r)
    for name, cases in sections.items():
        late = sum(r["est_start_s"] > budget_s for r in cases)
        out.append(f"  {name}: {len(cases)} cases from {cases[0]['est_start_s']:.0f} s"
                   + (f", {late} past the budget" if late else ""))  # fmt: skip
        if name in HEADLINE_SECTIONS:
            out += [f"    {r['est_start_s']:6.1f} s  (+{r['est_s']:5.1f} s)  {r['case']}" for r in cases]
    end = rows[-1]["est_start_s"] + rows[-1]["est_s"] if rows else 0.0
    out.append(f"  all {len(rows)} cases: about {end:.0f} s; "
               f"{sum(r['est_start_s'] > budget_s for r in rows)} would start past the budget")  # fmt: skip
    out += [f"  replay crash (not counted): {c}" for c in crashes[:5]]
    return "\n".join(out)


def terminal(records, bad: int = 0) -> str:
    """The table printed last by gpu_check: kernels, memory rate, steps (capped), then the status lines."""
    lines = []
    _, rows = kernel_table(records)
    if rows:
        lines += _text(*kernel_pivot(records))
        used = Counter(r[-1] for r in rows)
        lines.append("launch configs: " + "; ".join(f"{cfg} x{n}" for cfg, n in used.most_common()))
    rate = memory_rate(records)
    if rate is not None and not math.isnan(rate):
        lines.append(f"memory rate (device-to-device copy, read + write): {rate:.0f} GB/s")
    head, rows = _drop_empty(*step_table(records))
    if rows:
        lines += ["", "training step: ms of the eager MLP, and each variant's speedup over it (x):"]
        lines += _text(head, rows, limit=STEP_ROWS)
    lines += [""] + status_lines(records, bad)
    return "\n".join(lines)


def markdown(records, bad: int = 0, source: str = "") -> str:
    pre = first(records, "preflight") or {}
    title = pre.get("gpu", "unknown device")
    out = [f"# gpu_check: {title}", ""]
    facts = ", ".join(
        f"{k} {pre[k]}" for k in ("torch", "triton", "cuda_runtime", "driver", "python") if pre.get(k)
    )
    if pre:
        out += [f"{facts}; {pre.get('sm_count', '-')} SMs, capability {pre.get('capability', '-')}, "
                f"{pre.get('memory_gib', '-')} GiB. Source: `{source}`.", ""]  # fmt: skip
    out += ["## Status", ""] + [f"- {line}" for line in status_lines(records, bad)] + [""]
    head, rows = kernel_table(records)
    if rows:
        out += ["## Kernels against cuBLAS (same GEMM)", ""] + _markdown(head, rows) + [""]
    rate = memory_rate(records)
    if rate is not None and not math.isnan(rate):
        out += [f"Memory rate (device-to-device copy, bytes read + written): {rate:.0f} GB/s.", ""]
    head, rows = step_table(records)
    if rows:
        legend = "; ".join(f"`{v.short}` {v.name}" for v in VARIANTS)
        out += ["## Training steps of a head (forward, backward, Adam)", "",
                f"Eager MLP in ms, every other variant as its speedup over it. {legend}. `floor ms`: the "
                "least bytes a step can move over the measured memory rate.", ""]  # fmt: skip
        out += _markdown(head, rows) + [""]
    bad_lines = [r for r in records if r.get("status") in ("fail", "crash")]
    if bad_lines:
        out += ["## Failures and crashes", ""]
        out += [
            f"- `{r.get('case')}` {r.get('what', '')}: {r.get('error') or r.get('value')}" for r in bad_lines
        ]
        out.append("")
    return "\n".join(out)
