"""One configuration of :mod:`tests._configs` run on every path that accepts it, against float64.

The paths: the ``"torch"`` backend, the per-layer Triton path (``backend="triton", fused=False``) and the fused
path (``fused=True`` where ``glai_kernels.fused.why_not_fused``, the dispatcher's own rule, allows it), through
``glai_mlp`` (given patterns) or ``glai.nn.GLAIMLP`` (the structural phase; the patterns from the frozen
structure), and the packed patterns through ``GLAIMLP.patterns`` (``structural_patterns``). Compared: the output,
the packed patterns and every gradient asked for, with NaN and +-inf in the same places and the finite values
within a relative error per dtype. Every path runs with uninitialised memory filled with NaN (torch's
deterministic mode), so an output element a kernel forgets to write fails.

The float64 evaluation is written here from the formula, not taken from ``glai_kernels.reference`` (one of the
paths under test): ``h_l = p_l * (W_l h_{l-1} + b_l)`` with quantitative unit ``j`` gated by structural bit
``j // r``; in the structural phase ``h_l = relu(z_l)`` and ``p_l = [z_l > 0]``; gradients by float64 autograd.

A structural pre-activation that float64 puts within rounding of zero (but not exactly at it) may fall on either
side on a float32, float16 or bfloat16 path, so its row is *ambiguous*: the upstream gradient of that row is zero (no
gradient depends on its pattern), and its output and pattern bits are not compared. Exact zeros are not
ambiguous: every path must agree that ``z = 0`` is a closed unit.
"""

from __future__ import annotations

import contextlib
import math
import traceback

import numpy as np
import torch
import torch.nn.functional as F
from _configs import calls

from glai import GLAIMLP
from glai_kernels import glai_mlp
from glai_kernels.fused import why_not_fused

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the interpreter's where there is none
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Relative error (norm) per operand dtype; an element may miss by 5x that. UNIT: its rounding unit.
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}
UNIT = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
KAPPA = 0.1  # a result under a tenth of the magnitude of its terms is compared relative to that tenth
PATHS = (("torch", None), ("triton", False), ("triton", True))
ROLES = {"x": 1, "w": 2, "b": 3, "sw": 4, "sb": 5, "p": 6, "dy": 7, "dead": 8}


# ----------------------------------------------------------------------------- drawing the tensors
def _gen(cfg: dict, role: str, i: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(cfg["seed"] * 1009 + ROLES[role] * 101 + i)


def _layer(cfg: dict, n_out: int, n_in: int, i: int, structure: bool):
    """A float64 weight and bias with init-like scale; with ``zero_preact``, dead units (weight row and bias
    exactly 0: ``z = 0`` for every finite input) and a zero first bias (``z = 0`` on the zero input rows)."""
    w = torch.randn(n_out, n_in, generator=_gen(cfg, "sw" if structure else "w", i), dtype=torch.float64)
    w /= math.sqrt(n_in)
    b = torch.randn(n_out, generator=_gen(cfg, "sb" if structure else "b", i), dtype=torch.float64) * 0.5
    if cfg["special"] == "zero_preact":
        dead = torch.rand(n_out, generator=_gen(cfg, "dead", i + 10 * structure)) < 0.3
        w[dead] = 0
        b[dead] = 0
        if i == 0:
            b.zero_()
    return w, (b if cfg["bias"] else None)


def _input(cfg: dict) -> torch.Tensor:
    g = _gen(cfg, "x", len(cfg["lead"]))
    x = torch.randn(*cfg["lead"], cfg["in"], generator=g, dtype=torch.float64)
    flat = x.view(-1, cfg["in"])
    special = cfg["special"]
    if special == "zeros":
        flat[torch.rand(flat.shape, generator=g) < 0.3] = 0
    elif special == "zero_preact":
        flat[torch.rand(flat.shape[0], generator=g) < 0.4] = 0
    elif special in ("inf", "nan") and flat.numel():
        hit = torch.rand(flat.shape, generator=g) < 0.05
        hit[torch.randint(flat.shape[0], (1,), generator=g), torch.randint(cfg["in"], (1,), generator=g)] = (
            True
        )
        value = torch.full(flat.shape, math.inf, dtype=torch.float64)
        value[torch.rand(flat.shape, generator=g) < 0.5] = -math.inf
        flat[hit] = math.nan if special == "nan" else value[hit]
    return x


def _stack(cfg: dict, widths, structure: bool):
    ins = [cfg["in"], *widths[:-1]]
    pairs = [_layer(cfg, n, k, i, structure) for i, (n, k) in enumerate(zip(widths, ins))]
    return [w for w, _ in pairs], [b for _, b in pairs]


def draw_tensors(cfg: dict) -> dict:
    """The float64 values of one call: input, weights, biases, and the structure or the given patterns."""
    hidden = cfg["hidden"]
    widths = [*hidden, cfg["out"]]
    t = {"x": _input(cfg)}
    t["w"], t["b"] = _stack(cfg, widths, False)
    s_widths = [n // cfg["r"] for n in hidden]
    if cfg["mode"] == "from_structure":
        t["sw"], t["sb"] = _stack(cfg, s_widths, True)
    elif cfg["mode"] == "given":
        g = _gen(cfg, "p", cfg["r"])
        t["bits"] = [torch.rand(*cfg["lead"], n, generator=g) < 0.5 for n in s_widths]
    return t


def _op_dtype(cfg: dict) -> torch.dtype:
    autocast = cfg["autocast"]
    if autocast:  # a dtype name (True: float16, as the first configurations wrote it)
        return torch.float16 if autocast is True else DTYPES[autocast]
    return DTYPES[cfg["dtype"]]


def _rounded(t, cfg):
    """What a path computes with: ``t`` at the operand precision, back in float64."""
    return None if t is None else t.to(_op_dtype(cfg)).double()


# ----------------------------------------------------------------------------- the float64 evaluation
def pack(bits: np.ndarray) -> np.ndarray:
    """int32 words of a bool array ``[..., n]``: unit ``j`` is bit ``j % 32`` of word ``j // 32``."""
    n = bits.shape[-1]
    words = -(-n // 32)
    padded = np.zeros((*bits.shape[:-1], words * 32), dtype=np.uint64)
    padded[..., :n] = bits
    shifts = np.arange(32, dtype=np.uint64)
    packed = (padded.reshape(*bits.shape[:-1], words, 32) << shifts).sum(axis=-1)
    return packed.astype(np.uint32).view(np.int32)


def _words(cfg: dict, bits: torch.Tensor) -> np.ndarray:
    """The given patterns' words, with their padding bits set at random when the configuration says so."""
    words = pack(bits.numpy())
    n = bits.shape[-1]
    if cfg.get("padding") and n % 32 and words.size:
        rng = np.random.default_rng(cfg["seed"])
        noise = rng.integers(0, 2**32, size=words.shape[:-1], dtype=np.uint64).astype(np.uint32)
        pad = np.uint32((0xFFFFFFFF << (n % 32)) & 0xFFFFFFFF)
        words[..., -1] |= (noise & pad).view(np.int32)
    return words


def unpack(words: np.ndarray, n: int) -> np.ndarray:
    bits = (words.astype(np.uint32)[..., None] >> np.arange(32, dtype=np.uint32)) & 1
    return bits.reshape(*words.shape[:-1], words.shape[-1] * 32)[..., :n].astype(bool)


def _relu_chain(a, weights, biases, unit):
    """Patterns ``[z > 0]`` of a ReLU stack, the rows where one is within rounding of zero, and its output.

    The rounding is tracked as a variance: each operand and stored activation rounds by ``unit`` (relative),
    each fp32 sum of ``n`` products by ``sqrt(n) 2^-24``. A unit is ambiguous where ``0 < |z| <= 8 sigma``."""
    var = (unit * a.detach()) ** 2
    bits, ambiguous = [], torch.zeros(a.shape[:-1], dtype=torch.bool)
    undefined = torch.zeros(a.shape[:-1], dtype=torch.bool)
    for w, b in zip(weights, biases):
        z = F.linear(a, w, b)
        zd, ad, wd = z.detach(), a.detach(), w.detach()
        spread = F.linear(ad * ad, wd * wd) + (0 if b is None else b.detach() ** 2)
        var_z = F.linear(var, wd * wd) + (unit**2 + w.shape[1] * 2.0**-48) * spread
        near = (zd != 0) & (zd.abs() <= 8 * var_z.sqrt()) & zd.isfinite()
        ambiguous |= near.any(-1)
        undefined |= zd.isnan().any(-1)
        bits.append(zd > 0)
        a = torch.relu(z)
        var = torch.where(zd > 0, var_z, 0) + (unit * a.detach()) ** 2
    return bits, ambiguous, undefined, a


def evaluate(cfg: dict, t: dict):
    """Float64 forward of one call: ``(y, leaves, bits, ambiguous rows, quiet rows)``; the leaves get their
    gradients by autograd; the quiet rows (ambiguous ones, and in the structural phase those with a NaN
    pre-activation) get a zero upstream gradient.

    The gradient of ``relu`` at a NaN is where the paths may differ: ``torch.relu`` passes the upstream gradient
    there, while the fused structural path gates it by its saved pattern bit, ``[NaN > 0] = 0``. A zero upstream
    gradient on those rows keeps their NaN weight-gradient entries compared and leaves that choice open."""
    x = _rounded(t["x"], cfg).requires_grad_()
    ws = [_rounded(w, cfg).requires_grad_() for w in t["w"]]
    bs = [None if b is None else _rounded(b, cfg).requires_grad_() for b in t["b"]]
    unit, r = UNIT[_op_dtype(cfg)], cfg["r"]
    if cfg["mode"] == "structural":
        bits, ambiguous, undefined, h = _relu_chain(x, ws[:-1], bs[:-1], unit)
        quiet = ambiguous | undefined
    else:
        if cfg["mode"] == "given":
            bits, ambiguous = t["bits"], torch.zeros(x.shape[:-1], dtype=torch.bool)
        else:
            sw = [_rounded(w, cfg) for w in t["sw"]]
            sb = [_rounded(b, cfg) for b in t["sb"]]
            bits, ambiguous, _, _ = _relu_chain(x.detach(), sw, sb, unit)
        quiet = ambiguous
        h = x
        for w, b, p in zip(ws[:-1], bs[:-1], bits):
            h = F.linear(h, w, b) * p.repeat_interleave(r, dim=-1).double()  # unit j reads bit j // r
    y = F.linear(h, ws[-1], bs[-1])
    return y, (x, ws, bs), bits, ambiguous, quiet


def magnitudes(cfg: dict, leaves, bits, dy: torch.Tensor, wanted):
    """The evaluation again on ``|x|``, ``|W|``, ``|b|`` with the same gates and ``|dy|``: for the output and each
    gradient in ``wanted``, the sum of the magnitudes of its terms, which bounds its rounding error."""
    x, ws, bs = leaves
    ab = {id(t): t.detach().abs().requires_grad_() for t in [x, *ws, *bs] if t is not None}
    r = 1 if cfg["mode"] == "structural" else cfg["r"]
    h = ab[id(x)]
    for w, b, p in zip(ws[:-1], bs[:-1], bits):
        h = F.linear(h, ab[id(w)], None if b is None else ab[id(b)]) * p.repeat_interleave(r, dim=-1).double()
    y = F.linear(h, ab[id(ws[-1])], None if bs[-1] is None else ab[id(bs[-1])])
    grads = torch.autograd.grad(y, [ab[id(t)] for t in wanted], dy.abs()) if wanted else ()
    return y.detach(), dict(zip(map(id, wanted), grads))


def upstream(cfg: dict, shape, dtype, quiet: torch.Tensor) -> torch.Tensor:
    """The upstream gradient in the configuration's layout, zero on the quiet rows (made on the device: a
    copy there would lose the layout)."""
    g = _gen(cfg, "dy", len(cfg["lead"]))
    keep = (~quiet).to(torch.float64)[..., None]
    layout = cfg["layout"]
    if layout == "expand_rows" and bool(quiet.any()):
        layout = "expand_cols"  # rows sharing one memory row cannot be zeroed one by one
    if layout == "expand_rows":  # what `y.sum()` or a broadcast loss sends: stride 0 over the rows
        return torch.randn(shape[-1], generator=g, dtype=torch.float64).to(DEVICE, dtype).expand(shape)
    if layout == "expand_cols":
        col = torch.randn(*shape[:-1], 1, generator=g, dtype=torch.float64) * keep
        return col.to(DEVICE, dtype).expand(shape)
    base = torch.randn(*shape, generator=g, dtype=torch.float64) * keep
    if layout == "transposed":
        return base.to(DEVICE, dtype).movedim(-1, 0).contiguous().movedim(0, -1)
    if layout == "slice":
        wide = torch.randn(*shape[:-1], 2 * shape[-1] + 1, generator=g, dtype=torch.float64)
        wide[..., 1::2] = base
        return wide.to(DEVICE, dtype)[..., 1::2]
    return base.to(DEVICE, dtype).contiguous()


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
    return torch.autocast(DEVICE.type, dtype=_op_dtype(cfg))


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
        pats = [torch.from_numpy(_words(cfg, p)).to(DEVICE) for p in t["bits"]]
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
    reason = why_not_fused("triton", len(hidden) + 1, _op_dtype(cfg), hidden, structural, DEVICE)
    return reason is None


# ----------------------------------------------------------------------------- comparing
def compare(what: str, got, want: torch.Tensor, tol: float, rows=None, magnitude=None) -> list[str]:
    """Mismatches of ``got`` against float64 ``want``: shape, NaN and inf placement, relative error.

    The error is relative to ``want``, or to :data:`KAPPA` times ``magnitude`` (see :func:`magnitudes`) where
    ``want`` is much smaller than its terms: a sum that cancels keeps its terms' rounding errors."""
    if got is None:
        return [f"{what}: no result (expected shape {tuple(want.shape)})"]
    if tuple(got.shape) != tuple(want.shape):
        return [f"{what}: shape {tuple(got.shape)}, expected {tuple(want.shape)}"]
    a, b = got.detach().cpu().double(), want.detach()
    m = torch.zeros_like(b) if magnitude is None else magnitude.detach()
    if rows is not None:
        a, b, m = a[~rows], b[~rows], m[~rows]
    out = []
    for name, fa, fb in (("NaN", a.isnan(), b.isnan()), ("+inf", a == math.inf, b == math.inf),
                         ("-inf", a == -math.inf, b == -math.inf)):  # fmt: skip
        if not torch.equal(fa, fb):
            idx = (fa != fb).nonzero()[0].tolist()
            out.append(f"{what}: {name} at {int((fa != fb).sum())} places differs, first {idx} "
                       f"(got {a[tuple(idx)].item()}, expected {b[tuple(idx)].item()})")  # fmt: skip
    fin = b.isfinite() & a.isfinite()
    a, b, m = a[fin], b[fin], m[fin]
    if b.numel():
        m = KAPPA * torch.where(m.isfinite(), m, 0)
        scale = max(b.norm().item(), m.norm().item(), 1e-30)
        err, worst = (
            (a - b).norm().item() / scale,
            (a - b).abs().max().item() / max(b.abs().max().item(), m.max().item(), 1e-30),
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
    out_dtype = _op_dtype(cfg)
    fails = []
    dy = upstream(cfg, tuple(y64.shape), out_dtype, quiet)
    grads64 = torch.autograd.grad(y64, wanted, dy.cpu().double()) if wanted else ()
    want_grads = dict(zip(map(id, wanted), grads64))
    y_mag, grad_mags = magnitudes(cfg, (x64, ws64, bs64), bits, dy.cpu().double(), wanted)
    tol = TOL[out_dtype]
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
        fails += [f"[{name}] {m}" for m in compare("y", y, y64, tol, rows, y_mag)]
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
                fails += [
                    f"[{name}] {m}"
                    for m in compare(f"d{leaf_name}", got, want_grads[id(ref)], tol, None, grad_mags[id(ref)])
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
