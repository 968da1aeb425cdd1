"""The ``"triton"`` backend: host side of the kernels in ``glai_kernels.kernels``.

``gate``, ``masked_forward``, ``backward_data`` and ``backward_weights`` have the signatures and semantics of
their twins in ``glai_kernels.reference`` (read their docstrings), plus two keywords:

- ``config``: a launch configuration ``{BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages}`` that
  overrides ``tuning.config_for`` (the autotuner times candidates this way);
- ``out``: preallocated outputs to write into (a tensor, or a tuple for the two-output ops), as with
  ``torch``'s ``out=``. Tests fill them with NaN first, so an element a kernel forgets to write fails.

Each kernel is a GEMM with output ``M x N`` and reduction ``K``; ``config_for(kernel, M, N, K, dtype,
precision)`` is asked with these sizes and the launch's ``dot_precision`` (fp32 under TF32 has its own tiles):

==================  ==========================  ===========  ===========  ==========
kernel              computes                    M            N            K
==================  ==========================  ===========  ===========  ==========
gate                relu(a W^T + b), pattern    batch        out width    in width
masked_forward      p * (h W^T + b)             batch        out width    in width
backward_data       (g W) * p_prev              batch        in width     out width
backward_weights    g^T h and sum_rows g        out width    in width     batch
==================  ==========================  ===========  ===========  ==========

Inputs are fp32, fp16 or bf16 (fp64 goes to the reference ops, which handle it exactly); accumulation is fp32,
outputs take the input dtype. Strides are honoured: operands are read in place, never copied. fp32 products
follow PyTorch's own rule for matmuls: TF32 when ``torch.backends.cuda.matmul`` allows it (off by default),
IEEE fp32 otherwise.

Without ``config`` and ``out`` the ops go through ``torch.library`` custom ops (``torch.ops.glai.*``) with
shape-only fake implementations, so ``torch.compile`` treats each launch as one opaque node of the graph.
"""

import torch
import triton

from . import reference
from .kernels.gate import gate_kernel
from .kernels.masked_matmul import masked_matmul_kernel
from .kernels.weight_grad import weight_grad_kernel
from .layout import PATTERN_DTYPE, WORD_BITS, words_for
from .tuning import PARAMS, config_for
from .tuning import check_config as check_launch_params

try:
    from triton.runtime.interpreter import InterpretedFunction
except ImportError:  # a Triton without the interpreter: kernels are always compiled
    InterpretedFunction = ()

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Triton decides at kernel definition (import) time whether kernels are compiled or interpreted.
INTERPRETED = isinstance(gate_kernel, InterpretedFunction)


# ----------------------------------------------------------------------------- launch policy
def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s ``input_precision`` for operands of ``dtype``: TF32 for fp32 only where PyTorch's own
    matmuls would use it, ``"ieee"`` otherwise (and always under the interpreter, whose operands are fp32)."""
    if INTERPRETED or dtype != torch.float32:
        return "ieee" if INTERPRETED else "tf32"  # the argument only matters for fp32 operands
    matmul = torch.backends.cuda.matmul
    # torch >= 2.9 has `fp32_precision` ("ieee" | "tf32" | "none" = not set through the new API); reading the
    # legacy flag after the new API was used raises there, so the new one is read first.
    new = getattr(matmul, "fp32_precision", "none")
    if new in ("ieee", "tf32"):
        return new
    return "tf32" if matmul.allow_tf32 else "ieee"


def check_config(kernel: str, config: dict) -> dict:
    """A caller's ``config=`` as a launchable dict, or a ValueError naming what is wrong with it: the rules of
    ``tuning.check_config`` (which guards the cache too) on the launch parameters, plus an optional ``SPLIT_K``
    and the gate's whole-word tiles. Other keys are ignored."""
    if not isinstance(config, dict) or any(k not in config for k in PARAMS):
        raise ValueError(f"a launch config for {kernel!r} must be a dict with keys {PARAMS}, got {config!r}")
    cfg = check_launch_params({k: config[k] for k in PARAMS})
    split = config.get("SPLIT_K")
    if split is not None:
        if isinstance(split, bool) or not isinstance(split, int) or split < 1:
            raise ValueError(f"launch config SPLIT_K must be a positive int, got {split!r}")
        cfg["SPLIT_K"] = split
    if kernel == "gate" and cfg["BLOCK_N"] % WORD_BITS:
        raise ValueError(
            f"the gate kernel packs whole {WORD_BITS}-bit words per tile: BLOCK_N must be a multiple of "
            f"{WORD_BITS}, got {cfg['BLOCK_N']}"
        )
    return cfg


def _config(
    kernel: str, M: int, N: int, K: int, dtype: torch.dtype, precision: str, config: dict | None
) -> dict:
    if config is not None:
        return check_config(kernel, config)
    # A fresh dict, already checked: defaults are fixed and cache entries pass tuning.check_config on load.
    cfg = config_for(kernel, M, N, K, dtype, precision)
    if kernel == "gate" and cfg["BLOCK_N"] % WORD_BITS:
        # A power-of-two BLOCK_N that is no multiple of the word is smaller than it: widen the tile to one
        # word rather than fail on a generic configuration.
        cfg["BLOCK_N"] = WORD_BITS
    return cfg


def _launch(kernel, M: int, N: int, cfg: dict, device: torch.device, *args, splits: int = 1, **constexprs):
    """A program per ``BLOCK_M x BLOCK_N`` output tile (axis 0, grouped order), times ``splits`` (axis 1)."""
    grid = (triton.cdiv(M, cfg["BLOCK_M"]) * triton.cdiv(N, cfg["BLOCK_N"]), splits)
    meta = {k: cfg[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M")}
    launch = kernel[grid]
    if device.type != "cuda":  # the interpreter
        launch(*args, **constexprs, **meta)
        return
    options = {"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}
    # Triton launches on the current device: switch only when the operands live on another one.
    if device.index is None or device.index == torch.cuda.current_device():
        launch(*args, **constexprs, **meta, **options)
    else:
        with torch.cuda.device(device):
            launch(*args, **constexprs, **meta, **options)


# ----------------------------------------------------------------------------- argument checks
def _check_operands(op: str, tensors: dict) -> torch.Tensor:
    """Float operands of one dtype on one device, 2-d where named so; returns the first one."""
    first = next(iter(tensors.values()))
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype != first.dtype:
            raise TypeError(
                f"{op}: {name} must have dtype {first.dtype} like the other operands, got {t.dtype}"
            )
        if t.device != first.device:
            raise ValueError(
                f"{op}: {name} must be on {first.device} like the other operands, got {t.device}"
            )
    if first.dtype not in KERNEL_DTYPES + (torch.float64,):
        raise TypeError(f"{op}: operands must be float32, float16, bfloat16 (or float64), got {first.dtype}")
    if first.device.type != "cuda" and not INTERPRETED and first.device.type != "meta":
        raise ValueError(
            f"{op}: the Triton kernels need CUDA tensors (or TRITON_INTERPRET=1, set before import, for "
            f"Triton's CPU interpreter), got tensors on {first.device}; use the 'torch' backend there"
        )
    return first


def _check_shape(op: str, name: str, t: torch.Tensor, shape: tuple) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def _check_2d(op: str, **tensors) -> None:
    for name, t in tensors.items():
        if t.dim() != 2:
            raise ValueError(f"{op}: {name} must be 2-d, got shape {tuple(t.shape)}")


def _check_words(op: str, words, M: int, units: int, reduction: int, device) -> None:
    if isinstance(reduction, bool) or not isinstance(reduction, int) or reduction < 1:
        raise ValueError(f"{op}: reduction must be a positive int, got {reduction!r}")
    if words is None:
        return
    if units % reduction:
        raise ValueError(f"{op}: reduction={reduction} must divide the gated width {units}")
    if not isinstance(words, torch.Tensor) or words.dtype != PATTERN_DTYPE:
        got = words.dtype if isinstance(words, torch.Tensor) else type(words).__name__
        raise TypeError(f"{op}: words must be int32 packed patterns (see pack_patterns), got {got}")
    _check_shape(op, "words", words, (M, words_for(units // reduction)))
    if words.device != device:
        raise ValueError(f"{op}: words must be on {device} like the operands, got {words.device}")


def _out_pair(op: str, out, what: str) -> tuple:
    """The two output buffers of a two-output op, or a TypeError naming the pair expected."""
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        got = f"{len(out)} items" if isinstance(out, (tuple, list)) else type(out).__name__
        raise TypeError(f"{op}: out must be a pair {what}, got {got}")
    return tuple(out)


def _check_out(op: str, name: str, out, shape: tuple, dtype: torch.dtype, device) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(out).__name__}")
    _check_shape(op, name, out, shape)
    if out.dtype != dtype or out.device != device:
        raise TypeError(f"{op}: {name} must be {dtype} on {device}, got {out.dtype} on {out.device}")
    return out


def _bias_args(bias) -> tuple:
    return (bias, bias.stride(0)) if bias is not None else (None, 0)


# ----------------------------------------------------------------------------- launchers
def _gate_impl(a, weight, bias, config=None, out=None):
    op = "gate"
    _check_operands(op, {"a": a, "weight": weight, **({"bias": bias} if bias is not None else {})})
    _check_2d(op, a=a, weight=weight)
    (M, K), N = a.shape, weight.shape[0]
    _check_shape(op, "weight", weight, (N, K))
    if bias is not None:
        _check_shape(op, "bias", bias, (N,))
    if out is None:
        relu = torch.empty((M, N), dtype=a.dtype, device=a.device)
        words = torch.empty((M, words_for(N)), dtype=PATTERN_DTYPE, device=a.device)
    else:
        relu, words = _out_pair(op, out, "(relu [M, N], words int32 [M, ceil(N / 32)])")
        _check_out(op, "out[0]", relu, (M, N), a.dtype, a.device)
        _check_out(op, "out[1]", words, (M, words_for(N)), PATTERN_DTYPE, a.device)
    if a.dtype == torch.float64:
        r, w = reference.gate(a, weight, bias)
        return relu.copy_(r), words.copy_(w)
    if M == 0 or N == 0:
        return relu, words
    precision = dot_precision(a.dtype)
    cfg = _config(op, M, N, K, a.dtype, precision, config)
    bias_ptr, stride_bias = _bias_args(bias)
    _launch(
        gate_kernel, M, N, cfg, a.device,
        a, weight, bias_ptr, relu, words, M, N, K,
        a.stride(0), a.stride(1), weight.stride(0), weight.stride(1), stride_bias,
        relu.stride(0), relu.stride(1), words.stride(0), words.stride(1),
        HAS_BIAS=bias is not None, WORD_BITS=WORD_BITS, UPCAST=INTERPRETED, PRECISION=precision,
    )  # fmt: skip
    return relu, words


def _masked(op, a, b, b_strides, N, bias, words, reduction, config, out):
    """``p * (a B + bias)`` with ``B`` ``[K, N]`` addressed by ``b_strides``; the shared launcher of
    ``masked_forward`` (``B = W^T``) and ``backward_data`` (``B = W``). ``b`` is the layer's weight."""
    M, K = a.shape
    _check_words(op, words, M, N, reduction, a.device)
    if out is not None:
        _check_out(op, "out", out, (M, N), a.dtype, a.device)
    if a.dtype == torch.float64:  # the reference computes fp64 exactly
        if op == "masked_forward":
            res = reference.masked_forward(a, b, bias, words, reduction)
        else:
            res = reference.backward_data(a, b, words, reduction)
        return res if out is None else out.copy_(res)
    if out is None:
        out = torch.empty((M, N), dtype=a.dtype, device=a.device)
    if M == 0 or N == 0:
        return out
    precision = dot_precision(a.dtype)
    cfg = _config(op, M, N, K, a.dtype, precision, config)
    bias_ptr, stride_bias = _bias_args(bias)
    words_args = (words, words.stride(0), words.stride(1)) if words is not None else (None, 0, 0)
    _launch(
        masked_matmul_kernel, M, N, cfg, a.device,
        a, b, bias_ptr, words_args[0], out, M, N, K,
        a.stride(0), a.stride(1), *b_strides, stride_bias, *words_args[1:], out.stride(0), out.stride(1),
        HAS_BIAS=bias is not None, HAS_GATE=words is not None, REDUCTION=reduction, WORD_BITS=WORD_BITS,
        UPCAST=INTERPRETED, PRECISION=precision,
    )  # fmt: skip
    return out


def _masked_forward_impl(h, weight, bias, words, reduction, config=None, out=None):
    op = "masked_forward"
    _check_operands(op, {"h": h, "weight": weight, **({"bias": bias} if bias is not None else {})})
    _check_2d(op, h=h, weight=weight)
    N, K = weight.shape[0], h.shape[1]
    _check_shape(op, "weight", weight, (N, K))
    if bias is not None:
        _check_shape(op, "bias", bias, (N,))
    # B = W^T: element (k, n) is W[n, k].
    b_strides = (weight.stride(1), weight.stride(0))
    return _masked(op, h, weight, b_strides, N, bias, words, reduction, config, out)


def _backward_data_impl(g, weight, words, reduction, config=None, out=None):
    op = "backward_data"
    _check_operands(op, {"g": g, "weight": weight})
    _check_2d(op, g=g, weight=weight)
    N, K = g.shape[1], weight.shape[1]
    _check_shape(op, "weight", weight, (N, K))
    # B = W, [N, K]: the GEMM's reduction runs over the layer's outputs N and its columns are the inputs K.
    b_strides = (weight.stride(0), weight.stride(1))
    return _masked(op, g, weight, b_strides, K, None, words, reduction, config, out)


def _backward_weights_impl(g, h, need_bias, config=None, out=None):
    op = "backward_weights"
    _check_operands(op, {"g": g, "h": h})
    _check_2d(op, g=g, h=h)
    (M, N), K = g.shape, h.shape[1]
    _check_shape(op, "h", h, (M, K))
    if out is None:
        dw = torch.empty((N, K), dtype=g.dtype, device=g.device)
        db = torch.empty((N,), dtype=g.dtype, device=g.device) if need_bias else None
    else:
        dw, db = _out_pair(op, out, "(dW [N, K], db [N] or None)")
        _check_out(op, "out[0]", dw, (N, K), g.dtype, g.device)
        if need_bias:
            _check_out(op, "out[1]", db, (N,), g.dtype, g.device)
        db = db if need_bias else None
    if g.dtype == torch.float64:
        rw, rb = reference.backward_weights(g, h, need_bias)
        return dw.copy_(rw), (db.copy_(rb) if need_bias else None)
    if N == 0:
        return dw, db
    if K == 0:  # no dW tiles to launch, but db is still the column sum of g
        if need_bias:
            db.copy_(g.sum(dim=0, dtype=torch.float32))
        return dw, db
    # An empty batch (M == 0) still launches: the reduction runs zero steps and writes zeros, as g^T h does.
    precision = dot_precision(g.dtype)
    cfg = _config(op, N, K, M, g.dtype, precision, config)
    splits, m_split = _batch_splits(cfg, N, K, M, g.device)
    if splits == 1:  # the outputs themselves, as one-slice workspaces
        dw_out, db_out = dw.unsqueeze(0), (db.unsqueeze(0) if need_bias else None)
    else:  # fp32 partial sums per split, added below in a fixed order
        dw_out = torch.empty((splits, N, K), dtype=torch.float32, device=g.device)
        db_out = torch.empty((splits, N), dtype=torch.float32, device=g.device) if need_bias else None
    db_strides = db_out.stride() if need_bias else (0, 0)
    _launch(
        weight_grad_kernel, N, K, cfg, g.device,
        g, h, dw_out, db_out, N, K, M, m_split,
        g.stride(0), g.stride(1), h.stride(0), h.stride(1), *dw_out.stride(), *db_strides,
        splits=splits, HAS_BIAS=bool(need_bias), UPCAST=INTERPRETED, PRECISION=precision,
    )  # fmt: skip
    if splits > 1:
        # torch.sum reduces each element's S partials in one fixed order (no atomics): deterministic.
        dw.copy_(dw_out.sum(dim=0))
        if need_bias:
            db.copy_(db_out.sum(dim=0))
    return dw, db


_SM_COUNT: dict = {}


def _batch_splits(cfg: dict, N: int, K: int, M: int, device: torch.device) -> tuple[int, int]:
    """``(S, rows per split)`` for the weight gradient: ``cfg["SPLIT_K"]`` when given, else enough splits to
    give every multiprocessor a program when the ``dW`` tiles alone cannot (at most 16, each split at least 8
    ``BLOCK_K`` steps long). Splits are whole ``BLOCK_K`` steps; none is empty."""
    bk = cfg["BLOCK_K"]
    steps = triton.cdiv(M, bk)
    want = cfg.get("SPLIT_K")
    if want is None:
        want = 1
        if device.type == "cuda":
            if device not in _SM_COUNT:
                _SM_COUNT[device] = torch.cuda.get_device_properties(device).multi_processor_count
            tiles = triton.cdiv(N, cfg["BLOCK_M"]) * triton.cdiv(K, cfg["BLOCK_N"])
            want = max(1, min(_SM_COUNT[device] // tiles, steps // 8, 16))
    if want <= 1 or steps <= 1:
        return 1, M
    per_split = triton.cdiv(steps, min(want, steps)) * bk
    return triton.cdiv(M, per_split), per_split


# ----------------------------------------------------------------------------- torch.library registration
@torch.library.custom_op(
    "glai::gate", mutates_args=(), schema="(Tensor a, Tensor weight, Tensor? bias) -> (Tensor, Tensor)"
)
def _gate_op(a, weight, bias):
    return _gate_impl(a, weight, bias)


@_gate_op.register_fake
def _(a, weight, bias):
    return a.new_empty(a.shape[0], weight.shape[0]), a.new_empty(
        a.shape[0], words_for(weight.shape[0]), dtype=PATTERN_DTYPE
    )


@torch.library.custom_op(
    "glai::masked_forward",
    mutates_args=(),
    schema="(Tensor h, Tensor weight, Tensor? bias, Tensor? words, int reduction) -> Tensor",
)
def _masked_forward_op(h, weight, bias, words, reduction):
    return _masked_forward_impl(h, weight, bias, words, reduction)


@_masked_forward_op.register_fake
def _(h, weight, bias, words, reduction):
    return h.new_empty(h.shape[0], weight.shape[0])


@torch.library.custom_op(
    "glai::backward_data",
    mutates_args=(),
    schema="(Tensor g, Tensor weight, Tensor? words, int reduction) -> Tensor",
)
def _backward_data_op(g, weight, words, reduction):
    return _backward_data_impl(g, weight, words, reduction)


@_backward_data_op.register_fake
def _(g, weight, words, reduction):
    return g.new_empty(g.shape[0], weight.shape[1])


@torch.library.custom_op(
    "glai::backward_weights",
    mutates_args=(),
    schema="(Tensor g, Tensor h, bool need_bias) -> (Tensor, Tensor)",
)
def _backward_weights_op(g, h, need_bias):
    # A custom op cannot return None: without a bias, db is an empty tensor that the wrapper drops.
    dw, db = _backward_weights_impl(g, h, need_bias)
    return dw, db if need_bias else g.new_empty(0)


@_backward_weights_op.register_fake
def _(g, h, need_bias):
    return g.new_empty(g.shape[1], h.shape[1]), g.new_empty(g.shape[1] if need_bias else 0)


# ----------------------------------------------------------------------------- public ops
def gate(a, weight, bias, *, config: dict | None = None, out=None):
    """``relu(a W^T + b)`` and its packed pattern, as :func:`glai_kernels.reference.gate`.
    ``out``: ``(relu [M, N], words int32 [M, ceil(N / 32)])``."""
    if config is None and out is None:
        return torch.ops.glai.gate(a, weight, bias)
    return _gate_impl(a, weight, bias, config, out)


def masked_forward(h, weight, bias, words, reduction: int, *, config: dict | None = None, out=None):
    """``p * (h W^T + b)``, as :func:`glai_kernels.reference.masked_forward`. ``out``: ``[M, N]``."""
    if config is None and out is None:
        return torch.ops.glai.masked_forward(h, weight, bias, words, reduction)
    return _masked_forward_impl(h, weight, bias, words, reduction, config, out)


def backward_data(g, weight, words, reduction: int, *, config: dict | None = None, out=None):
    """``(g W) * p_prev``, as :func:`glai_kernels.reference.backward_data`. ``out``: ``[M, K]``."""
    if config is None and out is None:
        return torch.ops.glai.backward_data(g, weight, words, reduction)
    return _backward_data_impl(g, weight, words, reduction, config, out)


def backward_weights(g, h, need_bias: bool, *, config: dict | None = None, out=None):
    """``dW = g^T h`` and ``db = sum_rows g`` (None without bias), as
    :func:`glai_kernels.reference.backward_weights`. ``out``: ``(dW [N, K], db [N] or None)``."""
    if config is None and out is None:
        dw, db = torch.ops.glai.backward_weights(g, h, bool(need_bias))
        return dw, (db if need_bias else None)
    return _backward_weights_impl(g, h, need_bias, config, out)
