"""One command for a lent GPU: check every Triton kernel against the reference, then time it.

    python bench/gpu_check.py            # from the repository root; nothing is built or installed

1. correctness on CUDA at realistic sizes in fp32, fp16 and bf16: every kernel against the PyTorch
   reference run in float64 (relative error ``||out - ref|| / ||ref||``), outputs filled with NaN before each
   launch; fp32 once more with TF32 allowed;
2. determinism: every kernel, and a whole training step's gradients, bit-identical over two runs;
3. ``torch.compile`` (Inductor) of a model holding a frozen GLAIMLP on the Triton backend against eager;
4. timings with ``triton.testing.do_bench`` (medians): each kernel against what cuBLAS does for the same
   shapes (``F.linear`` for the masked forward, incl. 8192x4096x4096 bf16), and a full training step of a GLAI
   stack against a plain PyTorch MLP step, eager and ``torch.compile``d, at batch 8192, widths 1024 and 4096.

It prints a short table last and writes a JSON (GPU name, torch / Triton / CUDA versions, date, every check
and timing) to ``bench/results/``. Exit status: 0 when every check passed, 1 when one failed, 2 without CUDA.
The performance targets (masked forward >= 90% of cuBLAS at 8192x4096x4096 bf16, GLAI step >= 1.25x the eager
MLP step) are reported, not enforced. Sections that fail are recorded and the run goes on, so one bad kernel
does not cost the whole run; timings are skipped once ``--budget-s`` is spent.
"""

import argparse
import datetime
import json
import os
import platform
import re
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
if str(ROOT) not in sys.path:  # run from a plain checkout: no install needed
    sys.path.insert(0, str(ROOT))

TOL = {"float32": 1e-5, "tf32": 5e-3, "float16": 5e-3, "bfloat16": 1e-2}
# (batch, in, out, reduction): one aligned shape of the timing grid and one with nothing a multiple of a tile.
CHECK_SHAPES = [(8192, 4096, 4096, 1), (3001, 1000, 1500, 4)]
KERNEL_SHAPES = [(8192, 4096, 4096), (8192, 1024, 1024)]
NARROW = 10  # units of a narrow (output) layer
STEP_WIDTHS = (1024, 4096)
STEP_BATCH = 8192
TARGET_CUBLAS_PCT = 90.0
TARGET_STEP_SPEEDUP = 1.25
# Where everything runs. Only the CI smoke test of this script changes it (to "cpu", under Triton's
# interpreter, with tiny shapes) to keep the script's own logic tested on machines without a GPU.
DEVICE = "cuda"


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python bench/gpu_check.py",
        description="Check the GLAI Triton kernels against the PyTorch reference on CUDA, then time them "
        "against cuBLAS and a plain MLP training step. Needs a CUDA GPU; builds nothing.",
    )
    p.add_argument("--out", type=Path, default=None, help="JSON file to write (default: bench/results/...)")
    p.add_argument("--no-compile", action="store_true", help="skip everything that runs torch.compile")
    p.add_argument("--no-timing", action="store_true", help="run the checks only")
    p.add_argument(
        "--budget-s",
        type=float,
        default=200.0,
        help="skip timing sections that would start after this many seconds (default 200)",
    )
    return p.parse_args(argv)


def no_cuda_reason() -> str | None:
    """Why this machine cannot run the check, or None."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return (
            "TRITON_INTERPRET is set: the kernels would run in Triton's CPU interpreter; unset it to run this"
        )
    import torch

    if not torch.cuda.is_available():
        return (
            "no CUDA device is available (torch.cuda.is_available() is False). This script checks and times "
            "the Triton kernels on a GPU; without one, run the interpreter tests instead: pytest tests/"
        )
    return None


def device_name() -> str:
    import torch

    return (
        torch.cuda.get_device_name() if DEVICE == "cuda" else f"{platform.processor() or 'cpu'} (interpreter)"
    )


class Run:
    """Collects checks and timings, and keeps the clock."""

    def __init__(self, budget_s: float):
        self.t0 = time.perf_counter()
        self.budget_s = budget_s
        self.checks: list[dict] = []
        self.kernel_times: list[dict] = []
        self.step_times: list[dict] = []
        self.errors: list[dict] = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def log(self, msg: str) -> None:
        print(f"[{self.elapsed():6.1f}s] {msg}", flush=True)

    def check(self, name: str, ok: bool, **info) -> None:
        self.checks.append({"name": name, "ok": bool(ok), **info})
        detail = ", ".join(f"{k}={v:.2e}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())
        self.log(f"{'ok  ' if ok else 'FAIL'} {name} {detail}")

    def section(self, name: str, fn, timing: bool = False) -> None:
        if timing and self.elapsed() > self.budget_s:
            self.log(f"skip {name}: {self.elapsed():.0f}s spent, budget {self.budget_s:.0f}s")
            self.errors.append({"section": name, "error": "skipped: time budget spent"})
            return
        self.log(f"--- {name}")
        try:
            fn()
        except Exception as exc:  # record and go on: a lent GPU is too short-lived to rerun everything
            self.log(f"FAIL {name}: {type(exc).__name__}: {exc}")
            self.errors.append(
                {"section": name, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
            )
            if not timing:
                self.checks.append({"name": name, "ok": False, "error": f"{type(exc).__name__}: {exc}"})

    @property
    def passed(self) -> bool:
        return all(c["ok"] for c in self.checks) and bool(self.checks)


# ----------------------------------------------------------------------------- helpers
def rel_err(out, expected) -> float:
    diff = (out.double() - expected.double()).norm().item()
    return diff / max(expected.double().norm().item(), 1e-300)


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def nan_like(shape, dtype, device):
    import torch

    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def random_words(batch: int, units: int, device, gen):
    import torch

    from glai_kernels.layout import words_for

    w = torch.randint(
        -(2**31), 2**31, (batch, words_for(units)), generator=gen, dtype=torch.int64, device=device
    )
    return w.to(torch.int32)


def layer_inputs(M, K, N, r, dtype, seed):
    """Fresh random operands of one layer ``K -> N`` at batch ``M``, weights scaled as nn.Linear's."""
    import torch

    dev = torch.device(DEVICE)
    g = torch.Generator(device=dev).manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device=dev) * scale).to(dtype)

    return {
        "x": randn(M, K),
        "w": randn(N, K, scale=K**-0.5),
        "b": randn(N, scale=0.1),
        "g": randn(M, N),
        "words_out": random_words(M, N // r, dev, g),
        "words_in": random_words(M, K // r, dev, g),
    }


def run_kernels(ops, t, r, out=True):
    """Every op once on the operands ``t``; outputs preallocated and NaN-filled when ``out``."""
    import torch

    from glai_kernels.layout import PATTERN_DTYPE, words_for

    x, w, b, g = t["x"], t["w"], t["b"], t["g"]
    (M, K), N, dt, dev = x.shape, w.shape[0], x.dtype, x.device

    def o(value):
        return {"out": value} if out else {}

    words_poison = torch.full((M, words_for(N)), 0x5A5A5A5A, dtype=PATTERN_DTYPE, device=dev)
    return {
        "gate": ops.gate(x, w, b, **o((nan_like((M, N), dt, dev), words_poison))),
        "masked_forward": ops.masked_forward(x, w, b, t["words_out"], r, **o(nan_like((M, N), dt, dev))),
        "masked_forward_ungated": ops.masked_forward(x, w, b, None, 1, **o(nan_like((M, N), dt, dev))),
        "backward_data": ops.backward_data(g, w, t["words_in"], r, **o(nan_like((M, K), dt, dev))),
        "backward_weights": ops.backward_weights(
            g, x, True, **o((nan_like((N, K), dt, dev), nan_like((N,), dt, dev)))
        ),
    }


def flat(results: dict) -> list:
    return [t for v in results.values() for t in (v if isinstance(v, tuple) else (v,))]


# ----------------------------------------------------------------------------- sections
def check_correctness(run: Run, ops, reference) -> None:
    import torch

    from glai_kernels.layout import unpack_patterns

    def one(M, K, N, r, dtype, label, seed):
        t = layer_inputs(M, K, N, r, dtype, seed)
        got = run_kernels(ops, t, r)
        d = {k: (v.double() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in t.items()}
        x, w, b, g = d["x"], d["w"], d["b"], d["g"]
        expected = {
            "gate": reference.gate(x, w, b),
            "masked_forward": reference.masked_forward(x, w, b, d["words_out"], r),
            "masked_forward_ungated": reference.masked_forward(x, w, b, None, 1),
            "backward_data": reference.backward_data(g, w, d["words_in"], r),
            "backward_weights": reference.backward_weights(g, x, True),
        }
        tol = TOL[label]
        shape = f"{M}x{K}x{N} r{r} {label}"
        for name in got:
            outs, refs = got[name], expected[name]
            outs = outs if isinstance(outs, tuple) else (outs,)
            refs = refs if isinstance(refs, tuple) else (refs,)
            for i, (o_, e_) in enumerate(zip(outs, refs)):
                if o_.dtype == torch.int32:  # gate words: bits may differ only where |z| is at rounding level
                    z = torch.nn.functional.linear(x, w, b)
                    near = z.abs() <= 1e-3 * z.abs().max()
                    bits, rbits = unpack_patterns(o_, N), unpack_patterns(e_, N)
                    bad = int(((bits != rbits) & ~near).sum())
                    run.check(
                        f"{name} pattern {shape}", bad == 0, mismatched_bits=bad, near_zero=int(near.sum())
                    )
                    continue
                err = rel_err(o_, e_)
                what = name
                if name == "backward_weights":
                    what += (".dW", ".db")[i]
                elif name == "gate":
                    what += ".relu"
                run.check(
                    f"{what} {shape}", err <= tol and o_.dtype == dtype, rel_err=err, tol=tol, dtype=label
                )

    seed = 0
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        # IEEE fp32 kernels take several seconds each to compile (the FMA path): fp32 runs at the first shape
        # only; the 16-bit runs cover the masked edges of the odd one.
        for M, K, N, r in CHECK_SHAPES[:1] if dtype == torch.float32 else CHECK_SHAPES:
            seed += 1
            one(M, K, N, r, dtype, dtype_name(dtype), seed)
    # fp32 with TF32 allowed, as PyTorch's own matmuls would then use it.
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        M, K, N, r = CHECK_SHAPES[0]
        one(M, K, N, r, torch.float32, "tf32", 99)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    # A narrow layer (an output layer of NARROW units): too few dW tiles for the GPU, so the batch is split
    # and the fp32 partials are added afterwards. Checked for accuracy and for bit-identical reruns.
    M, K, _, _ = CHECK_SHAPES[0]
    for dtype in (torch.float32, torch.bfloat16):
        t = layer_inputs(M, K, NARROW, 1, dtype, seed=123)
        runs = [ops.backward_weights(t["g"], t["x"], True) for _ in range(2)]
        expected = reference.backward_weights(t["g"].double(), t["x"].double(), True)
        label = dtype_name(dtype)
        for i, what in enumerate(("dW", "db")):
            err = rel_err(runs[0][i], expected[i])
            name = f"backward_weights.{what} {M}x{K}x{NARROW} split batch {label}"
            run.check(
                name, err <= TOL[label] and torch.equal(runs[0][i], runs[1][i]), rel_err=err, dtype=label
            )


def check_determinism(run: Run, ops) -> None:
    import torch

    # The sizes (and r) of the first check shape: the kernels compiled for it are reused.
    M, K, N, r = CHECK_SHAPES[0]
    for dtype in (torch.float32, torch.bfloat16):
        t = layer_inputs(M, K, N, r, dtype, seed=7)
        a, b = run_kernels(ops, t, r), run_kernels(ops, t, r)
        same = all(torch.equal(u, v) for u, v in zip(flat(a), flat(b)))
        run.check(f"kernels bit-identical over two runs {dtype_name(dtype)}", same)

    model, x, y = glai_model(1024, r, torch.bfloat16, batch=4096)
    grads = []
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(model(x), y).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    run.check("training-step gradients bit-identical over two runs", all(map(torch.equal, *grads)))


def glai_model(width: int, reduction: int, dtype, batch: int, backend: str = "triton"):
    import torch

    from glai.nn import GLAIMLP

    torch.manual_seed(0)
    model = GLAIMLP(
        width, [width, width], width, reduction=reduction, backend=backend, device=DEVICE, dtype=dtype
    )
    model.freeze()
    x = torch.randn(batch, width, device=DEVICE, dtype=dtype)
    y = torch.randn(batch, width, device=DEVICE, dtype=dtype)
    return model, x, y


def check_compiled(run: Run) -> None:
    import torch

    # fp32 at r = 1 and aligned sizes: the kernels compiled for the first check shape serve it as they are.
    model, x, y = glai_model(1024, CHECK_SHAPES[0][3], torch.float32, batch=2048)
    compiled = torch.compile(model, fullgraph=True)
    results = []
    for m in (model, compiled):
        model.zero_grad(set_to_none=True)
        out = m(x)
        torch.nn.functional.mse_loss(out, y).backward()
        results.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    (y0, g0), (y1, g1) = results
    err_y = rel_err(y1, y0)
    err_g = max(rel_err(a, b) for a, b in zip(g1, g0))
    run.check("torch.compile(GLAIMLP, triton) output vs eager", err_y <= 1e-5, rel_err=err_y)
    run.check("torch.compile(GLAIMLP, triton) gradients vs eager", err_g <= 1e-5, rel_err=err_g)
    torch._dynamo.reset()


def time_ms(fn) -> float:
    import triton

    fn()
    if DEVICE != "cuda":
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3
    return float(triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])[0])


def time_kernels(run: Run, ops) -> None:
    import torch
    import torch.nn.functional as F

    from glai_kernels import costs

    dtype = torch.bfloat16
    for M, K, N in KERNEL_SHAPES:
        t = layer_inputs(M, K, N, 1, dtype, seed=11)
        x, w, b, g = t["x"], t["w"], t["b"], t["g"]
        pairs = {
            "masked_forward": (
                lambda: ops.masked_forward(x, w, b, t["words_out"], 1),
                lambda: F.linear(x, w, b),
                "F.linear",
            ),
            "gate": (lambda: ops.gate(x, w, b), lambda: torch.relu(F.linear(x, w, b)), "relu(F.linear)"),
            "backward_data": (lambda: ops.backward_data(g, w, t["words_in"], 1), lambda: g @ w, "g @ W"),
            "backward_weights": (
                lambda: ops.backward_weights(g, x, True),
                lambda: (g.t() @ x, g.sum(0)),
                "g^T h, sum g",
            ),
        }
        for name, (ours, theirs, what) in pairs.items():
            ms, ms_ref = time_ms(ours), time_ms(theirs)
            flops = costs.op_flops(name, M, K, N)
            row = {
                "kernel": name,
                "shape": f"{M}x{K}x{N}",
                "dtype": dtype_name(dtype),
                "ms": ms,
                "tflops": flops / ms / 1e9,
                "baseline": what,
                "baseline_ms": ms_ref,
                "pct_of_baseline": 100.0 * ms_ref / ms,
            }
            run.kernel_times.append(row)
            run.log(
                f"{name} {row['shape']}: {ms:.3f} ms ({row['tflops']:.0f} TFLOP/s), {what} {ms_ref:.3f} ms"
            )


def time_steps(run: Run, compile_mlp: bool) -> None:
    import torch
    import torch.nn.functional as F
    from torch import nn

    from glai_kernels import costs

    dtype = torch.bfloat16
    for width in STEP_WIDTHS:
        if run.elapsed() > run.budget_s + 60:
            run.log(f"skip training steps at width {width}: time budget spent")
            break
        B = STEP_BATCH
        # Three layers width x width: the nominal MLP step count, credited to every variant alike.
        flops = costs.train_step_flops(B, (width,) * 4)

        def step_fn(model, x, y, patterns=None):
            opt = torch.optim.SGD(model.parameters(), lr=1e-4, foreach=True)

            def step():
                opt.zero_grad(set_to_none=True)
                out = model(x) if patterns is None else model(x, patterns)
                F.mse_loss(out, y).backward()
                opt.step()

            return step

        variants = {}
        torch.manual_seed(0)
        mlp = nn.Sequential(
            nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width)
        ).to(DEVICE, dtype)
        x = torch.randn(B, width, device=DEVICE, dtype=dtype)
        y = torch.randn(B, width, device=DEVICE, dtype=dtype)
        variants["mlp eager"] = step_fn(mlp, x, y)
        if compile_mlp:
            variants["mlp torch.compile"] = step_fn(torch.compile(mlp), x, y)
        for r in (1, 4):
            model, _, _ = glai_model(width, r, dtype, batch=B)
            variants[f"glai r={r} (patterns from S)"] = step_fn(model, x, y)
        model, _, _ = glai_model(width, 1, dtype, batch=B)
        variants["glai r=1 (cached patterns)"] = step_fn(model, x, y, patterns=model.patterns(x))

        base = None
        for name, step in variants.items():
            for _ in range(3):  # JIT / Inductor compilation and allocator warm-up, outside the timed region
                step()
            if DEVICE == "cuda":
                torch.cuda.synchronize()
            ms = time_ms(step)
            base = ms if base is None else base
            row = {
                "variant": name,
                "batch": B,
                "width": width,
                "dtype": dtype_name(dtype),
                "ms": ms,
                "tflops": flops / ms / 1e9,
                "speedup_vs_mlp_eager": base / ms,
            }
            run.step_times.append(row)
            run.log(f"step {name} width {width}: {ms:.3f} ms, {base / ms:.2f}x the eager MLP step")
        if compile_mlp:
            torch._dynamo.reset()


# ----------------------------------------------------------------------------- report
def table(run: Run) -> str:
    lines = []
    if run.kernel_times:
        head = ("kernel (bf16)", "M x K x N", "ms", "TFLOP/s", "cuBLAS ms", "% cuBLAS")
        lines.append("{:<18} {:<16} {:>8} {:>8} {:>10} {:>9}".format(*head))
        for r in run.kernel_times:
            lines.append(
                f"{r['kernel']:<18} {r['shape']:<16} {r['ms']:>8.3f} {r['tflops']:>8.0f} "
                f"{r['baseline_ms']:>10.3f} {r['pct_of_baseline']:>8.1f}%"
            )
    if run.step_times:
        lines.append("")
        head = (f"training step (bf16, batch {STEP_BATCH})", "width", "ms", "vs MLP eager")
        lines.append("{:<34} {:>6} {:>8} {:>13}".format(*head))
        for r in run.step_times:
            lines.append(
                f"{r['variant']:<34} {r['width']:>6} {r['ms']:>8.3f} {r['speedup_vs_mlp_eager']:>12.2f}x"
            )
    n_ok = sum(c["ok"] for c in run.checks)
    lines.append("")
    for label, err in worst_errors(run).items():
        lines.append(f"largest relative error vs float64, {label}: {err:.2e} (tolerance {TOL[label]:.0e})")
    lines.append(f"checks: {n_ok}/{len(run.checks)} passed" + ("" if run.passed else "  <-- FAILURES above"))
    for name, ok in targets(run).items():
        lines.append(f"target {name}: {'met' if ok else 'NOT met' if ok is not None else 'not measured'}")
    return "\n".join(lines)


def worst_errors(run: Run) -> dict:
    worst = {}
    for c in run.checks:
        if "rel_err" in c and "dtype" in c:
            worst[c["dtype"]] = max(worst.get(c["dtype"], 0.0), c["rel_err"])
    return worst


def targets(run: Run) -> dict:
    mf = [r for r in run.kernel_times if r["kernel"] == "masked_forward" and r["shape"] == "8192x4096x4096"]
    glai = [r for r in run.step_times if r["variant"].startswith("glai")]
    best = {}
    for r in glai:
        best[r["width"]] = max(best.get(r["width"], 0.0), r["speedup_vs_mlp_eager"])
    return {
        f"masked forward >= {TARGET_CUBLAS_PCT:.0f}% of cuBLAS at 8192x4096x4096 bf16": (
            mf[0]["pct_of_baseline"] >= TARGET_CUBLAS_PCT if mf else None
        ),
        **{
            f"best GLAI step >= {TARGET_STEP_SPEEDUP}x eager MLP at width {w}": s >= TARGET_STEP_SPEEDUP
            for w, s in sorted(best.items())
        },
    }


def write_json(run: Run, path: Path | None) -> Path:
    import torch
    import triton

    now = datetime.datetime.now(datetime.timezone.utc)
    gpu = device_name()
    if path is None:
        slug = re.sub(r"[^A-Za-z0-9]+", "-", gpu).strip("-").lower()
        path = RESULTS / f"gpu_check-{slug}-{now.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "gpu": gpu,
        "capability": ".".join(map(str, torch.cuda.get_device_capability())) if DEVICE == "cuda" else None,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "date": now.isoformat(timespec="seconds"),
        "wall_s": round(run.elapsed(), 1),
        "passed": run.passed,
        "checks": run.checks,
        "kernel_times": run.kernel_times,
        "step_times": run.step_times,
        "largest_rel_err": worst_errors(run),
        "targets": targets(run),
        "errors": run.errors,
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def main(argv=None) -> int:
    args = parse_args(argv)
    reason = no_cuda_reason()
    if reason:
        print(f"gpu_check: {reason}", file=sys.stderr)
        return 2
    # The checks time the kernels as configured; nothing is tuned (and nothing built) during this run.
    os.environ["GLAI_AUTOTUNE"] = "0"
    import torch
    import triton

    from glai_kernels import backend, reference

    ops = backend.triton_ops()
    if ops is None:
        print(f"gpu_check: the Triton kernels do not import here ({backend._triton_error})", file=sys.stderr)
        return 1
    run = Run(args.budget_s)
    run.log(f"{device_name()}  torch {torch.__version__}  triton {triton.__version__}")
    run.section("correctness vs float64 reference", lambda: check_correctness(run, ops, reference))
    run.section("determinism", lambda: check_determinism(run, ops))
    if not args.no_compile:
        run.section("torch.compile with the Triton backend", lambda: check_compiled(run))
    if not args.no_timing:
        run.section("kernel timings", lambda: time_kernels(run, ops), timing=True)
        run.section("training-step timings", lambda: time_steps(run, not args.no_compile), timing=True)
    path = write_json(run, args.out)
    run.log(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    print()
    print(table(run))
    return 0 if run.passed else 1


if __name__ == "__main__":
    sys.exit(main())
