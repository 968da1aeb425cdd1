"""The per-layer path's Triton ops (the ``"triton"`` backend of ``per_layer.GLAIStackFunction``): host side of
the per-layer kernels in ``glai_kernels.kernels``.

``gate``, ``masked_forward``, ``backward_data`` and ``backward_weights`` have the signatures and semantics of
their twins in ``glai_kernels.reference`` (read their docstrings), plus two keywords:

- ``config``: a launch configuration (``tuning.KEYS``) that overrides ``launch_configs.config_for`` (the
  autotuner times candidates this way);
- ``out``: preallocated outputs to write into (a tensor, or a tuple for the two-output ops), as with
  ``torch``'s ``out=``; they must not overlap the inputs. Tests fill them with NaN first, so an element a kernel
  forgets to write fails.

Each kernel is a GEMM with output ``M x N`` and reduction ``K``; ``config_for(kernel, M, N, K, dtype,
precision, device)`` is asked with these sizes and the launch's ``dot_precision`` (fp32 under TF32 has its own
tiles):

==================  ==========================  ===========  ===========  ==========
kernel              computes                    M            N            K
==================  ==========================  ===========  ===========  ==========
gate                relu(a W^T + b), pattern    batch        out width    in width
masked_forward      p * (h W^T + b)             batch        out width    in width
backward_data       (g W) * p_prev              batch        in width     out width
backward_weights    g^T h and sum_rows g        out width    in width     batch
==================  ==========================  ===========  ===========  ==========

Inputs are fp32, fp16 or bf16 (fp64 goes to the reference ops, which handle it exactly); accumulation is fp32,
outputs take the input dtype. Strides are honoured: operands are read in place, except that under TF32 the
backward kernels read column-major copies of operands that are not contiguous along the reduction when the
configuration says ``K_MAJOR`` (Hopper's TF32 tensor-core instructions read K-major operands only). fp32
products follow PyTorch's own rule for matmuls: TF32 when ``torch.backends.cuda.matmul`` allows it (off by
default), IEEE fp32 otherwise.

An eager call goes straight to its launch; its checks run once per call signature (``per_layer_launch``). While
``torch.compile`` traces, the ops go through ``torch.library`` custom ops (``torch.ops.glai.*``) with
shape-only fake implementations, so the compiled graph holds each launch as one opaque node.
"""

import torch

from . import per_layer_launch as launching
from . import reference, runtime
from .dropout_launch import constexprs as dropout_constexprs
from .kernels.gate import gate_kernel
from .kernels.masked_matmul import masked_matmul_kernel
from .kernels.weight_grad import weight_grad_kernel
from .layout import PATTERN_DTYPE, WORD_BITS, words_for
from .per_layer_launch import check_launch_config  # noqa: F401  (part of this module's API)
from .runtime import launch_precision as dot_precision  # noqa: F401  (the ops' interface: the tuner keys fp32 entries by it)
from .tuning import per_layer_splits

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------- argument checks
def _check_operands(op: str, tensors: dict) -> torch.Tensor:
    """Float operands of one dtype on one device; returns the first one."""
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
    if first.device.type != "cuda" and not runtime.kernels_interpreted() and first.device.type != "meta":
        raise ValueError(
            f"{op}: the Triton kernels need CUDA tensors (or TRITON_INTERPRET=1, set before import, for "
            f"Triton's CPU interpreter), got tensors on {first.device}; use the 'torch' backend there"
        )
    return first


def _check_2d(op: str, **tensors) -> None:
    for name, t in tensors.items():
        if t.dim() != 2:
            raise ValueError(f"{op}: {name} must be 2-d, got shape {tuple(t.shape)}")


def _check_shape(op: str, name: str, t: torch.Tensor, shape: tuple) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


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


# ----------------------------------------------------------------------------- plans (once per signature)
def _plan_gate(a, weight, bias, relu_out, config) -> launching.Plan:
    op = "gate"
    _check_operands(op, {"a": a, "weight": weight, **({"bias": bias} if bias is not None else {})})
    _check_2d(op, a=a, weight=weight)
    (M, K), N = a.shape, weight.shape[0]
    _check_shape(op, "weight", weight, (N, K))
    if bias is not None:
        _check_shape(op, "bias", bias, (N,))
    if a.dtype == torch.float64:
        return launching.Plan(M, N, K, None, "reference", "ieee")
    plan = launching.new_plan(op, M, N, K, a.dtype, a.device, config)
    plan.constexprs.update(HAS_BIAS=bias is not None, RELU_OUT=relu_out, WORD_BITS=WORD_BITS)
    launching.set_tma(plan, a, weight.t(), False)
    # The gate reads W as it lies, [N, K]: a W stored transposed goes through the pointer loop.
    plan.tma = plan.tma and not plan.constexprs.pop("B_KN")
    return launching.finish(plan, a.device)


def _plan_masked(op, a, weight, bias, words, reduction, config, p=0.0) -> launching.Plan:
    """``masked_forward`` (``B = W^T``, with a bias) or ``backward_data`` (``B = W``)."""
    a_name = "h" if op == "masked_forward" else "g"
    _check_operands(op, {a_name: a, "weight": weight, **({"bias": bias} if bias is not None else {})})
    _check_2d(op, **{a_name: a, "weight": weight})
    if op == "masked_forward":
        M, N, K = a.shape[0], weight.shape[0], a.shape[1]
        _check_shape(op, "weight", weight, (N, K))
        if bias is not None:
            _check_shape(op, "bias", bias, (N,))
    else:  # the reduction runs over the layer's outputs, the result's columns are its inputs
        M, N, K = a.shape[0], weight.shape[1], a.shape[1]
        _check_shape(op, "weight", weight, (K, N))
    _check_words(op, words, M, N, reduction, a.device)
    if a.dtype == torch.float64:
        return launching.Plan(M, N, K, None, "reference", "ieee")
    plan = launching.new_plan(op, M, N, K, a.dtype, a.device, config)
    plan.constexprs.update(
        HAS_BIAS=bias is not None, HAS_GATE=words is not None, REDUCTION=reduction, WORD_BITS=WORD_BITS
    )
    if p:
        plan.constexprs.update(dropout_constexprs(p))
    b = weight.t() if op == "masked_forward" else weight
    plan.copy_b = launching.wants_k_major(plan) and b.stride(0) != 1
    launching.set_tma(plan, a, launching.k_major(b, plan, probe=True), False)
    return launching.finish(plan, a.device)


def _plan_weights(g, h, need_bias, config) -> launching.Plan:
    op = "backward_weights"
    _check_operands(op, {"g": g, "h": h})
    _check_2d(op, g=g, h=h)
    (M, N), K = g.shape, h.shape[1]
    _check_shape(op, "h", h, (M, K))
    # The GEMM: dW [N, K] = g^T [N, M] h [M, K].
    if g.dtype == torch.float64:
        return launching.Plan(N, K, M, None, "reference", "ieee")
    plan = launching.new_plan(op, N, K, M, g.dtype, g.device, config)
    plan.constexprs["HAS_BIAS"] = need_bias
    plan.splits, plan.m_split = per_layer_splits(plan.config, N, K, M, runtime.multiprocessor_count(g.device))
    launching.set_tma(
        plan, launching.k_major(g, plan, probe=True).t(), launching.k_major(h, plan, probe=True), True
    )
    plan.tma = plan.tma and M > 0  # a descriptor of an empty batch cannot be made
    return launching.finish(plan, g.device)


def _plan_of(key, make, *args) -> launching.Plan:
    plan = launching.LAUNCH_PLANS.get(key) if key is not None else None
    return plan if plan is not None else launching.remember_plan(key, make(*args))


# ----------------------------------------------------------------------------- launchers
def _gate_impl(a, weight, bias, relu_out=True, config=None, out=None):
    op = "gate"
    relu_out = bool(relu_out)
    key = launching.signature(op, config, relu_out, a, weight, bias)
    plan = _plan_of(key, _plan_gate, a, weight, bias, relu_out, config)
    M, N = plan.M, plan.N
    if out is None:
        relu = torch.empty((M, N), dtype=a.dtype, device=a.device) if relu_out else None
        words = torch.empty((M, words_for(N)), dtype=PATTERN_DTYPE, device=a.device)
    else:
        what = "(relu [M, N] (None when relu_out=False), words int32 [M, ceil(N / 32)])"
        relu, words = _out_pair(op, out, what)
        relu = _check_out(op, "out[0]", relu, (M, N), a.dtype, a.device) if relu_out else None
        _check_out(op, "out[1]", words, (M, words_for(N)), PATTERN_DTYPE, a.device)
        launching.check_no_overlap(
            op, {"out[0]": relu, "out[1]": words}, {"a": a, "weight": weight, "bias": bias}
        )
    if plan.config is None:  # float64: the reference computes it exactly
        r, w = reference.gate(a, weight, bias)
        return (relu.copy_(r) if relu_out else None), words.copy_(w)
    if M == 0 or N == 0:
        return relu, words
    da, dw, tma = launching.operands(plan, a, weight.t()) if plan.tma else (a, weight, False)
    relu_strides = relu.stride() if relu_out else (0, 0)
    launching.launch_plan(
        gate_kernel, plan, tma, a.device,
        (da, dw if tma else weight, bias, relu, words, M, N, plan.K, *a.stride(), *weight.stride(),
         bias.stride(0) if bias is not None else 0, *relu_strides, *words.stride()),
    )  # fmt: skip
    return relu, words


def _masked_impl(op, a, weight, bias, words, reduction, config, out, dropout=None):
    """``p * (a B + bias)``: the shared launcher of ``masked_forward`` (``B = W^T``) and ``backward_data``
    (``B = W``); ``dropout``: ``(seed, layer, rate)`` of the result's units, or None."""
    rate = dropout[2] if dropout is not None else 0.0
    key = launching.signature(op, config, (reduction, rate) if rate else reduction, a, weight, bias, words)
    plan = _plan_of(key, _plan_masked, op, a, weight, bias, words, reduction, config, rate)
    M, N = plan.M, plan.N
    if out is not None:
        _check_out(op, "out", out, (M, N), a.dtype, a.device)
        ins = {"h" if op == "masked_forward" else "g": a, "weight": weight, "bias": bias, "words": words}
        launching.check_no_overlap(op, {"out": out}, ins)
    if plan.config is None:  # float64: the reference computes it exactly
        if op == "masked_forward":
            res = reference.masked_forward(a, weight, bias, words, reduction, dropout if rate else None)
        else:
            res = reference.backward_data(a, weight, words, reduction, dropout if rate else None)
        return res if out is None else out.copy_(res)
    if out is None:
        out = torch.empty((M, N), dtype=a.dtype, device=a.device)
    if M == 0 or N == 0:
        return out
    if op == "masked_forward":  # B = W^T: element (k, n) is W[n, k]
        b, stride_bk, stride_bn = weight, weight.stride(1), weight.stride(0)
    else:  # B = W
        b, stride_bk, stride_bn = weight, weight.stride(0), weight.stride(1)
    if plan.copy_b:  # a column-major copy of B (K contiguous), made once per call
        b = launching.k_major(weight.t() if op == "masked_forward" else weight, plan)
        stride_bk, stride_bn = b.stride()
    tma = False
    if plan.tma:
        a, b, tma = launching.operands(plan, a, b.t() if op == "masked_forward" and not plan.copy_b else b)
    w_args = (words, *words.stride()) if words is not None else (None, 0, 0)
    args = (a, b, bias, w_args[0], out, M, N, plan.K, *(a.stride() if not tma else (0, 0)), stride_bk, stride_bn,
            bias.stride(0) if bias is not None else 0, *w_args[1:], *out.stride())  # fmt: skip
    if rate:  # the dropout seed and layer: keywords of the kernel, after its constexprs
        launching.launch_plan(
            masked_matmul_kernel,
            plan,
            tma,
            out.device,
            args,
            {"seed_ptr": dropout[0], "drop_layer": dropout[1]},
        )
    else:
        launching.launch_plan(masked_matmul_kernel, plan, tma, out.device, args)
    return out


def _masked_forward_impl(h, weight, bias, words, reduction, config=None, out=None, dropout=None):
    return _masked_impl("masked_forward", h, weight, bias, words, reduction, config, out, dropout)


def _backward_data_impl(g, weight, words, reduction, config=None, out=None, dropout=None):
    return _masked_impl("backward_data", g, weight, None, words, reduction, config, out, dropout)


def _dropout_of(seed, layer, p):
    """A custom op's ``(seed, layer, p)`` arguments as the launchers' ``dropout``."""
    return (seed, layer, p) if p else None


def _backward_weights_impl(g, h, need_bias, config=None, out=None):
    op = "backward_weights"
    need_bias = bool(need_bias)
    key = launching.signature(op, config, need_bias, g, h)
    plan = _plan_of(key, _plan_weights, g, h, need_bias, config)
    N, K, M = plan.M, plan.N, plan.K
    if out is None:
        dw = torch.empty((N, K), dtype=g.dtype, device=g.device)
        db = torch.empty((N,), dtype=g.dtype, device=g.device) if need_bias else None
    else:
        dw, db = _out_pair(op, out, "(dW [N, K], db [N] or None)")
        _check_out(op, "out[0]", dw, (N, K), g.dtype, g.device)
        db = _check_out(op, "out[1]", db, (N,), g.dtype, g.device) if need_bias else None
        launching.check_no_overlap(op, {"out[0]": dw, "out[1]": db}, {"g": g, "h": h})
    if plan.config is None:  # float64: the reference computes it exactly
        rw, rb = reference.backward_weights(g, h, need_bias)
        return dw.copy_(rw), (db.copy_(rb) if need_bias else None)
    if N == 0:
        return dw, db
    if K == 0:  # no dW tiles to launch, but db is still the column sum of g
        if need_bias:
            db.copy_(g.sum(dim=0, dtype=torch.float32))
        return dw, db
    # An empty batch (M == 0) still launches: the reduction runs zero steps and writes zeros, as g^T h does.
    splits = plan.splits
    if splits == 1:  # the outputs themselves, as one-slice workspaces
        dw_out, db_out = dw.unsqueeze(0), (db.unsqueeze(0) if need_bias else None)
    else:  # fp32 partial sums per split, added below in a fixed order
        dw_out = torch.empty((splits, N, K), dtype=torch.float32, device=g.device)
        db_out = torch.empty((splits, N), dtype=torch.float32, device=g.device) if need_bias else None
    # TF32 on Hopper: column-major copies (the batch contiguous) of operands that are not, made once per call.
    g, h = launching.k_major(g, plan), launching.k_major(h, plan)
    dg, dh, tma = launching.operands(plan, g.t(), h) if plan.tma else (g, h, False)
    launching.launch_plan(
        weight_grad_kernel, plan, tma, g.device,
        (dg if tma else g, dh, dw_out, db_out, N, K, M, plan.m_split, *g.stride(), *h.stride(), *dw_out.stride(),
         *(db_out.stride() if need_bias else (0, 0))),
    )  # fmt: skip
    if splits > 1:
        # torch.sum reduces each element's S partials in one fixed order (no atomics): deterministic.
        dw.copy_(dw_out.sum(dim=0))
        if need_bias:
            db.copy_(db_out.sum(dim=0))
    return dw, db


# ----------------------------------------------------------------------------- torch.library registration
@torch.library.custom_op(
    "glai::gate",
    mutates_args=(),
    schema="(Tensor a, Tensor weight, Tensor? bias, bool relu_out=True) -> (Tensor, Tensor)",
)
def _gate_op(a, weight, bias, relu_out=True):
    # A custom op cannot return None: without the ReLU output, an empty tensor that the wrapper drops.
    relu, words = _gate_impl(a, weight, bias, relu_out)
    return (relu if relu_out else a.new_empty(0)), words


@_gate_op.register_fake
def _(a, weight, bias, relu_out=True):
    relu = a.new_empty(a.shape[0], weight.shape[0]) if relu_out else a.new_empty(0)
    return relu, a.new_empty(a.shape[0], words_for(weight.shape[0]), dtype=PATTERN_DTYPE)


@torch.library.custom_op(
    "glai::masked_forward",
    mutates_args=(),
    schema="(Tensor h, Tensor weight, Tensor? bias, Tensor? words, int reduction, Tensor? seed=None, "
    "int layer=0, float p=0.0) -> Tensor",
)
def _masked_forward_op(h, weight, bias, words, reduction, seed=None, layer=0, p=0.0):
    return _masked_forward_impl(h, weight, bias, words, reduction, dropout=_dropout_of(seed, layer, p))


@_masked_forward_op.register_fake
def _(h, weight, bias, words, reduction, seed=None, layer=0, p=0.0):
    return h.new_empty(h.shape[0], weight.shape[0])


@torch.library.custom_op(
    "glai::backward_data",
    mutates_args=(),
    schema="(Tensor g, Tensor weight, Tensor? words, int reduction, Tensor? seed=None, int layer=0, "
    "float p=0.0) -> Tensor",
)
def _backward_data_op(g, weight, words, reduction, seed=None, layer=0, p=0.0):
    return _backward_data_impl(g, weight, words, reduction, dropout=_dropout_of(seed, layer, p))


@_backward_data_op.register_fake
def _(g, weight, words, reduction, seed=None, layer=0, p=0.0):
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
def gate(a, weight, bias, *, relu_out: bool = True, config: dict | None = None, out=None):
    """``relu(a W^T + b)`` and its packed pattern, as :func:`glai_kernels.reference.gate`; with
    ``relu_out=False`` only the pattern is written (the ReLU output is None): the last layer of a structural
    stack feeds no other gate. ``out``: ``(relu [M, N] or None, words int32 [M, ceil(N / 32)])``."""
    if config is None and out is None and launching.use_custom_op(a, weight, bias):
        relu, words = torch.ops.glai.gate(a, weight, bias, bool(relu_out))
        return (relu if relu_out else None), words
    return _gate_impl(a, weight, bias, relu_out, config, out)


def masked_forward(
    h, weight, bias, words, reduction: int, dropout=None, *, config: dict | None = None, out=None
):
    """``p * (h W^T + b)``, as :func:`glai_kernels.reference.masked_forward` (with its ``dropout``, drawn in
    the kernel's epilogue). ``out``: ``[M, N]``."""
    if config is None and out is None and launching.use_custom_op(h, weight, bias, words):
        return torch.ops.glai.masked_forward(h, weight, bias, words, reduction, *(dropout or ()))
    return _masked_forward_impl(h, weight, bias, words, reduction, config, out, dropout)


def backward_data(g, weight, words, reduction: int, dropout=None, *, config: dict | None = None, out=None):
    """``(g W) * p_prev``, as :func:`glai_kernels.reference.backward_data` (with its ``dropout``, the
    forward's mask regenerated in the kernel's epilogue). ``out``: ``[M, K]``."""
    if config is None and out is None and launching.use_custom_op(g, weight, words):
        return torch.ops.glai.backward_data(g, weight, words, reduction, *(dropout or ()))
    return _backward_data_impl(g, weight, words, reduction, config, out, dropout)


def backward_weights(g, h, need_bias: bool, *, config: dict | None = None, out=None):
    """``dW = g^T h`` and ``db = sum_rows g`` (None without bias), as
    :func:`glai_kernels.reference.backward_weights`. ``out``: ``(dW [N, K], db [N] or None)``."""
    if config is None and out is None and launching.use_custom_op(g, h):
        dw, db = torch.ops.glai.backward_weights(g, h, bool(need_bias))
        return dw, (db if need_bias else None)
    return _backward_weights_impl(g, h, need_bias, config, out)
