"""Host side of the fused kernels: allocate the outputs, pick the launch, launch. One launch a function.

Shapes are trusted here (``glai_kernels.fused`` validates them once per signature); strides are honoured,
operands are read in place. ``config`` overrides :func:`fused_config.default_config`; ``out`` passes
preallocated outputs (tests fill them with NaN first, so an element a kernel forgets to write fails).

What a launch derives from shapes and flags alone (constexprs, grid, tile tables) is remembered per
signature, and so is the weight gradient's split-combine workspace (fp32 partials and one ticket counter a
tile, zeroed once and reset by the kernel itself): a step allocates nothing but its outputs, with
``torch.empty``, so it can be captured in a CUDA graph after one warm-up step. One workspace serves launches
that run one after another on a stream, not two at once on two streams.
"""

from __future__ import annotations

import torch

from . import fused_config
from .fused_config import padded
from .kernels.fused_backward import fused_grad_data_kernel, fused_grad_weights_kernel
from .kernels.fused_forward import fused_forward_kernel
from .layout import PATTERN_DTYPE, WORD_BITS, words_for
from .triton_ops import INTERPRETED, dot_precision

GIVEN, STRUCTURAL, FROM_STRUCTURE = 0, 1, 2  # forward modes, see kernels/fused_forward.py

_CONFIGS: dict = {}
_STATIC: dict = {}  # per signature: what a launch derives from shapes and flags (and its workspace)


def config_for(device: torch.device, config: dict | None) -> dict:
    if config is not None:
        base = dict(_config(device))
        base.update(fused_config.check_config(config))
        return base
    return _config(device)


def _config(device: torch.device) -> dict:
    cfg = _CONFIGS.get(device)
    if cfg is None:
        cfg = _CONFIGS[device] = fused_config.default_config(device, INTERPRETED)
    return cfg


def launch(kernel, grid: tuple, cfg: dict, device: torch.device, *args, **constexprs) -> None:
    """``kernel[grid](*args, **constexprs)`` with ``cfg``'s warps and stages, on ``device``."""
    if device.type != "cuda":  # the interpreter
        kernel[grid](*args, **constexprs)
        return
    options = {"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}
    if device.index is None or device.index == torch.cuda.current_device():
        kernel[grid](*args, **constexprs, **options)
    else:
        with torch.cuda.device(device):
            kernel[grid](*args, **constexprs, **options)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _mat(ts) -> tuple:
    """Pointers and (row, column) strides of a list of 2-d tensors, as the kernels' tuples."""
    rows, cols = zip(*[t.stride() for t in ts])
    return tuple(ts), rows, cols


def _bias(biases, weights) -> tuple:
    """Bias pointers (a weight stands in for an absent bias: never read) and strides."""
    ptrs = tuple(b if b is not None else w for b, w in zip(biases, weights))
    return ptrs, tuple(b.stride(0) if b is not None else 0 for b in biases)


def _memo(key, config, build):
    """``build()``, remembered per ``key`` (everything a launch derives from shapes and flags alone); a
    caller's ``config`` is never remembered."""
    if config is not None:
        return build()
    found = _STATIC.get(key)
    if found is None:
        found = _STATIC[key] = build()
    return found


def forward(x, weights, biases, mode, reduction=1, patterns=None, structure=None, *, config=None, out=None):
    """``(y, hidden, words)`` of the stack on 2-d ``x``: ``hidden`` the ``L - 1`` hidden outputs (the layer
    inputs the backward needs), ``words`` the patterns (the given ones in mode ``GIVEN``, else written).
    ``structure``: ``(weights, biases)`` of the frozen structure's hidden layers (mode ``FROM_STRUCTURE``).
    ``out``: ``(y, hidden, words)`` buffers (``words`` ignored in mode ``GIVEN``)."""
    M, IN = x.shape
    dev, dt = x.device, x.dtype
    s_w, s_b = structure if mode == FROM_STRUCTURE else (weights[:-1], biases[:-1])
    key = (
        "forward", mode, reduction, dev, dt, IN, tuple([w.shape[0] for w in weights]),
        tuple([b is None for b in biases]), tuple([w.shape[0] for w in s_w]), tuple([b is None for b in s_b]),
    )  # fmt: skip
    st = _memo(key, config, lambda: _forward_static(key, config))
    if out is None:
        y = torch.empty((M, st["OUT"]), dtype=dt, device=dev)
        hidden = [torch.empty((M, n), dtype=dt, device=dev) for n in st["HIDDEN"]]
        words = (
            None
            if mode == GIVEN
            else [torch.empty((M, w), dtype=PATTERN_DTYPE, device=dev) for w in st["words"]]
        )
    else:
        y, hidden, words = out[0], list(out[1]), (None if mode == GIVEN else list(out[2]))
    if mode == GIVEN:
        words = patterns
    if M == 0:
        return y, hidden, words
    # A structural layer wider than a chunk stages its rows in memory (its activations are not kept).
    staging = [torch.empty((M, n), dtype=dt, device=dev) if n else x for n in st["staging"]]
    cfg = st["cfg"]
    launch(
        fused_forward_kernel, (_cdiv(M, cfg["BLOCK_M"]),), cfg, dev,
        x, y, M, IN, st["OUT"], *x.stride(), *y.stride(), *_mat(weights), *_bias(biases, weights),
        *_mat(hidden), *_mat(words), *_mat(s_w), *_bias(s_b, s_w), *_mat(staging),
        PRECISION=dot_precision(dt), **st["constexprs"],
    )  # fmt: skip
    return y, hidden, words


def _forward_static(key, config) -> dict:
    _, mode, reduction, dev, dt, IN, n_out, no_bias, s_n, s_no_bias = key
    hidden_n = n_out[:-1]
    if mode == GIVEN:
        s_n = tuple(n // reduction for n in hidden_n)
    cfg = config_for(dev, config)["chain"]
    pad, s_pad = tuple(padded(n) for n in hidden_n), tuple(padded(n) for n in s_n)
    chunk = fused_config.chunk_for(cfg, pad + s_pad)
    constexprs = dict(
        HIDDEN=hidden_n, PAD=pad, HAS_B=tuple(not n for n in no_bias), S_HIDDEN=s_n, S_PAD=s_pad,
        S_HAS_B=tuple(not n for n in s_no_bias), MODE=mode, REDUCTION=reduction, BLOCK_M=cfg["BLOCK_M"],
        BLOCK_K=cfg["BLOCK_K"], BLOCK_N=cfg["BLOCK_N"], CHUNK=chunk, WORD_BITS=WORD_BITS, UPCAST=INTERPRETED,
    )  # fmt: skip
    staging = tuple(n if mode == FROM_STRUCTURE and padded(n) > chunk else 0 for n in s_n)
    return dict(
        cfg=cfg, constexprs=constexprs, OUT=n_out[-1], HIDDEN=hidden_n,
        words=tuple(words_for(n) for n in s_n), staging=staging,
    )  # fmt: skip


def grad_data(dy, weights, words, reduction, lowest, need_dx, *, config=None, out=None):
    """``(grads, dx)``: ``grads[l]`` the gradient at hidden layer ``l``'s output for ``l >= lowest`` (None
    below), ``dx`` when ``need_dx`` (which needs ``lowest == 0``). ``out``: ``(grads, dx)`` buffers."""
    M, OUT = dy.shape
    dev, dt = dy.device, dy.dtype
    key = ("grad_data", reduction, lowest, need_dx, dev, dt, tuple([w.shape[0] for w in weights[:-1]]))
    st = _memo(key, config, lambda: _grad_data_static(key, config))
    IN = weights[0].shape[1]
    if out is None:
        grads = [
            torch.empty((M, n), dtype=dt, device=dev) if i >= lowest else None for i, n in enumerate(key[-1])
        ]
        dx = torch.empty((M, IN), dtype=dt, device=dev) if need_dx else None
    else:
        grads, dx = list(out[0]), out[1]
    if M == 0:
        return grads, dx
    g = [t if t is not None else dy for t in grads]  # never written: below the chain's end
    cfg = st["cfg"]
    launch(
        fused_grad_data_kernel, (_cdiv(M, cfg["BLOCK_M"]),), cfg, dev,
        dy, dx if need_dx else dy, M, IN, OUT, *dy.stride(), *(dx.stride() if need_dx else (0, 0)),
        *_mat(weights), *_mat(words), *_mat(g), PRECISION=dot_precision(dt), **st["constexprs"],
    )  # fmt: skip
    return grads, dx


def _grad_data_static(key, config) -> dict:
    _, reduction, lowest, need_dx, dev, dt, hidden_n = key
    cfg = config_for(dev, config)["chain"]
    pad = tuple(padded(n) for n in hidden_n)
    constexprs = dict(
        HIDDEN=hidden_n, PAD=pad, LOWEST=lowest, NEED_DX=need_dx, REDUCTION=reduction, BLOCK_M=cfg["BLOCK_M"],
        BLOCK_K=cfg["BLOCK_K"], BLOCK_N=cfg["BLOCK_N"], CHUNK=fused_config.chunk_for(cfg, pad),
        WORD_BITS=WORD_BITS, UPCAST=INTERPRETED,
    )  # fmt: skip
    return dict(cfg=cfg, constexprs=constexprs)


def grad_weights(grads, inputs, has_bias, first, *, config=None, out=None):
    """``(dws, dbs)`` of layers ``first ..`` (None below, and ``dbs[l]`` None without a bias) from
    ``grads[l]`` ``[M, N_l]`` (the last one ``dy``) and ``inputs[l]`` ``[M, K_l]`` (``x``, then the hidden
    outputs). ``out``: ``(dws, dbs)`` buffers. With several batch splits the fp32 partials go to a workspace
    kept per signature (zeroed ticket counters that the kernel resets itself)."""
    x = inputs[0]
    M, dev, dt = x.shape[0], x.device, x.dtype
    Ns = tuple([g.shape[1] if i >= first else 1 for i, g in enumerate(grads)])
    Ks = tuple([a.shape[1] for a in inputs])
    key = ("grad_weights", first, tuple(has_bias), dev, dt, M, Ns, Ks)
    st = _memo(key, config, lambda: _grad_weights_static(key, config))
    if out is None:
        dws = [torch.empty(s, dtype=dt, device=dev) if s else None for s in st["dw_shapes"]]
        dbs = [torch.empty(s, dtype=dt, device=dev) if s else None for s in st["db_shapes"]]
    else:
        dws, dbs = list(out[0]), list(out[1])
    if M == 0:
        for t in dws + dbs:
            if t is not None:
                t.zero_()
        return dws, dbs
    g = [t if i >= first else x for i, t in enumerate(grads)]
    dw = [t if t is not None else x for t in dws]
    db = [t if t is not None else x for t in dbs]
    ws, counters = st["workspace"] or (x, x)  # one split: never touched
    launch(
        fused_grad_weights_kernel, st["grid"], st["cfg"], dev,
        *_mat(g), *_mat(inputs), *_mat(dw), tuple(db), tuple(t.stride(0) for t in db), Ns, Ks,
        st["ws_dw"], st["ws_db"], M, st["m_split"], ws, st["ws_split"], counters,
        PRECISION=dot_precision(dt), **st["constexprs"],
    )  # fmt: skip
    return dws, dbs


def _grad_weights_static(key, config) -> dict:
    _, first, has_bias, dev, dt, M, Ns, Ks = key
    L = len(Ks)
    cfg = config_for(dev, config)["weights"]
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
    tiles_k = tuple(_cdiv(k, bn) for k in Ks)
    start = [0]
    for i in range(L):
        start.append(start[-1] + (_cdiv(Ns[i], bm) * tiles_k[i] if i >= first else 0))
    splits, m_split = fused_config.weight_splits(cfg, start[-1], M, dev)
    # Workspace layout per split: every layer's [N, K] partial, then its [N] bias partial.
    ws_dw, ws_db, size = [], [], 0
    for i in range(L):
        ws_dw.append(size)
        size += Ns[i] * Ks[i] if i >= first else 0
        ws_db.append(size)
        size += Ns[i] if i >= first and has_bias[i] else 0
    workspace = None
    if splits > 1 and M > 0:
        workspace = (
            torch.empty(splits * size, dtype=torch.float32, device=dev),
            torch.zeros(start[-1], dtype=torch.int32, device=dev),
        )
    constexprs = dict(
        TILE_START=tuple(start), TILES_K=tiles_k, HAS_B=tuple(bool(has_bias[i]) and i >= first for i in range(L)),
        SPLITS=splits, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=cfg["BLOCK_K"], UPCAST=INTERPRETED,
    )  # fmt: skip
    return dict(
        cfg=cfg, constexprs=constexprs, grid=(start[-1], splits), m_split=m_split, ws_dw=tuple(ws_dw),
        ws_db=tuple(ws_db), ws_split=size, workspace=workspace,
        dw_shapes=[(Ns[i], Ks[i]) if i >= first else None for i in range(L)],
        db_shapes=[(Ns[i],) if i >= first and has_bias[i] else None for i in range(L)],
    )  # fmt: skip
