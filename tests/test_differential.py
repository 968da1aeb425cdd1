"""Differential test over the configuration space of a GLAI call: every path against a float64 evaluation.

CI runs a fixed sample of seeds (about a minute of interpreter time). A failure prints its seed, its
configuration, the smallest failing configuration the shrinker found and a one-line repro:

    GLAI_DIFF_REPRO='{"seed": ...}' PYTHONPATH=. python -m pytest -q tests/test_differential.py -k repro

``make test-deep`` (``GLAI_DEEP_S`` seconds, ``DEEP_S`` in the Makefile, default 600) draws new configurations
until the time is up, prints how many it tried, and fails on any mismatch; ``GLAI_DEEP_SEED`` picks its first
seed (default: from the clock, printed). Neither runs in ``make test``.
"""

from __future__ import annotations

import json
import math
import os
import re
import time

import pytest
import torch
from _configs import calls, draw, repro, shrink, valid
from _differential import DEVICE, accepts, check

from glai_kernels import structural_patterns

# NaN and inf inputs are drawn on purpose: numpy's warnings about them (the interpreter's arithmetic) are noise.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

# A fixed sample (about 45 s of CPU time under the interpreter); test_sample_covers checks what it holds.
CI_SEEDS = [*range(64)]


def _report(cfg: dict, fails: list[str], budget: int = 40) -> str:
    small = shrink(cfg, lambda c: bool(check(c)), budget)
    lines = [f"seed {cfg['seed']}: {len(fails)} mismatches", *fails[:12], "configuration:", json.dumps(cfg)]
    if small != cfg:
        lines += ["smallest failing configuration found:", json.dumps(small), *check(small)[:6]]
    lines += ["repro:", repro(small)]
    return "\n".join(lines)


@pytest.mark.parametrize("seed", CI_SEEDS)
def test_configuration(seed):
    cfg = draw(seed)
    fails = check(cfg)
    if fails:
        pytest.fail(_report(cfg, fails), pytrace=False)


def test_repro():
    """One configuration from ``GLAI_DIFF_REPRO`` (JSON, as a failure prints it)."""
    text = os.environ.get("GLAI_DIFF_REPRO")
    if not text:
        pytest.skip("set GLAI_DIFF_REPRO to a configuration (JSON) to run it alone")
    cfg = json.loads(text)
    assert valid(cfg), f"malformed configuration: {text}"
    fails = check(cfg)
    assert not fails, "\n".join(fails)


@pytest.mark.deep
def test_deep():
    """New configurations for ``GLAI_DEEP_S`` seconds; every failure shrunk and printed with its repro."""
    seconds = float(os.environ.get("GLAI_DEEP_S", "0"))
    if seconds <= 0:
        pytest.skip("set GLAI_DEEP_S (make test-deep) to draw configurations for that many seconds")
    seed = int(os.environ.get("GLAI_DEEP_SEED", str(int(time.time()) * 1000)))
    print(f"\ndeep run: first seed {seed}, {seconds:.0f} s", flush=True)
    start, cpu0, tried, reports, kinds = time.monotonic(), time.process_time(), 0, [], set()
    while time.monotonic() - start < seconds:
        cfg = draw(seed)
        fails = check(cfg)
        tried += 1
        if fails:
            # Shrunk once per kind of mismatch (path and quantity): a frequent one would eat the time.
            kind = frozenset(re.sub(r"[-+.\de]+|\(.*", "", m) for m in fails)
            reports.append(_report(cfg, fails, budget=0 if kind in kinds else 40))
            kinds.add(kind)
            print(reports[-1], flush=True)
        seed += 1
        if tried % 50 == 0:  # progress, for a run that is stopped before its end
            print(f"deep run: {tried} configurations, {time.monotonic() - start:.0f} s", flush=True)
    wall, cpu = time.monotonic() - start, time.process_time() - cpu0
    print(f"deep run: {tried} configurations in {wall:.0f} s ({cpu:.0f} s CPU), {60 * tried / wall:.1f} a minute, "
          f"{len(reports)} failing; seeds {seed - tried}..{seed - 1}", flush=True)  # fmt: skip
    assert not reports, f"{len(reports)} of {tried} configurations failed:\n\n" + "\n\n".join(reports)


def _covers(cfg: dict) -> set[str]:
    """The combinations the targeted tests never made that this configuration makes."""
    out = set()
    for call in calls(cfg):
        g, mode = call["grad"], call["mode"]
        if mode == "given" and call["special"] == "inf":
            out.add("inf input, given patterns")
        if mode == "structural" and call["special"] == "zero_preact":
            out.add("exact-zero pre-activations, structural")
        if g["x"] and not g["w"][0] and not g["b"][0]:
            out.add("frozen first layer, input wants its gradient")
        if any(b and not w for w, b in zip(g["w"], g["b"])):
            out.add("frozen weight, training bias")
        if call["layout"] != "contiguous" and (g["x"] or any(g["w"]) or any(g["b"])):
            out.add("non-contiguous upstream gradient")
        if mode != "structural" and call["r"] & (call["r"] - 1) and accepts(call, ("triton", True)):
            out.add("fused path, reduction not a power of two")
        for low in ("float16", "bfloat16"):
            if low in (call["dtype"], call["autocast"]):
                out.add(low)
    if any("r" in step for step in cfg["steps"]):
        out.add("two reductions in one process")
    if cfg["steps"]:
        out.add("a second call with one attribute changed")
    return out


COVERED = {
    "inf input, given patterns",
    "exact-zero pre-activations, structural",
    "frozen first layer, input wants its gradient",
    "frozen weight, training bias",
    "non-contiguous upstream gradient",
    "fused path, reduction not a power of two",
    "float16",
    "bfloat16",
    "two reductions in one process",
    "a second call with one attribute changed",
}


def test_sample_covers():
    """CI's fixed sample holds every combination the targeted tests missed (so a change of the generator
    that drops one fails here, not silently)."""
    seen = set().union(*(_covers(draw(s)) for s in CI_SEEDS))
    assert COVERED <= seen, f"the CI sample no longer draws: {sorted(COVERED - seen)}"


# ----------------------------------------------------------------------------- regressions the generator found
def test_bfloat16_nan_gives_a_closed_bit_in_a_hidden_gate():
    """A NaN unit of a hidden layer has bit 0 in bfloat16 as in every dtype (the gate compared its bf16 output
    with 0 as raw bits under Triton's interpreter, where NaN, and -1, are > 0). Seed 44's second call."""
    x = torch.tensor([[math.nan], [1.0], [-1.0], [0.0]], dtype=torch.bfloat16, device=DEVICE)
    w = torch.ones(1, 1, dtype=torch.bfloat16, device=DEVICE)
    b = torch.zeros(1, dtype=torch.bfloat16, device=DEVICE)
    for backend in ("torch", "triton"):
        words = structural_patterns(x, [w, w], [b, b], backend=backend)
        assert [p.flatten().tolist() for p in words] == [[0, 1, 0, 0], [0, 1, 0, 0]], backend
