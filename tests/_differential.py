"""One configuration of :mod:`tests._configs` run on every path that accepts it, against float64.

The paths: the ``"torch"`` backend, the per-layer Triton path (``backend="triton", fused=False``) and the fused
path (``fused=True`` where ``glai_kernels.dispatch.why_not_fused``, the dispatcher's own rule, allows it), through
``glai_mlp`` (given patterns) or ``glai.nn.GLAIMLP`` (the structural phase; the patterns from the frozen
structure), and the packed patterns through ``GLAIMLP.patterns`` (``structural_patterns``). Compared with the
float64 evaluation of :mod:`tests._oracle`: the output, the packed patterns and every gradient asked for (its
dtype too), with NaN and +-inf in the same places and the finite values within a relative error per dtype.
Every path runs with uninitialised memory filled with NaN (torch's deterministic mode), so an output element a
kernel forgets to write fails.
"""

from __future__ import annotations

import contextlib
import math
import traceback

import numpy as np
import torch
from _configs import calls
from _oracle import (
    DEVICE,
    DTYPES,
    draw_tensors,
    evaluate,
    given_words,
    magnitudes,
    op_dtype,
    pack,
    unpack,
    upstream,
)

from glai import GLAIMLP
from glai_kernels import glai_mlp
from glai_kernels.dispatch import why_not_fused

# Relative error (norm) per operand dtype; an element may miss by 5x that.
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}
KAPPA = 0.1  # a result under a tenth of the magnitude of its terms is compared relative to that tenth
# Below its smallest normal number a 16-bit float keeps an absolute resolution (float16: 6e-8), not a relative
# one: a gradient of 1e-6 computed in float16 is a few percent off on every path alike. Each element may be off
# by this many steps of that resolution beyond the relative tolerance.
SUBNORMAL_STEPS = 64
PATHS = (("torch", None), ("triton", False), ("triton", True))


# ----------------------------------------------------------------------------- the paths
@contextlib.contextmanager
def _poisoned():
    """Uninitialised memory (torch.empty and friends) filled with NaN, and with the int maximum for words."""
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was)


def _autocast(cfg: dict):
    if not cfg["autocast"]:
        return contextlib.nullcontext()
    return torch.autocast(DEVICE.type, dtype=op_dtype(cfg))


def _leaf(pool: dict, key, value: torch.Tensor, dtype, wants: bool) -> torch.Tensor:
    """The same tensor object for the same role, shape and dtype across the calls of a configuration."""
    t = pool.get(key)
    if t is None or t.shape != value.shape or t.dtype != dtype:
        t = pool[key] = value.to(DEVICE, dtype)
    t.requires_grad_(wants)
    return t


def _model(cfg: dict, pool: dict, path, t: dict, dtype) -> GLAIMLP:
    """The path's module (kept across the calls), holding this call's values and ``requires_grad`` flags."""
    model = pool.get(path)
    if model is None:
        model = GLAIMLP(cfg["in"], cfg["hidden"], cfg["out"], reduction=cfg["r"], bias=cfg["bias"],
                        backend=path[0], fused=path[1])  # fmt: skip
        if cfg["mode"] == "from_structure":
            model.freeze(init="random")
        pool[path] = model
    model.to(DEVICE, dtype)
    with torch.no_grad():
        for i, layer in enumerate(model.layers):
            layer.weight.copy_(t["w"][i])
            layer.weight.requires_grad_(cfg["grad"]["w"][i])
            if layer.bias is not None:
                layer.bias.copy_(t["b"][i])
                layer.bias.requires_grad_(cfg["grad"]["b"][i])
        if cfg["mode"] == "from_structure":
            for dst, src in zip(model.structure.weights + model.structure.biases, t["sw"] + t["sb"]):
                if dst is not None:
                    dst.copy_(src)
    return model


def run_path(cfg: dict, pool: dict, path, t: dict, dy_of):
    """``(y, leaves, words or None, grads)`` of one path: leaves are ``x``, the weights and the biases."""
    dtype = DTYPES[cfg["dtype"]]
    g = cfg["grad"]
    x = _leaf(pool, ("x", path), t["x"], dtype, g["x"])
    words = None
    if cfg["mode"] == "given":
        ws = [_leaf(pool, ("w", i, path), w, dtype, g["w"][i]) for i, w in enumerate(t["w"])]
        bs = [
            None if b is None else _leaf(pool, ("b", i, path), b, dtype, g["b"][i])
            for i, b in enumerate(t["b"])
        ]
        pats = [torch.from_numpy(given_words(cfg, p)).to(DEVICE) for p in t["bits"]]
        with _poisoned(), _autocast(cfg):
            y = glai_mlp(x, ws, bs, pats, reduction=cfg["r"], backend=path[0], fused=path[1])
    else:
        model = _model(cfg, pool, path, t, dtype)
        ws = [m.weight for m in model.layers]
        bs = [m.bias for m in model.layers]
        with _poisoned(), _autocast(cfg):
            y = model(x)
            words = model.patterns(x)
    leaves = [x, *ws, *[b for b in bs if b is not None]]
    wanted = [v for v in leaves if v.requires_grad]
    grads = []
    if wanted and y.requires_grad:
        with _poisoned():
            grads = torch.autograd.grad(y, wanted, dy_of(y.dtype), allow_unused=True)
    return y, leaves, words, dict(zip(map(id, wanted), grads))


def accepts(cfg: dict, path) -> bool:
    """Whether the dispatcher lets ``path`` run this call (the fused one only where its rule allows)."""
    if path[1] is not True:
        return True
    hidden = cfg["hidden"]
    structural = hidden if cfg["mode"] == "structural" else [n // cfg["r"] for n in hidden]
    reason = why_not_fused("triton", len(hidden) + 1, op_dtype(cfg), hidden, structural, DEVICE)
    return reason is None


# ----------------------------------------------------------------------------- comparing
def compare(
    what: str, got, want: torch.Tensor, tol: float, rows=None, magnitude=None, kinds: bool = True,
    dtype: torch.dtype = torch.float32,
) -> list[str]:  # fmt: skip
    """Mismatches of ``got`` against float64 ``want``: shape, NaN and inf placement, relative error.

    The error is relative to ``want``, or to :data:`KAPPA` times ``magnitude`` (see :func:`magnitudes`) where
    ``want`` is much smaller than its terms: a sum that cancels keeps its terms' rounding errors. ``kinds``:
    whether NaN, +inf and -inf must each be in the same places, or only the non-finite values; a weight gradient
    ``g^T h`` with an infinite ``h`` takes the sign of a rounded ``g``, which a float16 or bfloat16 ``g`` near
    zero may flip. ``dtype``: the precision the path computes in, whose subnormal resolution
    (:data:`SUBNORMAL_STEPS`) is allowed on each element as an absolute error."""
    if got is None:
        return [f"{what}: no result (expected shape {tuple(want.shape)})"]
    if tuple(got.shape) != tuple(want.shape):
        return [f"{what}: shape {tuple(got.shape)}, expected {tuple(want.shape)}"]
    a, b = got.detach().cpu().double(), want.detach()
    m = torch.zeros_like(b) if magnitude is None else magnitude.detach()
    if rows is not None:
        a, b, m = a[~rows], b[~rows], m[~rows]
    out = []
    checks = [("NaN", a.isnan(), b.isnan()), ("+inf", a == math.inf, b == math.inf),
              ("-inf", a == -math.inf, b == -math.inf)]  # fmt: skip
    if not kinds:
        checks = [("NaN or inf", ~a.isfinite(), ~b.isfinite())]
    for name, fa, fb in checks:
        if not torch.equal(fa, fb):
            idx = (fa != fb).nonzero()[0].tolist()
            out.append(f"{what}: {name} at {int((fa != fb).sum())} places differs, first {idx} "
                       f"(got {a[tuple(idx)].item()}, expected {b[tuple(idx)].item()})")  # fmt: skip
    fin = b.isfinite() & a.isfinite()
    a, b, m = a[fin], b[fin], m[fin]
    if b.numel():
        m = KAPPA * torch.where(m.isfinite(), m, 0)
        scale = max(b.norm().item(), m.norm().item(), 1e-30)
        finfo = torch.finfo(dtype)
        floor = SUBNORMAL_STEPS * finfo.tiny * finfo.eps  # absolute: steps of the subnormal spacing
        diff = ((a - b).abs() - floor).clamp_min(0)
        err, worst = (
            diff.norm().item() / scale,
            diff.max().item() / max(b.abs().max().item(), m.max().item(), 1e-30),
        )
        if err > tol or worst > 5 * tol:
            out.append(f"{what}: relative error {err:.2e} (worst element {worst:.2e}), tolerance {tol:.0e}")
    return out


def _compare_words(what: str, words, bits, ambiguous) -> list[str]:
    out = []
    for i, (w, p) in enumerate(zip(words, bits)):
        if tuple(w.shape) != (*p.shape[:-1], -(-p.shape[-1] // 32)) or w.dtype != torch.int32:
            out.append(f"{what}[{i}]: {w.dtype} {tuple(w.shape)}, expected int32 words for {tuple(p.shape)}")
            continue
        w = w.cpu()
        got = unpack(w.numpy(), p.shape[-1])
        want = p.numpy().copy()
        want[ambiguous.numpy()] = got[ambiguous.numpy()]
        if not np.array_equal(w.numpy(), pack(want)):
            bad = np.argwhere(got != want)
            first = bad[0].tolist() if len(bad) else "padding bits"
            out.append(f"{what}[{i}]: {len(bad)} bits differ, first at {first}")
    return out


def check_call(cfg: dict, pool: dict) -> list[str]:
    """Mismatches of one call on every path that accepts it."""
    t = draw_tensors(cfg)
    y64, (x64, ws64, bs64), bits, ambiguous, quiet = evaluate(cfg, t)
    wanted = [v for v, on in zip([x64, *ws64], [cfg["grad"]["x"], *cfg["grad"]["w"]]) if on]
    wanted += [b for b, on in zip(bs64, cfg["grad"]["b"]) if b is not None and on]
    out_dtype = op_dtype(cfg)
    fails = []
    dy = upstream(cfg, tuple(y64.shape), out_dtype, quiet)
    grads64 = torch.autograd.grad(y64, wanted, dy.cpu().double()) if wanted else ()
    want_grads = dict(zip(map(id, wanted), grads64))
    y_mag, grad_mags = magnitudes(cfg, (x64, ws64, bs64), bits, dy.cpu().double(), wanted)
    tol = TOL[out_dtype]
    kinds = out_dtype == torch.float32  # see compare()
    rows = ambiguous if cfg["mode"] != "given" and bool(ambiguous.any()) else None
    for path in PATHS:
        name = f"{path[0]}{'' if path[1] is None else ', fused=' + str(path[1])}"
        if not accepts(cfg, path):
            continue
        try:
            y, leaves, words, grads = run_path(
                cfg, pool, path, t, lambda dt: dy if dt == dy.dtype else dy.to(dt)
            )
        except Exception as e:  # noqa: BLE001  (a failure to report with the configuration)
            where = traceback.extract_tb(e.__traceback__)[-1]
            fails.append(f"[{name}] raised {type(e).__name__}: {e} ({where.filename}:{where.lineno})")
            continue
        if y.dtype != out_dtype:
            fails.append(f"[{name}] y: dtype {y.dtype}, expected {out_dtype}")
        fails += [f"[{name}] {m}" for m in compare("y", y, y64, tol, rows, y_mag, dtype=out_dtype)]
        if words is not None:
            fails += [f"[{name}] {m}" for m in _compare_words("patterns", words, bits, ambiguous)]
        names = (
            ["x"]
            + [f"W{i + 1}" for i in range(len(ws64))]
            + [f"b{i + 1}" for i, b in enumerate(bs64) if b is not None]
        )
        ref_leaves = [x64, *ws64, *[b for b in bs64 if b is not None]]
        for leaf_name, leaf, ref in zip(names, leaves, ref_leaves):
            if id(ref) in want_grads:
                got = grads.get(id(leaf)) if leaf.requires_grad else None
                if got is not None and got.dtype != leaf.dtype:  # fp32 master weights keep fp32 gradients
                    fails.append(f"[{name}] d{leaf_name}: dtype {got.dtype}, expected {leaf.dtype}")
                fails += [
                    f"[{name}] {m}"
                    for m in compare(
                        f"d{leaf_name}",
                        got,
                        want_grads[id(ref)],
                        tol,
                        None,
                        grad_mags[id(ref)],
                        kinds,
                        dtype=out_dtype,
                    )  # fmt: skip
                ]
            elif leaf.requires_grad:
                fails.append(f"[{name}] {leaf_name} requires a gradient the call did not ask for")
    return fails


def check(cfg: dict) -> list[str]:
    """Every mismatch of a configuration, call after call, each prefixed by its call's index."""
    pool: dict = {}
    fails = []
    for i, call in enumerate(calls(cfg)):
        fails += [f"call {i}: {m}" for m in check_call(call, pool)]
    return fails
