"""``--deadline-s S``: the run ends before S seconds of wall clock, whatever a case is doing.

The caller (a lent GPU's call of at most 10 minutes) kills the process at its own limit, and a kernel or an
Inductor build cannot be interrupted from Python. So a daemon thread sleeps until ``S - margin`` seconds after
the process started, then, holding the journal's lock (no other line can be written after its own): writes a
``timeout`` line for the case that is running, the ``summary`` line, prints the closing lines, flushes, and
ends the process with ``os._exit`` (exit status :data:`EXIT_DEADLINE`), leaving the running kernel behind.
Every line written before is on disk already (each one is fsync'd).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

EXIT_DEADLINE = 3
MARGIN_S = 10.0  # before the deadline: the lines, the flush and the exit take well under a second


def process_age() -> float:
    """Seconds since this process started (Linux: ``/proc``), so that the deadline counts its imports too;
    0.0 where that cannot be read."""
    try:
        with open("/proc/self/stat") as f:
            started = int(
                f.read().rsplit(")", 1)[1].split()[19]
            )  # field 22: start time, clock ticks since boot
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - started / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def margin(deadline_s: float) -> float:
    return min(MARGIN_S, 0.1 * deadline_s)


def start(
    run, deadline_s: float, closing: Callable[[], None], summary: Callable[[], dict]
) -> threading.Event:
    """Arm the watchdog of ``run`` (a :class:`bench.gpu.journal.Run`, whose clock started with the process).
    ``summary()``: the summary line's own fields; ``closing()``: prints what the run prints last. Returns the
    event that disarms it (set it when the run returns: a caller in the same process lives on)."""
    fire_at = run.t0 + deadline_s - margin(deadline_s)
    disarm = threading.Event()

    def wait() -> None:
        if not disarm.wait(timeout=max(0.0, fire_at - time.perf_counter())):
            fire(run, deadline_s, closing, summary)

    threading.Thread(target=wait, name="gpu_check deadline", daemon=True).start()
    return disarm


def fire(run, deadline_s: float, closing, summary) -> None:
    journal = run.journal
    locked = journal.lock.acquire(timeout=5.0)  # a line being written finishes first; none after ours
    if run.finished:  # the run wrote its own summary line, or returned: nothing left to do
        if locked:
            journal.lock.release()
        return
    try:
        current = run.current
        if current is not None:
            ran = run.elapsed() - current.get("started", 0.0)
            error = (f"--deadline-s {deadline_s:g}: still running {ran:.0f} s after it started; the process "
                     "exits now (a running kernel cannot be interrupted)")  # fmt: skip
            journal.write_locked(run.record("timeout", **current, status="timeout", ok=False, error=error))
        fields = dict(
            summary(),
            complete=False,
            signal=None,
            timed_out=True,
            deadline_s=deadline_s,
            exit_status=EXIT_DEADLINE,
            timed_out_case=current.get("case") if current else None,
        )
        journal.write_locked(run.record("summary", **run.summary(**fields)))
        where = f" in {current['case']}" if current else ""
        run.echo(f"\ngpu_check: --deadline-s {deadline_s:g} reached{where} at {run.elapsed():.1f} s; "
                 "the summary line is written, exiting")  # fmt: skip
        closing()
    except BaseException as exc:  # the exit below must happen whatever went wrong above
        sys.stderr.write(f"gpu_check: the deadline's lines failed: {type(exc).__name__}: {exc}\n")
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_DEADLINE)
