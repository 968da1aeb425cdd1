"""The run's record: one JSON line per check or timing, on disk the moment it is known, and the run's clock.

A line is written with one ``os.write`` of the whole line to a file opened for appending, then ``fsync``: a
run killed at any point (timeout, OOM kill, a hung kernel, the lease ending) leaves every line written before
it complete. Non-finite floats become the strings ``"nan"``, ``"inf"`` and ``"-inf"``, so every line is strict
JSON.

Line kinds: ``preflight`` (always first), ``plan`` (every case the run means to do, per section), ``check``,
``timing``, ``step``, ``skip`` (a case not run, with the reason), ``crash`` (a case that raised: its innermost
exception and our own line, :mod:`bench.gpu.failures`), ``timeout`` (the case running when the watchdog of
``--deadline-s`` fired) and ``summary`` (last, when the run reached its end, was stopped by a signal it could
handle, or by its deadline).

A case whose error left the CUDA context unusable (an illegal memory access, ...) poisons the run: every case
after it is recorded as skipped with that reason, never run, and the run ends with exit status 1.

``GPU_CHECK_INJECT`` (tests only) plants a failure in the first case whose id contains a text:
``cuda-error:TEXT`` raises a sticky CUDA error there, ``hang:TEXT`` makes it sleep until the process ends.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

FILE_NAME = "gpu_check.jsonl"
INJECT_ENV = "GPU_CHECK_INJECT"
INJECTED_CUDA_ERROR = "CUDA error: an illegal memory access was encountered"


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived: stop the run, write the summary line. A BaseException so no case's
    ``except Exception`` takes it for a failure of that case."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def dumps(record: dict) -> str:
    return json.dumps(_clean(record), allow_nan=False, default=str)


class Journal:
    """Appends lines to ``path`` (``None``: keeps them in memory only, as the compile-count replay does)."""

    def __init__(self, path: Path | None):
        self.path = path
        self.lines: list[dict] = []
        self.lock = threading.Lock()  # the watchdog thread writes its lines under it, then exits holding it
        self._fd = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists():  # a run starts its file afresh; the previous one is kept once
                os.replace(path, path.with_suffix(".prev.jsonl"))
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, record: dict) -> None:
        with self.lock:
            self.write_locked(record)

    def write_locked(self, record: dict) -> None:
        self.lines.append(record)
        if self._fd is None:
            return
        data = (dumps(record) + "\n").encode()
        while data:  # a regular file takes the whole line in one write; the loop only guards short writes
            data = data[os.write(self._fd, data) :]
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass
class Case:
    """One unit of work in its own ``try``. ``fn(emit)`` runs it and calls ``emit(**fields)`` once per line;
    ``base`` holds the fields every line of the case shares (what, shape, dtype)."""

    id: str
    fn: Callable
    base: dict = field(default_factory=dict)
    unavailable: str | None = None  # recorded as skipped with this reason, never run


@dataclass
class Section:
    name: str
    cases: list[Case]


@dataclass
class Tally:
    cases: int = 0
    ok: int = 0
    fail: int = 0
    crash: int = 0
    skipped: int = 0
    notes: list[str] = field(default_factory=list)


class Run:
    """The clock, the budget (counted from the end of the preflight) and the journal of one run."""

    MAX_NOTES = 3  # failures named per section on standard output (the JSONL has every one)

    def __init__(self, journal: Journal, budget_s: float, echo: Callable[[str], None] = print, probe=None,
                 age_s: float = 0.0):  # fmt: skip
        self.journal = journal
        self.budget_s = budget_s
        self.echo = echo
        self.probe = probe  # on a GPU: whether the device still answers after an error (see failures)
        self.t0 = time.perf_counter() - age_s  # age_s: how long the process ran before (its imports)
        self.t_budget = self.t0  # reset when the preflight ends
        self.tallies: dict[str, Tally] = {}
        self.state: dict = {}  # figures later cases use (the measured memory rate)
        self.current: dict | None = None  # the fields of the case running now (the watchdog's timeout line)
        self.poisoned: str | None = None  # the sticky CUDA error that ended the run, and where
        self.inject = _injection(os.environ.get(INJECT_ENV, ""))
        self.finished = False  # the summary line is written: the watchdog has nothing left to do

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def spent(self) -> float:
        return time.perf_counter() - self.t_budget

    def start_budget(self) -> None:
        self.t_budget = time.perf_counter()

    def record(self, kind: str, **fields) -> dict:
        return {"kind": kind, "t": round(self.elapsed(), 3), **fields}

    def write(self, kind: str, **fields) -> dict:
        record = self.record(kind, **fields)
        self.journal.write(record)
        return record

    # ------------------------------------------------------------------ cases
    def run_section(self, section: Section) -> Tally:
        tally = self.tallies.setdefault(section.name, Tally())
        start = time.perf_counter()
        self.echo(f"[{self.elapsed():6.1f}s] {section.name} ({len(section.cases)} cases) ...", end="")
        try:
            for case in section.cases:
                self.run_case(section.name, case, tally)
        finally:
            parts = [f"{tally.ok} lines ok"] + [
                f"{n} {what}" for what, n in (("FAILED", tally.fail), ("CRASHED", tally.crash)) if n
            ]
            if tally.skipped:
                parts.append(f"{tally.skipped} skipped")
            self.echo(f" {', '.join(parts)} ({time.perf_counter() - start:.1f} s)")
            for note in tally.notes[: self.MAX_NOTES]:
                self.echo(f"    {note}")
            if len(tally.notes) > self.MAX_NOTES:
                self.echo(f"    ... and {len(tally.notes) - self.MAX_NOTES} more in the JSONL")
        return tally

    def run_case(self, section: str, case: Case, tally: Tally) -> None:
        tally.cases += 1
        base = {"section": section, "case": case.id, **case.base}
        reason = case.unavailable
        if reason is None and self.poisoned is not None:
            reason = f"poisoned context: {self.poisoned}"
        if reason is None and self.spent() > self.budget_s:
            reason = f"time budget: {self.spent():.0f} s spent of {self.budget_s:.0f} s"
        if reason is not None:
            tally.skipped += 1
            self.write("skip", **base, status="skipped", ok=None, error=reason)
            return

        def emit(kind: str = "check", ok: bool | None = True, **fields) -> None:
            fields = {**base, **fields}
            status = fields.pop("status", None) or ("ok" if ok else "fail")
            if status == "skipped":
                tally.skipped += 1
            elif ok:
                tally.ok += 1
            else:
                tally.fail += 1
                note = f"FAIL {case.id}: {fields.get('what', '')} {_figure(fields)}".rstrip()
                tally.notes.append(note[:160])
            self.write(kind, **fields, status=status, ok=ok)

        self.current = dict(base, started=round(self.elapsed(), 3))
        try:
            self._injected(case.id)
            case.fn(emit)
        except Exception as exc:
            from bench.gpu import failures

            tally.crash += 1
            fields = failures.describe(exc)
            self.write("crash", **base, status="crash", ok=False, **fields)
            tally.notes.append(f"CRASH {case.id}: {fields['error']}"[:160])
            self.poisoned = failures.poisoned(exc, self.probe)
            if self.poisoned is not None:
                self.poisoned = f"{self.poisoned} (in {case.id})"
                tally.notes.insert(0, f"POISONED context: every later case is skipped ({case.id})"[:160])
        finally:
            self.current = None

    def _injected(self, case_id: str) -> None:
        if self.inject is None or self.inject[1] not in case_id:
            return
        what, _ = self.inject
        self.inject = None  # the first matching case only
        if what == "cuda-error":
            raise RuntimeError(INJECTED_CUDA_ERROR)
        while True:  # "hang": as a kernel that never returns; only the watchdog or a signal ends it
            time.sleep(0.1)

    # ------------------------------------------------------------------ totals
    def totals(self) -> Tally:
        total = Tally()
        for t in self.tallies.values():
            for name in ("cases", "ok", "fail", "crash", "skipped"):
                setattr(total, name, getattr(total, name) + getattr(t, name))
        return total

    def exit_status(self) -> int:
        total = self.totals()
        return 1 if total.fail or total.crash or self.poisoned else 0

    def summary(self, **fields) -> dict:
        """The summary line's fields: the tallies, the wall time and how the run ended (``fields``)."""
        total = self.totals()
        return dict(fields, wall_s=round(self.elapsed(), 1), cases=total.cases, ok_lines=total.ok,
                    failed_lines=total.fail, crashed_cases=total.crash, skipped_cases=total.skipped,
                    poisoned=self.poisoned)  # fmt: skip


def _injection(text: str) -> tuple[str, str] | None:
    """``GPU_CHECK_INJECT``'s ``(what, case text)``; a value of another form is refused by name."""
    if not text:
        return None
    what, sep, where = text.partition(":")
    if not sep or what not in ("cuda-error", "hang") or not where:
        raise ValueError(f"{INJECT_ENV}: expected 'cuda-error:TEXT' or 'hang:TEXT', got {text!r}")
    return what, where


def _figure(fields: dict) -> str:
    value, unit = fields.get("value"), fields.get("unit", "")
    if isinstance(value, float):
        tol = fields.get("tol")
        return f"{value:.2e} {unit}" + (f" (tolerance {tol:.0e})" if tol else "")
    if fields.get("error"):
        return str(fields["error"])[:120]
    return ""
