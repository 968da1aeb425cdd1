"""How much a GPU run will compile: the plan replayed on meta tensors with every launch and compile stubbed.

Each Triton launch of the per-layer kernels goes through ``per_layer_launch.launch_plan(kernel, plan, tma, device,
args)``, and each of the fused head path through ``fused_launch.launch_fused(kernel, grid, cfg, device, *args,
**constexprs)``; both are called directly outside ``torch.compile``, meta tensors included. The replay swaps
them for recorders and keeps, per launch, what Triton 3.6 specialises a compiled kernel on:

- the kernel, its ``tl.constexpr`` values, the tile sizes, ``num_warps`` and ``num_stages``;
- per pointer argument its element type and whether its address is a multiple of 16 (meta tensors report 0:
  the caching allocator's blocks are aligned far beyond that, and the plan slices nothing);
- per integer argument whether it equals 1 (then a constant), whether it is a multiple of 16, and whether it
  needs 64 bits; ``None`` arguments are constants; a tuple argument (the fused kernels' per-layer pointers and
  strides) is specialised element by element.

Distinct keys are kernel specialisations (each a compile: TTIR to cubin); distinct argument-type signatures
are launchers (a C file Triton 3.6 builds with the C compiler). ``torch.compile`` calls of the plan are
counted by the replay target: each is a Dynamo trace and a forward and a backward Inductor graph.

The per-unit times are assumptions, stated here once: lowering a 16-bit or TF32 GEMM kernel to a cubin took
0.3-1.1 s and an IEEE fp32 one 3.5 s on a 2-core development machine without a GPU
(``tests/_lower_kernels.py`` with a cold cache), so 1 s and 4 s are taken; a launcher build is a ``gcc -O3``
of one small C file, 0.5 s; a ``torch.compile`` build of a small MLP step (trace, two Inductor graphs, their
Triton kernels) 20 s for the first (Inductor's imports and compile workers) and 8 s for each after it. A fused
head kernel (the whole stack in one program) took 1-7 s to lower on that machine at a load of 6 (three
processes a core; ``tests/_lower_fused.py``), so 2 s is taken, except the IEEE fp32 ones: their forward, data
and weight kernels took 5, 12 and 19 s each to compile on a CPU there, so 12 s is taken. Each
timing line of a GPU run records ``first_call_s``, the measured cost of its first call, to check these
against.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager, nullcontext

SM_COUNT = 132  # multiprocessors of the H200 the plan is made for

SECONDS = {
    "kernel": 1.0,
    "kernel_ieee_fp32": 4.0,
    "kernel_fused": 2.0,
    "kernel_fused_ieee_fp32": 12.0,
    "launcher": 0.5,
    "compile_first": 20.0,
    "compile": 8.0,
    "timed": 0.2,  # one do_bench: 25 ms warm-up, 100 ms of repeats, its own estimate and the L2 flushes
}


def _int_sig(v: int) -> tuple:
    if v == 1:
        return ("constexpr", 1)
    width = "i32" if -(2**31) <= v < 2**31 else "i64"
    return (width, "D" if v % 16 == 0 else "")


def arg_signature(arg) -> tuple:
    """What Triton specialises one runtime argument on (see the module docstring)."""
    import torch

    if arg is None:
        return ("constexpr", None)
    if isinstance(arg, bool):
        return ("i1",)
    if isinstance(arg, int):
        return _int_sig(arg)
    if isinstance(arg, float):
        return ("fp32",)
    if isinstance(arg, torch.Tensor):
        aligned = arg.data_ptr() % 16 == 0
        return ("*" + str(arg.dtype).removeprefix("torch."), "D" if aligned else "")
    if isinstance(arg, tuple):
        return ("tuple", tuple(arg_signature(a) for a in arg))
    return (type(arg).__name__,)


def kernel_name(kernel) -> str:
    fn = getattr(kernel, "fn", kernel)
    return getattr(fn, "__name__", str(kernel))


def specialisation(kernel, cfg: dict, args, constexprs: dict) -> tuple:
    # The per-layer kernels take their tile sizes from the config; the fused ones pass every tile size among
    # their constexprs already, so the config adds only warps and stages there.
    meta = tuple(sorted((k, cfg[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M") if k in cfg))
    options = (cfg.get("num_warps"), cfg.get("num_stages"))
    consts = tuple(sorted((k, str(v)) for k, v in constexprs.items()))
    return (kernel_name(kernel), consts, meta, options, tuple(arg_signature(a) for a in args))


def launcher(key: tuple) -> tuple:
    """The launcher signature of a specialisation: argument types, constants marked, values and
    divisibility left out."""
    return (key[0], tuple(s[0] for s in key[4]))


@contextmanager
def stubbed(launches: list):
    """Every Triton launch recorded into ``launches`` instead of run; backends resolved without a GPU; the
    per-layer configurations, batch splits and main loops chosen as on an H200 (sm_90, 132 SMs, no tuning
    cache); the memos of launch plans kept apart from this process's."""
    import torch

    from glai_kernels import backend, fused_config, fused_launch, launch_configs, per_layer_launch, runtime

    saved = [
        (per_layer_launch, n) for n in ("launch_plan", "hopper_or_interpreter", "LAUNCH_PLANS", "check_no_overlap")
    ] + [(runtime, n) for n in ("device_info", "device_index", "multiprocessor_count")] + [
        (launch_configs, n) for n in ("_current_identity", "_memo")
    ] + [(fused_launch, n) for n in ("launch_fused", "_CONFIGS", "_STATIC")] + [
        (fused_config, "fused_splits"), (backend, "resolve_backend")
    ]  # fmt: skip
    before = [(owner, name, getattr(owner, name)) for owner, name in saved]
    fused_splits = fused_config.fused_splits
    cuda0 = torch.device("cuda", 0)

    def record(kernel, plan, tma, device, args):
        launches.append(specialisation(kernel, plan.config, args, plan.kwargs[tma]))

    def record_fused(kernel, grid, cfg, device, *args, **constexprs):
        launches.append(specialisation(kernel, cfg, args, constexprs))

    per_layer_launch.launch_plan = record
    per_layer_launch.hopper_or_interpreter = lambda device: True
    per_layer_launch.LAUNCH_PLANS = {}
    per_layer_launch.check_no_overlap = lambda op, outs, ins: None  # every meta tensor sits at address 0
    runtime.device_info = lambda index: ((9, 0), SM_COUNT)
    runtime.device_index = lambda device: 0
    runtime.multiprocessor_count = lambda device: SM_COUNT
    launch_configs._current_identity = lambda index: None
    launch_configs._memo = {}
    # The fused path: the H200's (sm_90) launch table for the meta device, its split rule with 132 SMs.
    fused_launch.launch_fused = record_fused
    fused_launch._CONFIGS = {torch.device("meta"): fused_config.fused_defaults(90)}
    fused_launch._STATIC = {}
    fused_config.fused_splits = lambda cfg, tiles, rows, device: fused_splits(cfg, tiles, rows, cuda0)
    backend.resolve_backend = lambda name, device: "triton" if name in ("auto", "triton") else name
    # Autocast knows no meta device: the stack's `autocast(device, enabled=False)` and the structural phase's
    # `is_autocast_enabled(device)` see none there.
    autocast, is_enabled = torch.autocast, torch.is_autocast_enabled
    torch.autocast = lambda device_type, *a, **k: (
        nullcontext() if device_type == "meta" else autocast(device_type, *a, **k)
    )
    torch.is_autocast_enabled = lambda *a: False if a and a[0] == "meta" else is_enabled(*a)
    try:
        yield
    finally:
        for owner, name, value in before:
            setattr(owner, name, value)
        torch.autocast, torch.is_autocast_enabled = autocast, is_enabled


def _ieee_fp32(key: tuple) -> bool:
    return ("PRECISION", "ieee") in key[1] and "*float32" in repr(key[4])


def kernel_seconds(keys) -> float:
    """Seconds to compile the kernel specialisations ``keys`` (the per-unit times above)."""
    s, total = SECONDS, 0.0
    for k in keys:
        fused, ieee = k[0].startswith("fused_"), _ieee_fp32(k)
        total += s[("kernel_fused" if fused else "kernel") + ("_ieee_fp32" if ieee else "")]
    return total


def compile_seconds(new: int, before: int) -> float:
    """Seconds of ``new`` torch.compile builds after ``before`` others (the first one pays the imports)."""
    return sum(SECONDS["compile_first" if before + i == 0 else "compile"] for i in range(new))


class Ledger:
    """What has been compiled so far, so that each case is charged only for what it compiles first."""

    def __init__(self):
        self.kernels, self.launchers, self.compiles = set(), set(), set()

    def charge(self, launches, compiles, timed: int) -> dict:
        new_k = [k for k in dict.fromkeys(launches) if k not in self.kernels]
        self.kernels.update(new_k)
        new_l = [x for x in dict.fromkeys(launcher(k) for k in new_k) if x not in self.launchers]
        self.launchers.update(new_l)
        new_c = [c for c in dict.fromkeys(compiles) if c not in self.compiles]
        before = len(self.compiles)
        self.compiles.update(new_c)
        seconds = {
            "kernels": kernel_seconds(new_k),
            "launchers": len(new_l) * SECONDS["launcher"],
            "torch.compile": compile_seconds(len(new_c), before),
            "timing": timed * SECONDS["timed"],
        }
        return {"new_kernels": new_k, "launchers": len(new_l), "compiles": len(new_c), "timed": timed,
                "launches": len(launches), "seconds": seconds}  # fmt: skip


def estimate(per_section: dict) -> dict:
    """Totals and seconds from ``{section: {"launches": [...], "compiles": [...], "timed": n}}``."""
    ledger = Ledger()
    rows = {}
    seconds = dict.fromkeys(("kernels", "launchers", "torch.compile", "timing"), 0.0)
    for name, rec in per_section.items():
        got = ledger.charge(rec["launches"], rec["compiles"], rec["timed"])
        new_k = got["new_kernels"]
        rows[name] = {"kernels": len(new_k), "ieee_fp32": sum(map(_ieee_fp32, new_k)),
                      "fused": sum(k[0].startswith("fused_") for k in new_k), "launchers": got["launchers"],
                      "compiles": got["compiles"], "timed": rec["timed"],
                      "launches": got["launches"]}  # fmt: skip
        for k, v in got["seconds"].items():
            seconds[k] += v
    seen_k = ledger.kernels
    by_kernel = Counter(k[0] for k in seen_k)
    return {"sections": rows, "kernels": len(seen_k), "ieee_fp32": sum(map(_ieee_fp32, seen_k)),
            "fused": sum(k[0].startswith("fused_") for k in seen_k), "launchers": len(ledger.launchers),
            "compiles": len(ledger.compiles), "seconds": seconds, "by_kernel": dict(by_kernel),
            "assumed_seconds": dict(SECONDS)}  # fmt: skip


def walk(sections, target) -> tuple[list[dict], list[str]]:
    """Run ``sections`` on the replay target with launches stubbed, case by case: per case, its section and
    what it launched, compiled and timed; and the replay's crashes."""
    from bench.gpu.journal import Journal, Run, Tally

    out, launches = [], []
    run = Run(Journal(None), budget_s=float("inf"), echo=lambda *a, **k: None)
    with stubbed(launches):
        for section in sections:
            tally = run.tallies.setdefault(section.name, Tally())
            for case in section.cases:
                launches.clear()
                n_compiles, n_timed = len(target.compiles), target.timed
                run.run_case(section.name, case, tally)
                out.append(
                    {
                        "case": case.id,
                        "section": section.name,
                        "launches": list(launches),
                        "compiles": target.compiles[n_compiles:],
                        "timed": target.timed - n_timed,
                    }
                )
    crashes = [f"{r['case']}: {r['error']}" for r in run.journal.lines if r.get("status") == "crash"]
    return out, crashes


def replay(sections, target) -> dict:
    """Run ``sections`` on the replay target with launches stubbed; the estimate."""
    cases, crashes = walk(sections, target)
    per_section: dict = {}
    for c in cases:
        rec = per_section.setdefault(c["section"], {"launches": [], "compiles": [], "timed": 0})
        rec["launches"] += c["launches"]
        rec["compiles"] += c["compiles"]
        rec["timed"] += c["timed"]
    result = estimate(per_section)
    result["crashes"] = crashes
    return result


def schedule(sections, target) -> tuple[list[dict], list[str]]:
    """``[{"case", "section", "est_start_s", "est_s"}, ...]`` in run order, seconds counted from the end of the
    preflight: each case charged for what it compiles first, its torch.compile builds and its timed calls."""
    cases, crashes = walk(sections, target)
    ledger, t, rows = Ledger(), 0.0, []
    for c in cases:
        cost = sum(ledger.charge(c["launches"], c["compiles"], c["timed"])["seconds"].values())
        rows.append({"case": c["case"], "section": c["section"], "est_start_s": round(t, 1),
                     "est_s": round(cost, 1)})  # fmt: skip
        t += cost
    return rows, crashes


def render(result: dict, grid: str) -> str:
    columns = ("kernels", "ieee_fp32", "launchers", "compiles", "timed")
    lines = [
        f"compile estimate, GPU plan with head grid '{grid}' (replayed on meta tensors, launches stubbed):"
    ]
    lines.append(f"  {'section':<17}" + "".join(f"{c:>11}" for c in columns))
    for name, r in result["sections"].items():
        lines.append(f"  {name:<17}" + "".join(f"{r[c]:>11}" for c in columns))
    s, sec = result["assumed_seconds"], result["seconds"]
    timed = sum(r["timed"] for r in result["sections"].values())
    lines += [
        f"  total: {result['kernels']} Triton kernel specialisations ({result['ieee_fp32']} IEEE fp32, "
        f"{result['fused']} fused) x {s['kernel']:g} s ({s['kernel_ieee_fp32']:g} s IEEE fp32, "
        f"{s['kernel_fused']:g} s fused, {s['kernel_fused_ieee_fp32']:g} s fused IEEE fp32) = "
        f"{sec['kernels']:.0f} s; "
        f"{result['launchers']} launchers x {s['launcher']:g} s = {sec['launchers']:.0f} s; "
        f"{result['compiles']} torch.compile builds ({s['compile_first']:g} s, then {s['compile']:g} s each) "
        f"= {sec['torch.compile']:.0f} s",
        f"  timing: {timed} timed calls x {s['timed']:g} s = {sec['timing']:.0f} s; compiling and timing "
        f"together about {sum(sec.values()) / 60:.1f} min",
        "  specialisations per kernel: "
        + ", ".join(f"{k} {n}" for k, n in sorted(result["by_kernel"].items())),
    ]
    lines += [f"  replay crash (not counted): {crash}" for crash in result["crashes"][:5]]
    return "\n".join(lines)
