"""The per-layer kernels: correctness against float64, determinism, and timings against cuBLAS.

Every (kernel, dtype, shape) is a case of its own. Correctness: fresh random operands (weights scaled as
``nn.Linear``'s), outputs filled with NaN (pattern words with garbage) before the launch, relative error
``||out - ref|| / ||ref||`` against the PyTorch reference run in float64; pattern bits may differ from the
reference only where ``|z|`` is at rounding level. Timings: the kernel and what cuBLAS runs for the same GEMM
(``F.linear(x, W)`` for the gate and the masked forward, ``g @ W`` for the data gradient, ``g^T h`` for the
weight gradient), medians of ``do_bench``, in TFLOP/s of :mod:`glai_kernels.costs`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.dtypes import DTYPES, precision
from bench.gpu import configs
from bench.gpu.journal import Case

KERNELS = ("gate", "masked_forward", "masked_forward_ungated", "backward_data", "backward_weights")
TIMED = ("gate", "masked_forward", "backward_data", "backward_weights")
TOL = {"float32": 1e-5, "tf32": 5e-3, "float16": 5e-3, "bfloat16": 1e-2}
CUBLAS = {
    "gate": "F.linear(x, W)",
    "masked_forward": "F.linear(x, W)",
    "backward_data": "g @ W",
    "backward_weights": "g^T @ h",
}


class Operands:
    """The operands of one (dtype, shape) group, drawn once and shared by its kernels; one group is held at a
    time, so a large shape's tensors are freed when the next group starts."""

    def __init__(self, target):
        self.target = target
        self.key = None
        self.value = None

    def get(self, M, K, N, r, label, seed):
        key = (M, K, N, r, label, seed)
        if key != self.key:
            self.key, self.value = None, None
            self.target.release()
            self.value = self._draw(M, K, N, r, DTYPES[label], seed)
            self.key = key
        return self.value

    def _draw(self, M, K, N, r, dtype, seed):
        from glai_kernels.layout import PATTERN_DTYPE, words_for

        t, g = self.target, self.target.generator(seed)

        def words(units):  # random bits, both signs of an int32 word
            return t.randint(2**32, M, words_for(units), gen=g).sub_(2**31).to(PATTERN_DTYPE)

        return {
            "x": t.randn(M, K, dtype=dtype, gen=g),
            "w": t.randn(N, K, dtype=dtype, gen=g, scale=K**-0.5),
            "b": t.randn(N, dtype=dtype, gen=g, scale=0.1),
            "g": t.randn(M, N, dtype=dtype, gen=g),
            "words_out": words(N // r),
            "words_in": words(K // r),
        }


def _poison(shape, dtype, device):
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def poisoned(name: str, t: dict):
    """The outputs of kernel ``name`` on the operands ``t``, filled with NaN (pattern words with garbage), so
    an element the kernel does not write fails."""
    from glai_kernels.layout import PATTERN_DTYPE, words_for

    (M, K), N, dt, dev = t["x"].shape, t["w"].shape[0], t["x"].dtype, t["x"].device
    if name == "gate":
        junk = torch.full((M, words_for(N)), 0x5A5A5A5A, dtype=PATTERN_DTYPE, device=dev)
        return _poison((M, N), dt, dev), junk
    if name == "backward_weights":
        return _poison((N, K), dt, dev), _poison((N,), dt, dev)
    return _poison((M, K) if name == "backward_data" else (M, N), dt, dev)


def launch(ops, name: str, t: dict, r: int, out):
    """One kernel on the operands ``t``, writing into ``out`` (see :func:`poisoned`)."""
    x, w, b, g = t["x"], t["w"], t["b"], t["g"]
    if name == "gate":
        return ops.gate(x, w, b, out=out)
    if name == "masked_forward":
        return ops.masked_forward(x, w, b, t["words_out"], r, out=out)
    if name == "masked_forward_ungated":
        return ops.masked_forward(x, w, b, None, 1, out=out)
    if name == "backward_data":
        return ops.backward_data(g, w, t["words_in"], r, out=out)
    if name == "backward_weights":
        return ops.backward_weights(g, x, True, out=out)
    raise ValueError(f"unknown kernel {name!r}; expected one of {KERNELS}")


def reference(ref, name: str, t: dict, r: int):
    d = {k: (v.double() if v.is_floating_point() else v) for k, v in t.items()}
    x, w, b, g = d["x"], d["w"], d["b"], d["g"]
    return {
        "gate": lambda: ref.gate(x, w, b),
        "masked_forward": lambda: ref.masked_forward(x, w, b, d["words_out"], r),
        "masked_forward_ungated": lambda: ref.masked_forward(x, w, b, None, 1),
        "backward_data": lambda: ref.backward_data(g, w, d["words_in"], r),
        "backward_weights": lambda: ref.backward_weights(g, x, True),
    }[name]()


def _parts(name: str) -> tuple[str, ...]:
    return {"gate": ("relu", "pattern"), "backward_weights": ("dW", "db")}.get(name, ("",))


def correctness_cases(target, ops, ref, shapes, narrow: int) -> list[Case]:
    """fp32 IEEE (first shape only: its FMA-path kernels compile slowest), TF32 (first shape), fp16 and bf16
    (every shape, the odd one covering masked edges), then the narrow output layer whose weight gradient is
    split over the batch, in fp32 and bf16."""
    pool = Operands(target)
    cases = []
    plan = [("float32", shapes[:1]), ("tf32", shapes[:1]), ("float16", shapes), ("bfloat16", shapes)]
    seed = 0
    for label, group in plan:
        for M, K, N, r in group:
            seed += 1
            shape = f"{M}x{K}x{N} r{r}"
            for name in KERNELS:
                cases.append(
                    Case(
                        f"correctness {name} {label} {shape}",
                        _check(target, ops, ref, pool, name, (M, K, N, r, label, seed)),
                        {"what": name, "shape": shape, "dtype": label},
                    )
                )
    M, K = shapes[0][:2]
    for label in ("float32", "bfloat16"):
        shape = f"{M}x{K}x{narrow} split batch"
        cases.append(
            Case(
                f"correctness backward_weights {label} {shape}",
                _check_narrow(target, ops, ref, pool, (M, K, narrow, label)),
                {"what": "backward_weights", "shape": shape, "dtype": label},
            )
        )
    return cases


def _check(target, ops, ref, pool, name, key):
    M, K, N, r, label, seed = key

    def run(emit):
        from glai_kernels.layout import unpack_patterns

        t = pool.get(*key)
        with precision(label), configs.recording() as seen:
            got = launch(ops, name, t, r, poisoned(name, t))
        expected = reference(ref, name, t, r)
        got = got if isinstance(got, tuple) else (got,)
        expected = expected if isinstance(expected, tuple) else (expected,)
        config, source = configs.summary(seen)
        tol = TOL[label]
        for part, out, exp in zip(_parts(name), got, expected):
            what = f"{name}.{part}" if part else name
            if part == "pattern":  # bits may differ only where |z| is at rounding level
                z = F.linear(t["x"].double(), t["w"].double(), t["b"].double())
                near = z.abs() <= 1e-3 * z.abs().max()
                wrong = (unpack_patterns(out, N) != unpack_patterns(exp, N)) & ~near
                bad = target.count(wrong)
                emit(what=what, ok=bad == 0, value=float(bad), unit="mismatched bits",
                     near_zero=target.count(near), config=config, config_source=source)  # fmt: skip
                continue
            err = target.rel_err(out, exp)
            ok = err <= tol and out.dtype == DTYPES[label]
            emit(what=what, ok=ok, value=err, unit="rel_err", tol=tol, config=config, config_source=source)

    return run


def _check_narrow(target, ops, ref, pool, key):
    """A narrow (output) layer has too few dW tiles for the GPU: the batch is split and the fp32 partials are
    added in a fixed order. Checked for accuracy and for bit-identical reruns."""
    M, K, N, label = key

    def run(emit):
        t = pool.get(M, K, N, 1, label, 123)
        with precision(label), configs.recording() as seen:
            runs = [ops.backward_weights(t["g"], t["x"], True) for _ in range(2)]
        expected = ref.backward_weights(t["g"].double(), t["x"].double(), True)
        config, source = configs.summary(seen)
        for i, part in enumerate(("dW", "db")):
            err = target.rel_err(runs[0][i], expected[i])
            same = target.equal(runs[0][i], runs[1][i])
            emit(what=f"backward_weights.{part}", ok=err <= TOL[label] and same, value=err, unit="rel_err",
                 tol=TOL[label], bit_identical=same, config=config, config_source=source)  # fmt: skip

    return run


def determinism_cases(target, ops, shape) -> list[Case]:
    """Each kernel twice on the same operands, fp32 and bf16, at the first correctness shape (its kernels are
    compiled already): the outputs must be bit-identical."""
    pool = Operands(target)
    M, K, N, r = shape
    cases = []
    for label in ("float32", "bfloat16"):
        for name in KERNELS:

            def run(emit, name=name, label=label):
                t = pool.get(M, K, N, r, label, 7)
                with configs.recording() as seen:
                    a = launch(ops, name, t, r, poisoned(name, t))
                b = launch(ops, name, t, r, poisoned(name, t))
                a, b = (a if isinstance(a, tuple) else (a,)), (b if isinstance(b, tuple) else (b,))
                same = all(target.equal(u, v) for u, v in zip(a, b))
                config, source = configs.summary(seen)
                emit(what=name, ok=same, value=float(same), unit="bit-identical",
                     config=config, config_source=source)  # fmt: skip

            shape_s = f"{M}x{K}x{N} r{r}"
            cases.append(
                Case(
                    f"determinism {name} {label} {shape_s}",
                    run,
                    {"what": name, "shape": shape_s, "dtype": label},
                )
            )
    return cases


def timing_cases(target, ops, shapes, labels, names=TIMED) -> list[Case]:
    from glai_kernels import costs

    pool = Operands(target)
    cases = []
    for label in labels:
        for M, K, N in shapes:
            shape = f"{M}x{K}x{N}"
            for name in names:

                def run(emit, name=name, label=label, M=M, K=K, N=N):
                    t = pool.get(M, K, N, 1, label, 11)
                    x, w, g = t["x"], t["w"], t["g"]
                    cublas = {
                        "gate": lambda: F.linear(x, w),
                        "masked_forward": lambda: F.linear(x, w),
                        "backward_data": lambda: g @ w,
                        "backward_weights": lambda: g.t() @ x,
                    }[name]
                    out = poisoned(name, t)  # written in place by every call: no allocation is timed
                    with precision(label):
                        with configs.recording() as seen:
                            first = target.first_call(lambda: launch(ops, name, t, 1, out))
                        ms = target.time(lambda: launch(ops, name, t, 1, out))
                        ms_ref = target.time(cublas)
                    flops = costs.op_flops(name, M, K, N)
                    config, source = configs.summary(seen)
                    emit("timing", what=name, value=ms[0], unit="ms", p20=ms[1], p80=ms[2],
                         tflops=flops / ms[0] / 1e9, baseline=CUBLAS[name], baseline_ms=ms_ref[0],
                         baseline_p20=ms_ref[1], baseline_p80=ms_ref[2],
                         baseline_tflops=flops / ms_ref[0] / 1e9,
                         pct_of_cublas=100.0 * ms_ref[0] / ms[0], first_call_s=first, batch=M, in_features=K,
                         out_features=N, config=config, config_source=source)  # fmt: skip

                cases.append(
                    Case(
                        f"timing {name} {label} {shape}", run, {"what": name, "shape": shape, "dtype": label}
                    )
                )
    return cases


def memory_rate_case(target, elements: int, state: dict) -> Case:
    """A device-to-device copy of ``elements`` bf16 values: bytes read plus bytes written over the median
    time, the memory rate the step floors are computed with."""

    def run(emit):
        g = target.generator(5)
        x = target.randn(elements, dtype=torch.bfloat16, gen=g)
        y = torch.empty_like(x)
        first = target.first_call(lambda: y.copy_(x))
        ms = target.time(lambda: y.copy_(x))
        nbytes = 2 * x.numel() * x.element_size()
        gbps = nbytes / ms[0] / 1e6
        state["memory_gbps"] = gbps
        emit("timing", what="copy", value=gbps, unit="GB/s", ms=ms[0], p20=ms[1], p80=ms[2], bytes=nbytes,
             first_call_s=first, config=None, config_source="none")  # fmt: skip

    return Case(
        f"timing copy bfloat16 {elements}", run, {"what": "copy", "shape": str(elements), "dtype": "bfloat16"}
    )
