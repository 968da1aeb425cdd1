"""Host time per op call, with the kernel launch stubbed out: what the Python side of each op costs.

    python -m bench.host_overhead [--calls 3000] [--repeats 7]

Runs on CPU under Triton's interpreter (set here before the kernels import) with every kernel launch replaced
by a no-op, so the figures are the time of argument checks, configuration lookup, output allocation and
dispatch, and nothing of the kernels themselves. Two ways in are timed per op: the public function
(``glai_kernels.per_layer_ops.<op>``, what the autograd Function calls) and the registered custom op
(``torch.ops.glai.<op>``, what a ``torch.compile``d graph calls). Each figure is the median over ``--repeats``
rounds of the mean over ``--calls`` calls; the spread (max / min over rounds) is printed beside it, since these
shared machines are noisy. Triton's own launch cost (binding arguments, reading the kernel cache) comes on top
on a GPU and is not in these figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports the kernels

import torch  # noqa: E402


def _stub_launches() -> None:
    from triton.runtime.interpreter import InterpretedFunction

    InterpretedFunction.run = lambda self, *args, **kwargs: None


def _cases(ops, batch: int, width: int):
    from glai_kernels.layout import pack_patterns

    torch.manual_seed(0)
    x = torch.randn(batch, width)
    w = torch.randn(width, width)
    b = torch.randn(width)
    g = torch.randn(batch, width)
    words = pack_patterns(torch.rand(batch, width) < 0.5)
    glai = torch.ops.glai
    return {
        "gate": (lambda: ops.gate(x, w, b), lambda: glai.gate(x, w, b)),
        "masked_forward": (
            lambda: ops.masked_forward(x, w, b, words, 1),
            lambda: glai.masked_forward(x, w, b, words, 1),
        ),
        "backward_data": (
            lambda: ops.backward_data(g, w, words, 1),
            lambda: glai.backward_data(g, w, words, 1),
        ),
        "backward_weights": (
            lambda: ops.backward_weights(g, x, True),
            lambda: glai.backward_weights(g, x, True),
        ),
    }


def time_per_call(fn, calls: int, repeats: int) -> tuple[float, float]:
    """(median over rounds of the mean time per call in microseconds, max / min over rounds)."""
    for _ in range(min(200, calls)):
        fn()
    rounds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(rounds), max(rounds) / min(rounds)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.host_overhead", description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=3000, help="calls per timed round (> 0)")
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds per figure (> 0)")
    ap.add_argument("--batch", type=int, default=64, help="rows of the operands (> 0)")
    ap.add_argument("--width", type=int, default=64, help="layer width (> 0)")
    args = ap.parse_args(argv)
    for flag in ("calls", "repeats", "batch", "width"):
        if getattr(args, flag) <= 0:
            ap.error(f"--{flag} must be a positive integer, got {getattr(args, flag)}")
    torch.set_num_threads(1)
    _stub_launches()
    from glai_kernels import per_layer_ops

    print(
        f"host time per call, launches stubbed, CPU, torch {torch.__version__}, batch {args.batch}, width "
        f"{args.width}, median of {args.repeats} x {args.calls} calls (spread = slowest / fastest round)"
    )
    print(f"{'op':18s} {'public call':>14s} {'spread':>7s} {'torch.ops.glai':>15s} {'spread':>7s}")
    for name, (public, registered) in _cases(per_layer_ops, args.batch, args.width).items():
        t_pub, s_pub = time_per_call(public, args.calls, args.repeats)
        t_reg, s_reg = time_per_call(registered, args.calls, args.repeats)
        print(f"{name:18s} {t_pub:11.2f} us {s_pub:7.2f} {t_reg:12.2f} us {s_reg:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
