"""Where the plan runs, and how it times and compiles there: one plan, three targets.

- ``Cuda``: the GPU. Kernels: medians of ``triton.testing.do_bench`` (device events, L2 flushed between
  calls). Training steps: back-to-back steps as a training loop runs them, between two device events, so the
  host's launch overhead counts where it holds the GPU up (``do_bench``'s cache flush would hide some of it).
  ``torch.compile`` with Inductor.
- ``Dry``: the CPU under Triton's interpreter at tiny shapes (``--dry-run``): the figures mean nothing, the
  logic is the same; ``torch.compile`` uses Dynamo with the ``eager`` backend (Inductor on CPU would compile
  C++ for minutes, and ``mode="reduce-overhead"`` needs CUDA graphs).
- ``Replay``: meta tensors at the GPU's shapes, with the kernel launches and the compiles stubbed out
  (``--count-compiles``): nothing is computed, what would be compiled is counted.
"""

from __future__ import annotations

import math
import statistics
import time

import torch


class Target:
    kind = ""
    backend = "triton"  # the GLAI backend of every model and op
    compile_backend = "inductor"
    step_warmup = 3  # calls before a step is timed: compilation, allocator pools, CUDA-graph recording
    probe = None  # a GPU's check that the device still answers after an error (bench.gpu.failures.poisoned)

    def __init__(self, device: str):
        self.device = torch.device(device)

    def generator(self, seed: int):
        return torch.Generator(device=self.device).manual_seed(seed)

    def randn(self, *shape, dtype, gen, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen, device=self.device) * scale).to(dtype)

    def randint(self, high: int, *shape, gen, dtype=torch.int64) -> torch.Tensor:
        return torch.randint(0, high, shape, generator=gen, device=self.device, dtype=dtype)

    def sync(self) -> None:
        pass

    def release(self) -> None:
        pass

    def first_call(self, fn) -> float:
        """Seconds of one call, synchronised: the compile time of a first call, the run time of the next."""
        start = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - start

    def rel_err(self, out: torch.Tensor, ref: torch.Tensor) -> float:
        """``||out - ref|| / ||ref||`` in float64; NaN anywhere in ``out`` gives NaN."""
        diff = (out.double() - ref.double()).norm().item()
        return diff / max(ref.double().norm().item(), 1e-300)

    def equal(self, a: torch.Tensor, b: torch.Tensor) -> bool:
        return bool(torch.equal(a, b))

    def tol(self, label: str, tol: float) -> float:
        """The tolerance of a whole head's gradients in ``label`` here (the GPU's: ``tol``)."""
        return tol

    def count(self, t: torch.Tensor) -> int:
        return int(t.sum().item())


class Cuda(Target):
    kind = "cuda"

    def __init__(self):
        super().__init__("cuda")

    def sync(self) -> None:
        torch.cuda.synchronize()

    def release(self) -> None:
        torch.cuda.empty_cache()

    def probe(self) -> str | None:
        """None when a one-element op and a synchronisation still work, else the error they met."""
        try:
            one = torch.ones(1, device=self.device).add_(1)
            torch.cuda.synchronize()
            return None if one.item() == 2.0 else f"1 + 1 gave {one.item()}"
        except Exception as exc:
            return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"

    def time(self, fn, rep_ms: int = 100) -> tuple[float, float, float]:
        from triton.testing import do_bench

        med, p20, p80 = do_bench(fn, warmup=max(10, rep_ms // 4), rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
        return float(med), float(p20), float(p80)

    def time_loop(self, fn, rounds: int = 9, round_ms: float = 8.0) -> tuple[float, float, float]:
        """Median, 20th and 80th percentile of the time per call, over rounds of back-to-back calls."""
        self.sync()
        start = time.perf_counter()
        fn()
        self.sync()
        n = max(1, min(1000, int(round_ms / max((time.perf_counter() - start) * 1e3, 1e-3))))
        per_call = []
        for _ in range(rounds):
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            for _ in range(n):
                fn()
            end.record()
            end.synchronize()
            per_call.append(begin.elapsed_time(end) / n)
        q = statistics.quantiles(per_call, n=10, method="inclusive")
        return statistics.median(per_call), q[1], q[7]

    def compile(self, fn, mode: str, key: tuple, fullgraph: bool = False):
        return torch.compile(fn, mode=None if mode == "default" else mode, fullgraph=fullgraph)


class Dry(Target):
    kind = "dry"
    compile_backend = "eager (dry run: Dynamo only)"
    step_warmup = 1

    def __init__(self):
        super().__init__("cpu")

    def time(self, fn, rep_ms: int = 100) -> tuple[float, float, float]:
        start = time.perf_counter()
        fn()
        ms = (time.perf_counter() - start) * 1e3
        return ms, ms, ms

    time_loop = time

    def compile(self, fn, mode: str, key: tuple, fullgraph: bool = False):
        return torch.compile(fn, backend="eager", fullgraph=fullgraph)

    def tol(self, label: str, tol: float) -> float:
        # numpy has no bf16: the interpreter rounds bf16 products its own way, and a whole head's gradients
        # land at 0.9-1.03e-2 against float64 depending on the shape. The dry run checks the logic, not bf16's
        # rounding (the GPU run does, at the GPU's tolerance).
        return 2 * tol if label == "bfloat16" else tol


class Replay(Target):
    """Meta tensors: shapes and dtypes flow through every op, no data and no kernel ever runs."""

    kind = "replay"
    step_warmup = 1

    def __init__(self):
        super().__init__("meta")
        self.compiles: list[tuple] = []  # (mode, *key) of every torch.compile the plan asked for
        self.timed = 0  # calls that would be timed

    def generator(self, seed: int):
        return None

    def randn(self, *shape, dtype, gen, scale: float = 1.0) -> torch.Tensor:
        return torch.empty(*shape, device=self.device, dtype=dtype)

    def randint(self, high: int, *shape, gen, dtype=torch.int64) -> torch.Tensor:
        return torch.empty(*shape, device=self.device, dtype=dtype)

    def first_call(self, fn) -> float:
        fn()
        return math.nan

    def time(self, fn, rep_ms: int = 100) -> tuple[float, float, float]:
        self.timed += 1
        fn()
        return (math.nan,) * 3

    time_loop = time

    def compile(self, fn, mode: str, key: tuple, fullgraph: bool = False):
        self.compiles.append((mode, *key))
        return fn

    def rel_err(self, out, ref) -> float:
        return 0.0

    def equal(self, a, b) -> bool:
        return True

    def count(self, t) -> int:
        return 0


def make(kind: str) -> Target:
    return {"cuda": Cuda, "dry": Dry, "replay": Replay}[kind]()
