"""The fused head path on the GPU: what the interpreter cannot show.

- correctness of whole training steps in bf16, fp16, TF32 and IEEE fp32 against the same head run in float64 on
  the PyTorch backend (the interpreter computes bf16 products wrongly, so bf16 is checked here only). Outputs in
  every phase; gradients with given patterns, so both sides gate alike (patterns computed in low precision and
  in float64 differ where a pre-activation is within rounding of 0, and such a unit passes a whole gradient);
- bit-identical weight gradients run to run at a batch long enough that many programs finish their batch
  splits in a varying order (the last one of each tile adds the partials in split order);
- no host synchronisation in a warm step (``torch.cuda.set_sync_debug_mode("error")``);
- a whole step (forward, backward, optimizer) captured in a CUDA graph by hand, replayed against eager steps of
  a twin model: the same bits;
- ``torch.compile(mode="reduce-overhead")`` of the fused model against eager (in the compiled section).

Every case records the fused launch configurations it ran with (``configs.recording``).
"""

from __future__ import annotations

import copy

import torch

from bench.dtypes import DTYPES, precision
from bench.gpu import configs
from bench.gpu.journal import Case
from bench.gpu.kernels import TOL

PHASES = ("structural", "structure", "cache")  # structural phase; frozen, patterns from S; frozen, given
# Heads checked: a narrow odd one (every width, input and output padded, several output tiles) and a wide one
# (hidden layers computed in chunks through their saved output).
GPU_HEADS = ((3001, 300, 100, 3, 130), (16384, 512, 256, 2, 10))  # batch, in, width, depth, out
DRY_HEADS = ((33, 7, 17, 2, 10),)
# The head (in, width, out) of the determinism, no-sync, graph and compile checks.
GPU_STEP_HEAD = (512, 128, 10)
DRY_STEP_HEAD = (24, 16, 10)


def _model(target, in_f, width, depth, out_f, dtype, phase, seed=0, fused=True):
    from glai.nn import GLAIMLP

    torch.manual_seed(seed)
    model = GLAIMLP(in_f, [width] * depth, out_f, backend=target.backend, fused=fused, device=target.device,
                    dtype=dtype)  # fmt: skip
    return model if phase == "structural" else model.freeze()


def _reference(model):
    ref = copy.deepcopy(model).double()
    ref.backend, ref.fused = "torch", False
    return ref


# (dtype, phases) checked at every head (bf16, which the interpreter cannot check) and at the first head only.
EVERY_HEAD = (("bfloat16", PHASES),)
FIRST_HEAD = (("float16", ("cache",)), ("tf32", ("cache",)), ("float32", ("cache",)))


def correctness_cases(target, heads) -> list[Case]:
    """bf16 in every phase at every head; fp16, TF32 and IEEE fp32 with given patterns at the first head (the
    interpreter tests cover those dtypes' logic; here their compiled code meets real data once)."""
    return [
        check_case(target, head, label, phase)
        for i, head in enumerate(heads)
        for label, phases in EVERY_HEAD + (FIRST_HEAD if i == 0 else ())
        for phase in phases
    ]


def check_case(target, head: tuple, label: str, phase: str, fused: bool | None = True) -> Case:
    """One training step of the head ``(batch, in, width, depth, out)`` in ``label`` and ``phase`` against the
    same head in float64 on the PyTorch backend: outputs, and with given patterns gradients. ``fused``: as
    ``GLAIMLP`` takes it (``None``: the default path, whatever the dispatcher picks)."""
    batch, in_f, width, depth, out_f = head
    shape = f"B{batch} {in_f}-{width}x{depth}-{out_f}"
    path = "fused" if fused else "default"

    def run(emit):
        dtype = DTYPES[label]
        with precision(label), configs.recording() as seen:
            model = _model(target, in_f, width, depth, out_f, dtype, phase, seed=1, fused=fused)
            ref = _reference(model)
            gen = target.generator(2)
            x = target.randn(batch, in_f, dtype=torch.float64, gen=gen)
            dy = target.randn(batch, out_f, dtype=torch.float64, gen=gen)
            # Patterns of the float64 twin for the input as the model sees it, given to both sides: they gate
            # alike to the bit, and no gate kernel is compiled for the check.
            patterns = ref.patterns(x.to(dtype).double()) if phase == "cache" else None
            args = () if patterns is None else (patterns,)
            y = model(x.to(dtype), *args)
            y.backward(dy.to(dtype))
            y_ref = ref(x, *args)
            y_ref.backward(dy)
        config, source = configs.summary(seen)
        tol = target.tol(label, TOL[label])
        err = target.rel_err(y, y_ref)
        emit(what=f"{path} output", ok=err <= tol and y.dtype == dtype, value=err, unit="rel_err", tol=tol,
             phase=phase, config=config, config_source=source)  # fmt: skip
        if phase == "cache":
            worst = max(target.rel_err(p.grad, q.grad) for p, q in zip(model.parameters(), ref.parameters()))
            emit(what=f"{path} gradients", ok=worst <= tol, value=worst, unit="rel_err", tol=tol, phase=phase,
                 config=config, config_source=source)  # fmt: skip

    return Case(f"correctness {path} {phase} {label} {shape}", run,
                {"what": f"{path} {phase}", "shape": shape, "dtype": label})  # fmt: skip


def determinism_case(target, batch: int, head: tuple) -> Case:
    """Three backward passes of a depth-3 head on one batch: the weight gradients' bits never change."""
    in_f, width, out_f = head
    shape = f"B{batch} {in_f}-{width}x3-{out_f}"

    def run(emit):
        from glai_kernels import fused_launch

        with configs.recording() as seen:
            model = _model(target, in_f, width, 3, out_f, torch.bfloat16, "structure")
            gen = target.generator(3)
            x = target.randn(batch, in_f, dtype=torch.bfloat16, gen=gen)
            dy = target.randn(batch, out_f, dtype=torch.bfloat16, gen=gen)
            grads = []
            for _ in range(3):
                model.zero_grad(set_to_none=True)
                model(x).backward(dy)
                grads.append([p.grad.clone() for p in model.parameters()])
        splits = max(
            (
                st["constexprs"].get("SPLITS", 1)
                for k, st in fused_launch._STATIC.items()
                if k[0] == "grad_weights"
            ),
            default=1,
        )
        same = all(target.equal(a, b) for later in grads[1:] for a, b in zip(grads[0], later))
        config, source = configs.summary(seen)
        emit(what="fused weight gradients", ok=same, value=float(same), unit="bit-identical", splits=splits,
             config=config, config_source=source)  # fmt: skip

    return Case(
        f"determinism fused gradients bfloat16 {shape}",
        run,
        {"what": "fused weight gradients", "shape": shape, "dtype": "bfloat16"},
    )


def _step(model, opt, x, dy, patterns=None):
    opt.zero_grad(set_to_none=True)
    y = model(x) if patterns is None else model(x, patterns)
    y.backward(dy)
    opt.step()


def _cuda_only(target) -> str | None:
    return None if target.kind == "cuda" else "not applicable: needs CUDA (dry run or replay)"


def no_sync_cases(target, batch: int, head: tuple) -> list[Case]:
    in_f, width, out_f = head
    cases = []
    for phase in PHASES:

        def run(emit, phase=phase):
            model = _model(target, in_f, width, 2, out_f, torch.bfloat16, phase)
            opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
            gen = target.generator(4)
            x = target.randn(batch, in_f, dtype=torch.bfloat16, gen=gen)
            dy = target.randn(batch, out_f, dtype=torch.bfloat16, gen=gen)
            patterns = model.patterns(x) if phase == "cache" else None
            _step(model, opt, x, dy, patterns)  # validation, compilation, workspaces, momenta
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                _step(model, opt, x, dy, patterns)
                ok, error = True, None
            except RuntimeError as exc:  # the sync debug mode raises at the synchronising call
                ok, error = False, f"{type(exc).__name__}: {exc}"
            finally:
                torch.cuda.set_sync_debug_mode("default")
            emit(what="fused step without host sync", ok=ok, value=float(ok), unit="no sync", phase=phase,
                 error=error)  # fmt: skip

        shape = f"B{batch} {in_f}-{width}x2-{out_f}"
        cases.append(
            Case(
                f"determinism fused no host sync {phase} {shape}",
                run,
                {"what": f"fused no sync {phase}", "shape": shape, "dtype": "bfloat16"},
                _cuda_only(target),
            )
        )
    return cases


def graph_matches_eager(model, x, dy, replays: int = 5) -> bool:
    """A training step of ``model`` captured by hand in a CUDA graph and replayed ``replays`` times, against as
    many eager steps of a twin: whether every parameter ends bit-identical. (``tests/test_fused_cuda.py`` asks
    this too.)"""
    twin = copy.deepcopy(model)
    opts = [torch.optim.SGD(m.parameters(), lr=1e-2, momentum=0.9) for m in (model, twin)]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: signatures validated, kernels compiled, momenta allocated
        for _ in range(3):
            _step(model, opts[0], x, dy)
            _step(twin, opts[1], x, dy)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        _step(model, opts[0], x, dy)
    for _ in range(replays):
        graph.replay()
        _step(twin, opts[1], x, dy)
    torch.cuda.synchronize()
    return all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))


def graph_case(target, batch: int, head: tuple) -> Case:
    """A structural-phase step captured in a CUDA graph against eager steps (:func:`graph_matches_eager`)."""
    in_f, width, out_f = head
    shape = f"B{batch} {in_f}-{width}x2-{out_f}"

    def run(emit):
        model = _model(target, in_f, width, 2, out_f, torch.bfloat16, "structural")
        gen = target.generator(5)
        x = target.randn(batch, in_f, dtype=torch.bfloat16, gen=gen)
        dy = target.randn(batch, out_f, dtype=torch.bfloat16, gen=gen)
        same = graph_matches_eager(model, x, dy)
        emit(what="fused step in a CUDA graph vs eager", ok=same, value=float(same), unit="bit-identical")

    return Case(
        f"determinism fused CUDA graph bfloat16 {shape}",
        run,
        {"what": "fused CUDA graph", "shape": shape, "dtype": "bfloat16"},
        _cuda_only(target),
    )


def compiled_case(target, batch: int, head: tuple) -> Case:
    """``torch.compile(mode="reduce-overhead", fullgraph=True)`` of a fused model against the same model eager,
    over four steps of gradients, to bf16 rounding."""
    in_f, width, out_f = head
    shape = f"B{batch} {in_f}-{width}x2-{out_f}"

    def run(emit):
        model = _model(target, in_f, width, 2, out_f, torch.bfloat16, "structure")
        twin = copy.deepcopy(model)
        mode = "reduce-overhead" if target.kind == "cuda" else "default"
        compiled = target.compile(twin, mode, key=("glai fused", (in_f, width, width, out_f), "bfloat16", batch),
                                  fullgraph=True)  # fmt: skip
        x = target.randn(batch, in_f, dtype=torch.bfloat16, gen=target.generator(6))
        try:
            with configs.recording() as seen:
                for _ in range(4):
                    if target.kind == "cuda":
                        torch.compiler.cudagraph_mark_step_begin()
                    for m in (model, twin):
                        m.zero_grad(set_to_none=True)
                    model(x).float().square().mean().backward()
                    compiled(x).float().square().mean().backward()
        finally:
            if target.kind != "replay":
                torch._dynamo.reset()
        worst = max(target.rel_err(q.grad, p.grad) for p, q in zip(model.parameters(), twin.parameters()))
        config, source = configs.summary(seen)
        emit(what=f"torch.compile({mode}) fused gradients vs eager", ok=worst <= 1e-2, value=worst,
             unit="rel_err", tol=1e-2, compile_backend=target.compile_backend, config=config,
             config_source=source)  # fmt: skip

    return Case(
        f"compiled glai fused vs eager bfloat16 {shape}",
        run,
        {"what": "torch.compile(fused GLAIMLP)", "shape": shape, "dtype": "bfloat16"},
    )


def alternating_case(target, batches: tuple, steps: int, head: tuple) -> Case:
    """``torch.compile(mode="reduce-overhead")`` of a fused model fed two batch sizes whose weight gradients get
    different split counts, alternated for ``steps`` steps, against the same model eager: each new split count
    makes its own workspace, the second one during a warm-up after the first graph was recorded, in the
    CUDA-graph pool; a pool checkpoint restore must neither free it nor trip over it. Gradients to bf16
    rounding at every step; the split counts each batch got are recorded (on a GPU they must differ)."""
    in_f, width, out_f = head
    shape = f"B{batches[0]}/B{batches[1]} {in_f}-{width}x2-{out_f}"

    def run(emit):
        model = _model(target, in_f, width, 2, out_f, torch.bfloat16, "structure")
        twin = copy.deepcopy(model)
        mode = "reduce-overhead" if target.kind == "cuda" else "default"
        compiled = target.compile(twin, mode, key=("glai fused alternating", (in_f, width, width, out_f),
                                                   "bfloat16", batches), fullgraph=True)  # fmt: skip
        gen = target.generator(7)
        xs = [target.randn(b, in_f, dtype=torch.bfloat16, gen=gen) for b in batches]
        splits, worst = {}, 0.0
        try:
            for i in range(steps):
                x = xs[i % 2]
                if target.kind == "cuda":
                    torch.compiler.cudagraph_mark_step_begin()
                for m in (model, twin):
                    m.zero_grad(set_to_none=True)
                with configs.recording() as seen:
                    model(x).float().square().mean().backward()
                splits.setdefault(x.shape[0], sorted({c["config"].get("SPLITS", 1) for c in seen
                                                      if "SPLITS" in c["config"]}))  # fmt: skip
                compiled(x).float().square().mean().backward()
                errs = [target.rel_err(q.grad, p.grad) for p, q in zip(model.parameters(), twin.parameters())]
                worst = max([worst, *errs], key=lambda e: e if e == e else float("inf"))  # NaN is the worst
        finally:
            if target.kind != "replay":
                torch._dynamo.reset()
        split_counts = [splits.get(b) for b in batches]
        differ = split_counts[0] != split_counts[1]
        ok = worst <= 1e-2 and (differ or target.kind != "cuda")
        emit(what=f"torch.compile({mode}) fused gradients vs eager, two batch sizes alternated", ok=ok,
             value=worst, unit="rel_err", tol=1e-2, steps=steps, splits=split_counts, splits_differ=differ,
             compile_backend=target.compile_backend)  # fmt: skip

    return Case(
        f"compiled glai fused alternating batches bfloat16 {shape}",
        run,
        {"what": "torch.compile(fused GLAIMLP), alternating batches", "shape": shape, "dtype": "bfloat16"},
    )
