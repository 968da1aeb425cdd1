"""``python bench/gpu_check.py --out DIR``: check and time the kernels on a GPU, each result kept as it comes.

Exit status: 0 every check passed and no case crashed; 1 a check failed or a case crashed (the run went on),
or a CUDA error poisoned the context (every later case skipped); 2 a bad flag or environment, or no CUDA (one
line, after the preflight); 3 the watchdog of ``--deadline-s`` ended the run (its ``timeout`` and summary lines
written); 128 + n when stopped by signal n (SIGTERM, SIGINT), after writing the summary line.

The run sets ``GLAI_STRICT=1``: a launch that fails to compile raises (a crash line naming it) instead of
falling back to a slower path, so a figure is always the path it says it is.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
import warnings
from pathlib import Path

from bench.gpu import plan, watchdog
from bench.gpu.journal import FILE_NAME, Interrupted, Journal, Run

ROOT = Path(__file__).resolve().parents[2]
PROG = "gpu_check"


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line naming the flag, what was expected and what came; never a usage dump
        sys.stderr.write(f"{PROG}: {message} (see --help)\n")
        raise SystemExit(2)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _sections(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    wrong = [n for n in names if n not in plan.SECTIONS]
    if not names or wrong:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(plan.SECTIONS)}, got {text!r}"
        )
    return names


def _folder(text: str) -> Path:
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"expected a folder, got the file {text!r}")
    return path


def parser() -> Parser:
    p = Parser(
        prog="python bench/gpu_check.py",
        description="Check the GLAI Triton kernels against the float64 reference on CUDA, then time them "
        "against cuBLAS and training steps of a classification head against a plain PyTorch MLP (eager and "
        "torch.compile). Needs a CUDA GPU, builds and installs nothing; every result is appended to "
        f"DIR/{FILE_NAME} as it comes. `python -m bench.gpu_report DIR/{FILE_NAME}` makes the tables, CSV "
        "rows and plots.",
    )
    p.add_argument("--out", type=_folder, default=ROOT / "gpu-out", metavar="DIR",
                   help=f"folder of {FILE_NAME} (default: gpu-out/ in the repository)")  # fmt: skip
    p.add_argument("--deadline-s", type=_seconds, default=plan.DEFAULT_DEADLINE_S, metavar="S",
                   help="wall-clock seconds from the start of the process that the caller allows: a watchdog "
                   "writes a timeout line for the running case and the summary line, and exits (status 3) "
                   f"before S (default {plan.DEFAULT_DEADLINE_S:g}, for a 600-s call)")  # fmt: skip
    p.add_argument("--budget-s", type=_seconds, default=None, metavar="S",
                   help="cases that would start later than S seconds after the preflight are recorded as "
                   f"skipped (default: the deadline less the preflight and {plan.TAIL_S:g} s for the last "
                   "case)")  # fmt: skip
    p.add_argument("--grid", choices=plan.GRIDS, default="subset",
                   help="head grid of the training steps: the subset that fits 5 minutes (default), or the "
                   "full grid (many torch.compile builds: see --count-compiles)")  # fmt: skip
    p.add_argument("--only", type=_sections, default=plan.SECTIONS, metavar="SECTIONS",
                   help=f"run only these sections, comma-separated: {','.join(plan.SECTIONS)}")  # fmt: skip
    p.add_argument("--no-compile", action="store_true",
                   help="record the torch.compile baselines as skipped instead of running them")  # fmt: skip
    p.add_argument("--no-timing", action="store_true", help="correctness and determinism only")
    p.add_argument("--dry-run", action="store_true",
                   help="the whole plan on the CPU under Triton's interpreter at tiny shapes (no GPU needed; "
                   "the figures mean nothing)")  # fmt: skip
    p.add_argument("--count-compiles", action="store_true",
                   help="replay the GPU plan on meta tensors with launches stubbed and print how many "
                   "Triton kernel specialisations, launchers and torch.compile builds it does")  # fmt: skip
    p.add_argument("--plan", action="store_true",
                   help="print the GPU plan in run order with each case's estimated start (seconds after the "
                   "preflight, from --count-compiles' per-unit times) and the budget; runs nothing")  # fmt: skip
    p.add_argument("--json", action="store_true",
                   help='with --plan: one JSON object {"budget_s", "cases": [{"case", "section", '
                   '"est_start_s"}, ...]}')  # fmt: skip
    return p


def echo(msg: str = "", end: str = "\n") -> None:
    print(msg, end=end, flush=True)


def fail(message: str) -> int:
    sys.stderr.write(f"{PROG}: {message}\n")
    return 2


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    timed = ("headline", "headline-kernels", "kernels", "steps", "compiled")
    only = tuple(s for s in args.only if not (args.no_timing and s in timed))
    if args.count_compiles and args.dry_run:
        return fail("--count-compiles: replays the GPU plan; expected it without --dry-run, got both")
    if args.plan and (args.dry_run or args.count_compiles):
        return fail("--plan: prints the GPU plan; expected it without --dry-run and --count-compiles")
    if args.json and not args.plan:
        return fail("--json: expected it with --plan, got it alone")
    os.environ["GLAI_STRICT"] = "1"  # a launch that cannot compile raises here: no figure of a fallback path
    # glai_kernels.runtime.interpreting() answers the same question, but importing glai_kernels imports torch,
    # and with it Triton, which fixes the interpreter switch: the variable is read here before any import.
    interpreter_requested = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    if interpreter_requested and not args.dry_run:
        return fail(
            "TRITON_INTERPRET is set: expected it unset for a GPU run (the kernels would run in Triton's CPU "
            "interpreter), got TRITON_INTERPRET="
            + repr(os.environ["TRITON_INTERPRET"])
            + ("; unset it" if args.count_compiles else "; unset it, or pass --dry-run")
        )
    if args.count_compiles or args.plan:
        return count_compiles(args, only)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before any kernel module is imported
        from bench.interpreter_shim import patch_old_interpreter

        patch_old_interpreter()  # Triton 3.6 with numpy >= 2.4; the preflight refuses what this cannot fix
        # The interpreter computes masked-out lanes of a tile from whatever the masked loads returned; numpy
        # warns when those are NaN. Those lanes are never stored: the warning says nothing about a result.
        warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"triton\.runtime\.interpreter")
    os.environ["GLAI_AUTOTUNE"] = "0"  # the run times the kernels as configured: nothing is tuned during it
    try:
        journal = Journal(args.out / FILE_NAME)
    except OSError as exc:
        return fail(
            f"--out: expected a folder this process can write, got {str(args.out)!r} ({exc.strerror})"
        )
    try:  # run as a script, the deadline counts from the start of the process; called in-process, from now
        return _run(args, only, journal, watchdog.process_age() if argv is None else 0.0)
    finally:
        journal.close()


def _run(args, only, journal: Journal, age_s: float) -> int:
    run = Run(journal, math.inf, echo, age_s=age_s)
    info: dict = {}
    disarm = watchdog.start(run, args.deadline_s, lambda: _closing(run, journal, args),
                            lambda: {"gpu": info.get("gpu")})  # fmt: skip
    try:
        return _checks(args, only, journal, run, info)
    finally:
        with journal.lock:
            run.finished = True
            disarm.set()


def _checks(args, only, journal: Journal, run: Run, info: dict) -> int:
    from bench.gpu import preflight

    run.current = {"section": "preflight", "case": "preflight", "started": 0.0}  # a hang there times out too
    facts, problem = preflight.facts(args.dry_run)
    info.update(facts, strict=os.environ.get("GLAI_STRICT"))
    for line in preflight.describe(info):
        echo(f"{PROG}: {line}")
    ops = ref = None
    if problem is None:
        problem = preflight.smoke(info)
    if problem is None:
        from glai_kernels import backend, reference, runtime

        ops, ref = backend.per_layer_ops(), reference
        if ops is None:
            problem = f"the Triton kernels do not import here ({backend._triton_error})"
        elif args.dry_run and not runtime.kernels_interpreted():
            problem = (
                "the kernels were imported before TRITON_INTERPRET was set: expected interpreted kernels"
            )
    grid = "dry" if args.dry_run else args.grid
    # An explicit --budget-s is taken as given: the watchdog still ends the run at the deadline.
    run.budget_s = (
        plan.default_budget(args.deadline_s, run.elapsed()) if args.budget_s is None else args.budget_s
    )
    run.write("preflight", ok=problem is None, error=problem, argv=args.argv, grid=grid,
              budget_s=round(run.budget_s, 1), deadline_s=args.deadline_s, only=list(only), **info)  # fmt: skip
    run.current = None
    if problem is not None:
        return fail(problem)
    if "smoke_s" in info:
        echo(f"{PROG}: preflight done in {run.elapsed():.1f} s; budget {run.budget_s:.0f} s from now, deadline "
             f"{args.deadline_s:g} s from the start; results: {journal.path}")  # fmt: skip
    run.start_budget()
    from bench.gpu import tables
    from bench.gpu import target as targets

    target = targets.make("dry" if args.dry_run else "cuda")
    run.probe = target.probe
    sizes = plan.DRY if args.dry_run else plan.GPU
    try:
        sections = plan.build(target, ops, ref, sizes, grid, run.state, only, args.no_compile)
    except Exception as exc:  # nothing can run: say why in the file as well
        run.write("crash", case="plan", status="crash", ok=False, error=f"{type(exc).__name__}: {exc}")
        echo(f"{PROG}: the plan could not be built: {type(exc).__name__}: {exc}")
        return 1
    run.write("plan", grid=grid, **plan.describe(sections))
    stopped = None
    previous = {s: signal.signal(s, _raise) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for section in sections:
            run.run_section(section)
            if section.name in plan.HEADLINE_SECTIONS[1:]:  # printed now: a run cut short still shows it
                _echo_table(lambda: tables.headline(journal.lines, section.name))
    except Interrupted as exc:
        stopped = exc.signum
        echo(f"\n{PROG}: stopped by signal {stopped}; every line before this one is in {journal.path}")
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    status = run.exit_status() if stopped is None else 128 + stopped
    with journal.lock:  # the watchdog may not write after this line, nor exit while it is written
        journal.write_locked(run.record("summary", **run.summary(
            complete=stopped is None, signal=stopped, exit_status=status, gpu=info.get("gpu"),
            deadline_s=args.deadline_s)))  # fmt: skip
        run.finished = True
        echo()
        _echo_table(lambda: tables.terminal(journal.lines))
        _closing(run, journal, args, table=False)
    return status


def _echo_table(make) -> None:
    try:
        text = make()
    except Exception as exc:  # the results are in the file; a table bug must not change the exit status
        text = f"{PROG}: no table ({type(exc).__name__}: {exc}); the JSONL holds every result"
    if text:
        echo(text)


def _closing(run, journal, args, table: bool = True) -> None:
    """The last lines: the status lines (the watchdog prints them; a whole run prints the full table first)."""
    from bench.gpu import tables

    if table:
        _echo_table(lambda: "\n".join(tables.status_lines(journal.lines)))
    results = " --results DIR" if args.dry_run else ""  # a dry run's rows never go to bench/results unasked
    echo(f"{PROG}: {journal.path}; tables, CSV, plots: python -m bench.gpu_report {journal.path}{results}")


def _raise(signum, frame):
    raise Interrupted(signum)


def count_compiles(args, only) -> int:
    start = time.perf_counter()
    from bench.gpu import count, tables
    from bench.gpu import target as targets

    try:
        from glai_kernels import backend, reference

        ops = backend.per_layer_ops()
    except Exception as exc:  # torch or triton missing
        return fail(f"--count-compiles: the kernels do not import here ({type(exc).__name__}: {exc})")
    if ops is None:
        return fail(f"--count-compiles: the Triton kernels do not import here ({backend._triton_error})")
    target = targets.make("replay")
    sections = plan.build(target, ops, reference, plan.GPU, args.grid, {}, only, args.no_compile)
    if args.plan:
        rows, crashes = count.schedule(sections, target)
        budget = (
            plan.default_budget(args.deadline_s, plan.PREFLIGHT_S) if args.budget_s is None else args.budget_s
        )
        if args.json:
            echo(json.dumps({"budget_s": round(budget, 1), "deadline_s": args.deadline_s,
                             "preflight_s": plan.PREFLIGHT_S, "cases": rows, "crashes": crashes}))  # fmt: skip
        else:
            echo(tables.plan_text(rows, budget, args.deadline_s, plan.PREFLIGHT_S, crashes))
        return 1 if crashes else 0
    result = count.replay(sections, target)
    echo(count.render(result, args.grid))
    echo(f"  (replayed in {time.perf_counter() - start:.1f} s)")
    return 1 if result["crashes"] else 0
