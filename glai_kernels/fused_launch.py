"""Host side of the fused kernels: allocate the outputs, pick the launch, launch. One launch a function.

Shapes are trusted here (``glai_kernels.fused`` validates them once per signature); strides are honoured,
operands are read in place. ``config`` overrides :func:`fused_config.default_config`; ``out`` passes
preallocated outputs (tests fill them with NaN first, so an element a kernel forgets to write fails).

The weight gradient's split-combine workspace (fp32 partials and one ticket counter a tile, zeroed once and
reset by the kernel itself) is kept per device and size: a step allocates nothing else than its outputs, with
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
_WORKSPACES: dict = {}


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
    strides = [t.stride() for t in ts]
    return tuple(ts), tuple(s[0] for s in strides), tuple(s[1] for s in strides)


def _bias(biases, weights) -> tuple:
    """Bias pointers (a weight stands in for an absent bias: never read), strides, presence flags."""
    ptrs = tuple(b if b is not None else w for b, w in zip(biases, weights))
    return (
        ptrs,
        tuple(b.stride(0) if b is not None else 0 for b in biases),
        tuple(b is not None for b in biases),
    )


def forward(x, weights, biases, mode, reduction=1, patterns=None, structure=None, *, config=None, out=None):
    """``(y, hidden, words)`` of the stack on 2-d ``x``: ``hidden`` the ``L - 1`` hidden outputs (the layer
    inputs the backward needs), ``words`` the patterns (the given ones in mode ``GIVEN``, else written).
    ``structure``: ``(weights, biases)`` of the frozen structure's hidden layers (mode ``FROM_STRUCTURE``).
    ``out``: ``(y, hidden, words)`` buffers (``words`` ignored in mode ``GIVEN``)."""
    M, IN = x.shape
    L = len(weights)
    hidden_n = tuple(w.shape[0] for w in weights[:-1])
    OUT = weights[-1].shape[0]
    dev, dt = x.device, x.dtype
    if mode == STRUCTURAL:
        s_n = hidden_n
    elif mode == FROM_STRUCTURE:
        s_n = tuple(w.shape[0] for w in structure[0])
    else:
        s_n = tuple(n // reduction for n in hidden_n)
    if out is None:
        y = torch.empty((M, OUT), dtype=dt, device=dev)
        hidden = [torch.empty((M, n), dtype=dt, device=dev) for n in hidden_n]
        words = (
            None
            if mode == GIVEN
            else [torch.empty((M, words_for(n)), dtype=PATTERN_DTYPE, device=dev) for n in s_n]
        )
    else:
        y, hidden, words = out[0], list(out[1]), (None if mode == GIVEN else list(out[2]))
    if mode == GIVEN:
        words = list(patterns)
    if M == 0:
        return y, hidden, words
    cfg = config_for(dev, config)["chain"]
    pad, s_pad = tuple(padded(n) for n in hidden_n), tuple(padded(n) for n in s_n)
    chunk = fused_config.chunk_for(cfg, pad + s_pad)
    if mode == FROM_STRUCTURE:
        s_w, s_b = list(structure[0]), list(structure[1])
        # A structural layer wider than a chunk stages its rows in memory (its activations are not kept).
        staging = [torch.empty((M, n), dtype=dt, device=dev) if padded(n) > chunk else x for n in s_n]
    else:
        s_w, s_b, staging = list(weights[:-1]), list(biases[:-1]), [x] * (L - 1)
    sb_ptrs, sb_s, s_has_b = _bias(s_b, s_w)
    b_ptrs, b_s, has_b = _bias(biases, weights)
    w, w_sn, w_sk = _mat(weights)
    launch(
        fused_forward_kernel, (_cdiv(M, cfg["BLOCK_M"]),), cfg, dev,
        x, y, M, IN, OUT, x.stride(0), x.stride(1), y.stride(0), y.stride(1),
        w, w_sn, w_sk, b_ptrs, b_s, *_mat(hidden), *_mat(words), *_mat(s_w), sb_ptrs, sb_s, *_mat(staging),
        HIDDEN=hidden_n, PAD=pad, HAS_B=has_b, S_HIDDEN=s_n, S_PAD=s_pad, S_HAS_B=s_has_b, MODE=mode, REDUCTION=reduction,
        BLOCK_M=cfg["BLOCK_M"], BLOCK_K=cfg["BLOCK_K"], BLOCK_N=cfg["BLOCK_N"], CHUNK=chunk,
        WORD_BITS=WORD_BITS, UPCAST=INTERPRETED, PRECISION=dot_precision(dt),
    )  # fmt: skip
    return y, hidden, words


def grad_data(dy, weights, words, reduction, lowest, need_dx, *, config=None, out=None):
    """``(grads, dx)``: ``grads[l]`` the gradient at hidden layer ``l``'s output for ``l >= lowest`` (None
    below), ``dx`` when ``need_dx`` (which needs ``lowest == 0``). ``out``: ``(grads, dx)`` buffers."""
    M, OUT = dy.shape
    hidden_n = tuple(w.shape[0] for w in weights[:-1])
    IN = weights[0].shape[1]
    dev, dt = dy.device, dy.dtype
    if out is None:
        grads = [
            torch.empty((M, n), dtype=dt, device=dev) if i >= lowest else None for i, n in enumerate(hidden_n)
        ]
        dx = torch.empty((M, IN), dtype=dt, device=dev) if need_dx else None
    else:
        grads, dx = list(out[0]), out[1]
    if M == 0:
        return grads, dx
    cfg = config_for(dev, config)["chain"]
    pad = tuple(padded(n) for n in hidden_n)
    g = [t if t is not None else dy for t in grads]  # never written: below the chain's end
    launch(
        fused_grad_data_kernel, (_cdiv(M, cfg["BLOCK_M"]),), cfg, dev,
        dy, dx if need_dx else dy, M, IN, OUT, dy.stride(0), dy.stride(1),
        dx.stride(0) if need_dx else 0, dx.stride(1) if need_dx else 0,
        *_mat(weights), *_mat(words), *_mat(g),
        HIDDEN=hidden_n, PAD=pad, LOWEST=lowest, NEED_DX=need_dx,
        REDUCTION=reduction, BLOCK_M=cfg["BLOCK_M"], BLOCK_K=cfg["BLOCK_K"], BLOCK_N=cfg["BLOCK_N"],
        CHUNK=fused_config.chunk_for(cfg, pad), WORD_BITS=WORD_BITS, UPCAST=INTERPRETED, PRECISION=dot_precision(dt),
    )  # fmt: skip
    return grads, dx


def _workspace(device, floats: int, tiles: int):
    """fp32 partials and zeroed int32 ticket counters, kept per device and size (the kernel resets the
    counters it uses, so they are zero again after every launch)."""
    key = (device, floats, tiles)
    ws = _WORKSPACES.get(key)
    if ws is None:
        ws = _WORKSPACES[key] = (
            torch.empty(floats, dtype=torch.float32, device=device),
            torch.zeros(tiles, dtype=torch.int32, device=device),
        )
    return ws


def grad_weights(grads, inputs, has_bias, first, *, config=None, out=None):
    """``(dws, dbs)`` of layers ``first ..`` (None below, and ``dbs[l]`` None without a bias) from
    ``grads[l]`` ``[M, N_l]`` (the last one ``dy``) and ``inputs[l]`` ``[M, K_l]`` (``x``, then the hidden
    outputs). ``out``: ``(dws, dbs)`` buffers."""
    L = len(inputs)
    M = inputs[0].shape[0]
    dev = inputs[0].device
    Ns = tuple(g.shape[1] if i >= first else 1 for i, g in enumerate(grads))
    Ks = tuple(a.shape[1] for a in inputs)
    if out is None:
        dws = [
            torch.empty((Ns[i], Ks[i]), dtype=inputs[i].dtype, device=dev) if i >= first else None
            for i in range(L)
        ]
        dbs = [
            torch.empty((Ns[i],), dtype=inputs[i].dtype, device=dev) if i >= first and has_bias[i] else None
            for i in range(L)
        ]
    else:
        dws, dbs = list(out[0]), list(out[1])
    if M == 0:
        for t in dws + dbs:
            if t is not None:
                t.zero_()
        return dws, dbs
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
    if splits > 1:
        ws, counters = _workspace(dev, splits * size, start[-1])
    else:
        ws, counters = inputs[0], inputs[0]  # not touched with one split
    g = [t if i >= first else inputs[0] for i, t in enumerate(grads)]
    dw = [t if t is not None else inputs[0] for t in dws]
    db = [t if t is not None else inputs[0] for t in dbs]
    launch(
        fused_grad_weights_kernel, (start[-1], splits), cfg, dev,
        *_mat(g), *_mat(inputs), *_mat(dw), tuple(db), tuple(t.stride(0) for t in db), Ns, Ks,
        tuple(ws_dw), tuple(ws_db), M, m_split, ws, size, counters,
        TILE_START=tuple(start), TILES_K=tiles_k,
        HAS_B=tuple(bool(has_bias[i]) and i >= first for i in range(L)), SPLITS=splits,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=cfg["BLOCK_K"], UPCAST=INTERPRETED,
        PRECISION=dot_precision(inputs[0].dtype),
    )  # fmt: skip
    return dws, dbs
