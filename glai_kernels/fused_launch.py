"""Host side of the fused kernels: allocate the outputs, pick the launch, launch. One launch a function.

Shapes are trusted here (``glai_kernels.dispatch`` validates them once per signature); strides are honoured,
operands are read in place. ``config`` overrides the dispatch table's configuration (:func:`resolved_config`); ``out`` passes
preallocated outputs (tests fill them with NaN first, so an element a kernel forgets to write fails).

Each launch is a class (:class:`Forward`, :class:`GradData`, :class:`GradWeights`) built from a call's
tensors: what the launch derives from their shapes and strides (constexprs, grid, tile tables, every stride
argument) is computed when it is built, and ``run`` allocates the outputs (``new_empty``, row-major), gathers
the operands' pointers and launches. :func:`forward`, :func:`grad_data` and :func:`grad_weights` build one per
call. The fused Function (``glai_kernels.fused``) builds each once per call signature and runs it at every step:
a signature fixes every operand's strides, and the outputs ``run`` allocates have the same strides every time,
so a step reads only the upstream gradient's strides (autograd passes whatever layout it has).

What derives from shapes and flags alone is remembered across the signatures that share it (``_STATIC``, at
most ``signature.MEMO_SIZE`` entries).

The weight gradient's split-combine workspace (fp32 partials and one ticket counter a tile) is allocated for
every launch that splits the batch, through PyTorch's caching allocator on the launch's stream, its counters
zeroed there (``torch.zeros``: one small memset before the launch). Nothing of it outlives the launch, so no
launch can leave state behind for the next one: two streams get two workspaces (the allocator hands a block
back only to its own stream, in stream order), a CUDA graph captures the allocation from its private pool
together with the memset, so every replay starts from zeroed counters, and a launch that faulted takes its
counters with it. A step allocates nothing that lives longer than the step, so it can be captured in a CUDA
graph after one warm-up step. See docs/fused.md for the alternatives and the cost.
"""

from __future__ import annotations

import torch

from . import fused_config, runtime
from .dropout_launch import fused_constexprs as drop_constexprs
from .fused_config import padded
from .fused_table import FROM_STRUCTURE, GIVEN, STRUCTURAL  # noqa: F401  (the forward modes)
from .kernels.fused_backward import fused_grad_data_kernel, fused_grad_weights_kernel
from .kernels.fused_forward import fused_forward_kernel
from .layout import PATTERN_DTYPE, WORD_BITS, words_for
from .signature import remember_bounded

_CONFIGS: dict = {}
_STATIC: dict = {}  # per signature: what a launch derives from shapes and flags (at most MEMO_SIZE of them)


def resolved_config(device: torch.device, config: dict | None, dtype: torch.dtype = torch.bfloat16) -> dict:
    """The dispatch table's configuration for ``device`` and ``dtype``, a caller's ``config=`` merged over it."""
    if config is not None:
        base = dict(_config(device, dtype))
        base.update(fused_config.check_fused_config(config))
        return base
    return _config(device, dtype)


def _config(device: torch.device, dtype: torch.dtype) -> dict:
    """The dispatch table's configuration for ``dtype`` at the current dot precision (``_CONFIGS[device]``,
    where set, overrides it for every dtype)."""
    cfg = _CONFIGS.get(device)
    if cfg is None:
        key = (device, dtype, runtime.launch_precision(dtype))
        cfg = _CONFIGS.get(key)
        if cfg is None:
            cfg = _CONFIGS[key] = fused_config.fused_defaults(runtime.capability_key(device), dtype, key[2])
    return cfg


def launch_fused(kernel, grid: tuple, cfg: dict, device: torch.device, *args, **constexprs) -> None:
    """``kernel[grid](*args, **constexprs)`` with ``cfg``'s warps and stages (compile options, which the
    interpreter does not take), on ``device`` (:func:`runtime.launch_on`)."""
    if device.type == "cuda":
        constexprs.update(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    runtime.launch_on(device, kernel[grid], args, constexprs)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _strides(ts) -> tuple:
    """Row and column strides of a list of 2-d tensors, as the kernels' tuples."""
    return tuple(zip(*[t.stride() for t in ts])) or ((), ())


def _dense(widths) -> tuple:
    """The strides :func:`_strides` gives for row-major ``[M, n]`` tensors as ``new_empty`` makes them."""
    return tuple(max(n, 1) for n in widths), (1,) * len(widths)


def _bias(biases, weights) -> tuple:
    """Bias pointers: a weight stands in for an absent bias (never read)."""
    return tuple([b if b is not None else w for b, w in zip(biases, weights)])


def _bias_strides(biases) -> tuple:
    return tuple(b.stride(0) if b is not None else 0 for b in biases)


def _memo(key, config, build):
    """``build()``, remembered per ``key`` (everything a launch derives from shapes and flags alone); a
    caller's ``config`` is never remembered."""
    if config is not None:
        return build()
    key = (*key, runtime.launch_precision(torch.float32))  # float32's configuration follows the TF32 setting
    found = _STATIC.get(key)
    if found is None:
        found = remember_bounded(_STATIC, key, build())
    return found


class Forward:
    """The forward launch of one call signature: ``run`` gives ``(y, hidden, words)`` of the stack on 2-d ``x``,
    ``hidden`` the ``L - 1`` hidden outputs (the layer inputs the backward needs), ``words`` the patterns (the
    given ones in mode ``GIVEN``, else written). ``structure``: ``(weights, biases)`` of the frozen structure's
    hidden layers (mode ``FROM_STRUCTURE``). ``out``: ``(y, hidden, words)`` buffers (``words`` ignored in mode
    ``GIVEN``)."""

    def __init__(
        self, x, weights, biases, mode, reduction=1, patterns=None, structure=None, config=None, dropout=None
    ):
        M, IN = x.shape
        dev, dt = x.device, x.dtype
        s_w, s_b = structure if mode == FROM_STRUCTURE else (weights[:-1], biases[:-1])
        key = (
            "forward", mode, reduction, dev, dt, IN, tuple([w.shape[0] for w in weights]),
            tuple([b is None for b in biases]), tuple([w.shape[0] for w in s_w]), tuple([b is None for b in s_b]),
            dropout,
        )  # fmt: skip
        st = _memo(key, config, lambda: _forward_static(key, config))
        self.mode, self.M, self.device, self.dtype = mode, M, dev, dt
        self.cfg, self.constexprs = st["cfg"], st["constexprs"]
        self.out_n, self.hidden_n = st["OUT"], st["HIDDEN"]
        self.words_n, self.staging_n = st["words"], st["staging"]
        self.grid = (_cdiv(M, self.cfg["BLOCK_M"]),)
        self.sizes = (M, IN, self.out_n, *x.stride())
        self.y_strides = (max(self.out_n, 1), 1)
        self.w_strides, self.b_strides = _strides(weights), _bias_strides(biases)
        self.sw_strides, self.sb_strides = _strides(s_w), _bias_strides(s_b)
        self.all_biases = all(b is not None for b in biases) and all(b is not None for b in s_b)
        self.h_strides = _dense(self.hidden_n)
        self.p_strides = _strides(patterns) if mode == GIVEN else _dense(self.words_n)
        staged = [(max(n, 1), 1) if n else x.stride() for n in self.staging_n]
        self.st_strides = tuple(zip(*staged))

    def run(self, x, weights, biases, patterns=None, structure=None, out=None, seed=None):
        """``seed``: the step's dropout seed (``glai_kernels.dropout.draw_seed``) when built with rates."""
        M, mode = self.M, self.mode
        if out is None:
            y = x.new_empty(M, self.out_n)
            hidden = [x.new_empty(M, n) for n in self.hidden_n]
            words = None
            if mode != GIVEN:
                words = [torch.empty(M, w, dtype=PATTERN_DTYPE, device=self.device) for w in self.words_n]
            y_strides, h_strides, p_strides = self.y_strides, self.h_strides, self.p_strides
        else:
            y, hidden, words = out[0], list(out[1]), (None if mode == GIVEN else list(out[2]))
            y_strides, h_strides = y.stride(), _strides(hidden)
            p_strides = self.p_strides if mode == GIVEN else _strides(words)
        if mode == GIVEN:
            words = patterns
        if M == 0:
            return y, hidden, words
        s_w, s_b = structure if mode == FROM_STRUCTURE else (weights[:-1], biases[:-1])
        # A structural layer wider than a chunk stages its rows in memory (its activations are not kept).
        staging = tuple([x.new_empty(M, n) if n else x for n in self.staging_n])
        if self.all_biases:
            b_ptrs, sb_ptrs = tuple(biases), tuple(s_b)
        else:
            b_ptrs, sb_ptrs = _bias(biases, weights), _bias(s_b, s_w)
        launch_fused(
            fused_forward_kernel, self.grid, self.cfg, self.device,
            x, y, *self.sizes, *y_strides, tuple(weights), *self.w_strides, b_ptrs, self.b_strides,
            tuple(hidden), *h_strides, tuple(words), *p_strides, tuple(s_w), *self.sw_strides, sb_ptrs,
            self.sb_strides, staging, *self.st_strides, PRECISION=runtime.launch_precision(self.dtype), seed_ptr=seed,
            **self.constexprs,
        )  # fmt: skip
        return y, hidden, words


def forward(
    x, weights, biases, mode, reduction=1, patterns=None, structure=None, *, config=None, out=None, dropout=None,
    seed=None,
):  # fmt: skip
    """``(y, hidden, words)``: see :class:`Forward`, built for this call (``dropout``: the hidden layers'
    rates, with the step's ``seed``)."""
    return Forward(x, weights, biases, mode, reduction, patterns, structure, config, dropout).run(
        x, weights, biases, patterns, structure, out, seed
    )


def _forward_static(key, config) -> dict:
    _, mode, reduction, dev, dt, IN, n_out, no_bias, s_n, s_no_bias, rates = key
    hidden_n = n_out[:-1]
    if mode == GIVEN:
        s_n = tuple(n // reduction for n in hidden_n)
    cfg = resolved_config(dev, config, dt)["chain"]
    pad, s_pad = tuple(padded(n) for n in hidden_n), tuple(padded(n) for n in s_n)
    chunk = fused_config.chunk_for(cfg, pad + s_pad)
    constexprs = dict(
        HIDDEN=hidden_n, PAD=pad, HAS_B=tuple(not n for n in no_bias), S_HIDDEN=s_n, S_PAD=s_pad,
        S_HAS_B=tuple(not n for n in s_no_bias), MODE=mode, REDUCTION=reduction, BLOCK_M=cfg["BLOCK_M"],
        BLOCK_K=cfg["BLOCK_K"], BLOCK_N=cfg["BLOCK_N"], CHUNK=chunk, WORD_BITS=WORD_BITS, UPCAST=runtime.kernels_interpreted(),
        **drop_constexprs(rates, len(hidden_n)),
    )  # fmt: skip
    staging = tuple(n if mode == FROM_STRUCTURE and padded(n) > chunk else 0 for n in s_n)
    return dict(
        cfg=cfg, constexprs=constexprs, OUT=n_out[-1], HIDDEN=hidden_n,
        words=tuple(words_for(n) for n in s_n), staging=staging,
    )  # fmt: skip


class GradData:
    """The data-gradient launch of one call signature: ``run`` gives ``(grads, dx)``, ``grads[l]`` the gradient
    at hidden layer ``l``'s output for ``l >= lowest`` (None below), ``dx`` when ``need_dx`` (which needs
    ``lowest == 0``). ``out``: ``(grads, dx)`` buffers. Only ``dy``'s strides are read again at each run."""

    def __init__(self, dy, weights, words, reduction, lowest, need_dx, config=None, dropout=None):
        M, OUT = dy.shape
        dev, dt = dy.device, dy.dtype
        hidden = tuple([w.shape[0] for w in weights[:-1]])
        key = ("grad_data", reduction, lowest, need_dx, dev, dt, dropout, hidden)
        st = _memo(key, config, lambda: _grad_data_static(key, config))
        self.M, self.device, self.dtype, self.lowest, self.need_dx = M, dev, dt, lowest, need_dx
        self.cfg, self.constexprs, self.hidden_n = st["cfg"], st["constexprs"], key[-1]
        self.IN = weights[0].shape[1]
        self.grid = (_cdiv(M, self.cfg["BLOCK_M"]),)
        self.sizes = (M, self.IN, OUT)
        self.dx_strides = (max(self.IN, 1), 1) if need_dx else (0, 0)
        self.w_strides, self.p_strides = _strides(weights), _strides(words)
        self.g_strides = _dense(self.hidden_n)

    def run(self, dy, weights, words, out=None, seed=None):
        M, lowest, need_dx = self.M, self.lowest, self.need_dx
        if out is None:
            grads = [dy.new_empty(M, n) if i >= lowest else None for i, n in enumerate(self.hidden_n)]
            dx = dy.new_empty(M, self.IN) if need_dx else None
        else:
            grads, dx = list(out[0]), out[1]
        if M == 0:
            return grads, dx
        g = [t if t is not None else dy for t in grads]  # never written: below the chain's end
        g_strides = self.g_strides if out is None and lowest == 0 else _strides(g)
        dx_strides = dx.stride() if out is not None and need_dx else self.dx_strides
        launch_fused(
            fused_grad_data_kernel, self.grid, self.cfg, self.device,
            dy, dx if need_dx else dy, *self.sizes, *dy.stride(), *dx_strides, tuple(weights), *self.w_strides,
            tuple(words), *self.p_strides, tuple(g), *g_strides, PRECISION=runtime.launch_precision(self.dtype),
            seed_ptr=seed, **self.constexprs,
        )  # fmt: skip
        return grads, dx


def grad_data(
    dy, weights, words, reduction, lowest, need_dx, *, config=None, out=None, dropout=None, seed=None
):
    """``(grads, dx)``: see :class:`GradData`, built for this call (``dropout``, ``seed``: the forward's)."""
    return GradData(dy, weights, words, reduction, lowest, need_dx, config, dropout).run(
        dy, weights, words, out, seed
    )


def _grad_data_static(key, config) -> dict:
    _, reduction, lowest, need_dx, dev, dt, rates, hidden_n = key
    cfg = resolved_config(dev, config, dt)["chain"]
    pad = tuple(padded(n) for n in hidden_n)
    constexprs = dict(
        HIDDEN=hidden_n, PAD=pad, LOWEST=lowest, NEED_DX=need_dx, REDUCTION=reduction, BLOCK_M=cfg["BLOCK_M"],
        BLOCK_K=cfg["BLOCK_K"], BLOCK_N=cfg["BLOCK_N"], CHUNK=fused_config.chunk_for(cfg, pad),
        WORD_BITS=WORD_BITS, UPCAST=runtime.kernels_interpreted(), **drop_constexprs(rates, len(hidden_n)),
    )  # fmt: skip
    return dict(cfg=cfg, constexprs=constexprs)


class GradWeights:
    """The weight-gradient launch of one call signature: ``run`` gives ``(dws, dbs)`` of layers ``first ..``
    (None below, and ``dbs[l]`` None without a bias) from ``grads[l]`` ``[M, N_l]`` (the last one ``dy``) and
    ``inputs[l]`` ``[M, K_l]`` (``x``, then the hidden outputs). ``out``: ``(dws, dbs)`` buffers. With several
    batch splits the fp32 partials go to a workspace allocated for the launch, with zeroed ticket counters.
    Only the strides of ``dy`` (the last of ``grads``) are read again at each run."""

    def __init__(self, grads, inputs, has_bias, first, config=None):
        x = inputs[0]
        M, dev, dt = x.shape[0], x.device, x.dtype
        Ns = tuple([g.shape[1] if i >= first else 1 for i, g in enumerate(grads)])
        Ks = tuple([a.shape[1] for a in inputs])
        key = ("grad_weights", first, tuple(has_bias), dev, dt, M, Ns, Ks)
        st = _memo(key, config, lambda: _grad_weights_static(key, config))
        self.M, self.first, self.device, self.dtype = M, first, dev, dt
        self.st, self.cfg, self.constexprs, self.grid = st, st["cfg"], st["constexprs"], st["grid"]
        self.dw_shapes, self.db_shapes = st["dw_shapes"], st["db_shapes"]
        self.sizes = (Ns, Ks, st["ws_dw"], st["ws_db"], M, st["m_split"])
        g_rows, g_cols = _strides([t if i >= first else x for i, t in enumerate(grads[:-1])])
        self.g_head = g_rows, g_cols
        self.a_strides = _strides(inputs)
        self.dw_strides = tuple(zip(*[(max(s[1], 1), 1) if s else x.stride() for s in self.dw_shapes]))
        self.db_strides = tuple([1 if s else x.stride(0) for s in self.db_shapes])
        self.all_biases = all(self.db_shapes)  # and first == 0: no stand-in anywhere

    def run(self, grads, inputs, out=None):
        x, M, first = inputs[0], self.M, self.first
        if out is None:
            dws = [x.new_empty(*s) if s else None for s in self.dw_shapes]
            dbs = [x.new_empty(*s) if s else None for s in self.db_shapes]
        else:
            dws, dbs = list(out[0]), list(out[1])
        if M == 0:
            for t in dws + dbs:
                if t is not None:
                    t.zero_()
            return dws, dbs
        if first == 0 and self.all_biases:
            g, dw, db = tuple(grads), tuple(dws), tuple(dbs)
        else:
            g = tuple([t if i >= first else x for i, t in enumerate(grads)])
            dw = tuple([t if t is not None else x for t in dws])
            db = tuple([t if t is not None else x for t in dbs])
        dy_strides = g[-1].stride()
        g_strides = (self.g_head[0] + dy_strides[:1], self.g_head[1] + dy_strides[1:])
        dw_strides, db_strides = self.dw_strides, self.db_strides
        if out is not None:
            dw_strides, db_strides = _strides(dw), tuple([t.stride(0) for t in db])
        ws, counters = x, x  # one split: never touched
        if self.st["ws_floats"]:  # fresh for every launch, on its stream: no state survives a launch
            ws = torch.empty(self.st["ws_floats"], dtype=torch.float32, device=self.device)
            counters = torch.zeros(self.grid[0], dtype=torch.int32, device=self.device)
        launch_fused(
            fused_grad_weights_kernel, self.grid, self.cfg, self.device,
            g, *g_strides, tuple(inputs), *self.a_strides, dw, *dw_strides, db, db_strides, *self.sizes, ws,
            self.st["ws_split"], counters, PRECISION=runtime.launch_precision(self.dtype), **self.constexprs,
        )  # fmt: skip
        return dws, dbs


def grad_weights(grads, inputs, has_bias, first, *, config=None, out=None):
    """``(dws, dbs)``: see :class:`GradWeights`, built for this call."""
    return GradWeights(grads, inputs, has_bias, first, config).run(grads, inputs, out)


def _grad_weights_static(key, config) -> dict:
    _, first, has_bias, dev, dt, M, Ns, Ks = key
    L = len(Ks)
    cfg = resolved_config(dev, config, dt)["weights"]
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
    tiles_k = tuple(_cdiv(k, bn) for k in Ks)
    start = [0]
    for i in range(L):
        start.append(start[-1] + (_cdiv(Ns[i], bm) * tiles_k[i] if i >= first else 0))
    splits, m_split = fused_config.fused_splits(cfg, start[-1], M, dev)
    # Workspace layout per split: every layer's [N, K] partial, then its [N] bias partial.
    ws_dw, ws_db, size = [], [], 0
    for i in range(L):
        ws_dw.append(size)
        size += Ns[i] * Ks[i] if i >= first else 0
        ws_db.append(size)
        size += Ns[i] if i >= first and has_bias[i] else 0
    constexprs = dict(
        TILE_START=tuple(start), TILES_K=tiles_k, HAS_B=tuple(bool(has_bias[i]) and i >= first for i in range(L)),
        SPLITS=splits, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=cfg["BLOCK_K"], UPCAST=runtime.kernels_interpreted(),
    )  # fmt: skip
    return dict(
        cfg=cfg, constexprs=constexprs, grid=(start[-1], splits), m_split=m_split, ws_dw=tuple(ws_dw),
        ws_db=tuple(ws_db), ws_split=size, ws_floats=splits * size if splits > 1 and M > 0 else 0,
        dw_shapes=[(Ns[i], Ks[i]) if i >= first else None for i in range(L)],
        db_shapes=[(Ns[i],) if i >= first and has_bias[i] else None for i in range(L)],
    )  # fmt: skip
