"""A seeded generator of GLAI call configurations, their shrinking, and the one-line repro of a failure.

A configuration is a JSON-able dict: everything a call depends on (mode, shapes, reduction, dtype, autocast,
which tensors want a gradient, the upstream gradient's layout, special values in the input) plus ``steps``,
the changes applied to the *same* tensors and modules on the calls that follow the first one, so that every
memo (signature verdicts, launch plans, workspaces) sees a second signature in one process. The tensors are
drawn from ``seed`` by :mod:`tests._differential`, which runs a configuration on every path and compares it with
a float64 evaluation of the formula.

Drawing is uniform over small menus that put the edges (width 1, 31/32/33 around a word, the widest hidden layer
the fused table allows, batch 0 and 1, leading dimensions, reductions that are not powers of two, exact zeros,
+-inf, NaN) in front often, since that is where slips hide.
"""

from __future__ import annotations

import json
import math
import random

from glai_kernels.fused_config import MAX_WIDTH

MODES = ("given", "structural", "from_structure")
LAYOUTS = ("contiguous", "transposed", "expand_rows", "expand_cols", "slice")
SPECIALS = ("none", "zeros", "zero_preact", "inf", "nan")
WIDEST = MAX_WIDTH  # the widest hidden layer the fused path's table takes on any device
LOW = ("float16", "bfloat16")
WIDTHS = (1, 2, 3, 5, 16, 31, 32, 33, 48, 64, 100)
FEATURES = (1, 2, 3, 7, 17, 33, 40)
BATCHES = ((0,), (1,), (2,), (5,), (13,), (37,), (3, 5), (2, 1, 3), (4, 0))
STRUCTURAL_FACTORS = (2, 3, 4, 5, 6, 8)  # reductions drawn first: every hidden width a multiple
CHANGES = ("r", "dtype", "batch", "grad", "layout", "autocast")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def common_divisors(widths) -> list[int]:
    out = _divisors(widths[0])
    return [d for d in out if all(n % d == 0 for n in widths)]


def _grad(rng: random.Random, L: int, bias: bool) -> dict:
    """Which tensors want a gradient, each independently (a frozen first layer, a frozen weight with a
    training bias, an input that wants its gradient with everything frozen...)."""
    p = rng.choice((0.2, 0.5, 0.9))
    return {
        "x": rng.random() < 0.4,
        "w": [rng.random() < p for _ in range(L)],
        "b": [bias and rng.random() < p for _ in range(L)],
    }


def draw(seed: int) -> dict:
    """The configuration of ``seed`` (the same seed gives the same configuration on every machine)."""
    rng = random.Random(seed)
    mode = rng.choice(MODES)
    depth = rng.choice((1, 1, 2, 2, 3, 4))
    if rng.random() < 0.5:  # widths from the menu, then any common divisor as the reduction
        hidden = [rng.choice(WIDTHS) for _ in range(depth)]
        r = rng.choice(common_divisors(hidden))
    else:  # a reduction first (not always a power of two), then multiples of it
        r = rng.choice(STRUCTURAL_FACTORS)
        hidden = [r * rng.choice((1, 2, 3, 5, 7, 11)) for _ in range(depth)]
    if rng.random() < 0.04:  # the widest layer the table allows, and one past it (refused by the fused path)
        hidden[rng.randrange(depth)] = WIDEST + rng.choice((0, 0, 1))
        r = rng.choice(common_divisors(hidden))
    if mode == "structural":
        r = 1  # the structural phase makes its patterns at full width
    bias = rng.random() < 0.8
    L = depth + 1
    cfg = {
        "seed": seed,
        "mode": mode,
        "in": rng.choice(FEATURES),
        "hidden": hidden,
        "out": rng.choice(FEATURES),
        "r": r,
        "lead": list(rng.choice(BATCHES)),
        "dtype": rng.choice(("float32", "float32", *LOW)),
        "autocast": rng.choice(LOW) if rng.random() < 0.2 else False,
        "bias": bias,
        "grad": _grad(rng, L, bias),
        "layout": rng.choice(LAYOUTS),
        "special": rng.choice(SPECIALS),
        "steps": [],
    }
    if cfg["autocast"]:
        cfg["dtype"] = "float32"  # fp32 tensors, low-precision operands inside
    if rng.random() < 0.5:
        cfg["steps"].append(_change(rng, cfg))
    # Given patterns whose padding bits (past the structural width in the last word) are set: ignored.
    cfg["padding"] = mode == "given" and rng.random() < 0.3
    return cfg


def _change(rng: random.Random, cfg: dict) -> dict:
    """One attribute changed for the next call on the same tensors or modules."""
    options = list(CHANGES)
    others = [d for d in common_divisors(cfg["hidden"]) if d != cfg["r"]]
    if cfg["mode"] != "given" or not others:
        options.remove("r")  # a module's reduction is fixed at construction
    # Two reductions over the same tensors are rare otherwise (given patterns, widths with two divisors).
    what = "r" if "r" in options and rng.random() < 0.4 else rng.choice(options)
    if what == "r":
        return {"r": rng.choice(others)}
    if what == "dtype":
        return {"dtype": rng.choice(LOW) if cfg["dtype"] == "float32" else "float32", "autocast": False}
    if what == "batch":
        return {"lead": list(rng.choice([b for b in BATCHES if list(b) != cfg["lead"]]))}
    if what == "grad":
        return {"grad": _grad(rng, len(cfg["hidden"]) + 1, cfg["bias"])}
    if what == "layout":
        return {"layout": rng.choice([lay for lay in LAYOUTS if lay != cfg["layout"]])}
    return {"autocast": False if cfg["autocast"] else rng.choice(LOW), "dtype": "float32"}


def calls(cfg: dict) -> list[dict]:
    """The configuration of each call in order: the first, then each step applied over the one before."""
    out = [{k: v for k, v in cfg.items() if k != "steps"}]
    for change in cfg.get("steps", []):
        out.append({**out[-1], **change})
    return out


def repro(cfg: dict) -> str:
    """One shell line that runs this configuration alone."""
    text = json.dumps(cfg, separators=(",", ":"))
    return f"GLAI_DIFF_REPRO='{text}' PYTHONPATH=. python -m pytest -q tests/test_differential.py -k repro"


# ----------------------------------------------------------------------------- shrinking
def _smaller_widths(cfg: dict):
    """Candidates with one hidden layer fewer or one width smaller (keeping the reduction a divisor)."""
    hidden, r = cfg["hidden"], cfg["r"]
    if len(hidden) > 1:
        for i in range(len(hidden)):
            g = cfg["grad"]
            grad = {"x": g["x"], "w": g["w"][:i] + g["w"][i + 1 :], "b": g["b"][:i] + g["b"][i + 1 :]}
            yield {**cfg, "hidden": hidden[:i] + hidden[i + 1 :], "grad": grad}
    for i, n in enumerate(hidden):
        for m in sorted({r, r * 2, r * 3, n // 2 - (n // 2) % r}):
            if 0 < m < n:
                yield {**cfg, "hidden": hidden[:i] + [m] + hidden[i + 1 :]}


def valid(cfg: dict) -> bool:
    """Whether every call of ``cfg`` is well formed (a reduction dividing the widths, one flag a layer)."""
    L = len(cfg["hidden"]) + 1
    for call in calls(cfg):
        if any(n % call["r"] for n in call["hidden"]) or (call["mode"] == "structural" and call["r"] != 1):
            return False
        if len(call["grad"]["w"]) != L or len(call["grad"]["b"]) != L:
            return False
    return True


def _simpler(cfg: dict):
    """Every candidate one step simpler than ``cfg``, the ones that remove most first."""
    if cfg["steps"]:
        yield {**cfg, "steps": []}
    yield from _smaller_widths(cfg)
    for key in ("in", "out"):
        for m in (1, 2, cfg[key] // 2):
            if 0 < m < cfg[key]:
                yield {**cfg, key: m}
    lead = cfg["lead"]
    if len(lead) > 1:
        yield {**cfg, "lead": [math.prod(lead)]}
    if lead and lead[0] > 1:
        yield {**cfg, "lead": [1] + lead[1:]}
        yield {**cfg, "lead": [lead[0] // 2] + lead[1:]}
    if cfg["r"] > 1 and cfg["mode"] != "structural":
        yield {**cfg, "r": 1}
    for key, plain in (
        ("special", "none"),
        ("layout", "contiguous"),
        ("autocast", False),
        ("dtype", "float32"),
    ):
        if cfg[key] != plain:
            yield {**cfg, key: plain}
    g = cfg["grad"]
    for part in ("w", "b"):
        for i, on in enumerate(g[part]):
            if on:
                flags = list(g[part])
                flags[i] = False
                yield {**cfg, "grad": {**g, part: flags}}
    if g["x"]:
        yield {**cfg, "grad": {**g, "x": False}}


def shrink(cfg: dict, fails, budget: int = 60) -> dict:
    """The smallest configuration found (greedily, at most ``budget`` tries) for which ``fails(cfg)`` holds."""
    tries = 0
    improved = True
    while improved and tries < budget:
        improved = False
        for cand in filter(valid, _simpler(cfg)):
            tries += 1
            if fails(cand):
                cfg, improved = cand, True
                break
            if tries >= budget:
                break
    return cfg
