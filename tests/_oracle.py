"""The float64 side of the differential test: each configuration's tensors and the formula evaluated on them.

Written here from the formula, not taken from ``glai_kernels.reference`` (one of the paths under test):
``h_l = p_l * (W_l h_{l-1} + b_l)`` with quantitative unit ``j`` gated by structural bit ``j // r``; in the
structural phase ``h_l = relu(z_l)`` and ``p_l = [z_l > 0]``; gradients by float64 autograd. Each tensor is drawn
in float64 from the configuration's seed and its role, so two calls of one configuration see the same values
wherever their shapes agree, then rounded to the precision the paths compute with.

A structural pre-activation that float64 puts within rounding of zero (but not exactly at it) may fall on either
side on a float32, float16 or bfloat16 path, so its row is *ambiguous*: the upstream gradient of that row is zero
(no gradient depends on its pattern), and its output and pattern bits are not compared. Exact zeros are not
ambiguous: every path must agree that ``z = 0`` is a closed unit.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the interpreter's where there is none
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
UNIT = {  # the rounding unit of each operand dtype
    torch.float32: 2.0**-24,
    torch.float16: 2.0**-11,
    torch.bfloat16: 2.0**-8,
}
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


def op_dtype(cfg: dict) -> torch.dtype:
    autocast = cfg["autocast"]
    if autocast:  # a dtype name (True: float16, as the first configurations wrote it)
        return torch.float16 if autocast is True else DTYPES[autocast]
    return DTYPES[cfg["dtype"]]


def _rounded(t, cfg):
    """What a path computes with: ``t`` at the operand precision, back in float64."""
    return None if t is None else t.to(op_dtype(cfg)).double()


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


def given_words(cfg: dict, bits: torch.Tensor) -> np.ndarray:
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
    unit, r = UNIT[op_dtype(cfg)], cfg["r"]
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
