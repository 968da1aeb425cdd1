"""How a per-layer kernel launch is made from host tensors: operands as pointers or tensor descriptors, the grid, the
memo of checked call signatures, and the guard against an ``out=`` that overlaps an input.

A call's checks (shapes, dtypes, devices, the pattern words, the configuration) depend only on its signature:
the operands' shapes, strides, dtypes and devices, the reduction, where its configuration comes from and the
fp32 matmul precision. ``per_layer_ops`` runs them once per signature and keeps the result, a :class:`Plan`
(in :data:`LAUNCH_PLANS`, keyed by one op's operands as a Python tuple: a per-launch memo, where
``signature.Verdicts`` keys a whole stack call by PyTorch's tensor guards); a
repeated call (every training step) looks its plan up and launches. What a signature cannot fix is checked
each call: the base addresses' 16-byte alignment (tensor descriptors need it) and the overlap of ``out=``.
"""

from __future__ import annotations

import torch

from . import launch_configs, runtime, tuning
from .layout import WORD_BITS
from .signature import remember_bounded
from .tuning import PARAMS

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # a Triton before 3.4: the pointer main loop only
    TensorDescriptor = None
LAUNCH_PLANS: dict = {}
# A Parameter is a plain tensor to a launch: the weights of every training step are Parameters. Any other type
# is a tensor subclass of some tracing mode (fake, functional), which goes through the custom op.
_PLAIN = (torch.Tensor, torch.nn.Parameter)

# The interpreter runs programs one after another: a persistent launch there gets a few programs, so each
# walks several tiles, as on a GPU.
_INTERPRETER_PROGRAMS = 3


class Plan:
    """What a call signature launches: the GEMM sizes, the configuration and where it came from, the kernel's
    constexpr arguments, whether the operands go as tensor descriptors (``tma``), and, once :func:`finish`
    ran, the grid and keyword arguments of a launch with either main loop (a call falls back to the pointer
    loop when its base addresses are misaligned)."""

    __slots__ = ("M", "N", "K", "config", "source", "precision", "constexprs", "tma", "splits", "m_split",
                 "grids", "kwargs", "copy_b")  # fmt: skip

    def __init__(self, M, N, K, config, source, precision):
        self.M, self.N, self.K = M, N, K
        self.config, self.source, self.precision = config, source, precision
        self.constexprs: dict = {}
        self.tma = False
        self.splits, self.m_split = 1, K
        self.copy_b = False


def finish(plan: Plan, device: torch.device) -> Plan:
    """Fill in the plan's grids and launch keywords for both main loops."""
    c = plan.config
    tiles = -(-plan.M // c["BLOCK_M"]) * -(-plan.N // c["BLOCK_N"])
    meta = {k: c[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M")}
    if device.type == "cuda":  # the interpreter takes no compile options
        meta.update(num_warps=c["num_warps"], num_stages=c["num_stages"])
    plan.grids = {False: (tiles, plan.splits), True: (programs(tiles * plan.splits, device),)}
    plan.kwargs = {tma: {**constexprs(plan, tma), **meta} for tma in (False, True)}
    return plan


def signature(op: str, config, extra, *tensors):
    """The memo key of a call, or None when it has none (a non-tensor argument, an unhashable ``config``):
    such a call is checked in full and raises where it is wrong."""
    first = tensors[0]
    if type(first) not in _PLAIN:
        return None
    # fp32 products follow PyTorch's matmul precision setting, which may change between calls.
    precision = runtime.launch_precision(first.dtype) if first.dtype is torch.float32 else None
    key = (op, extra, precision, launch_configs.generation)
    for t in tensors:
        if t is None:
            key += (None,)
        elif type(t) in _PLAIN:
            key += (t.shape, t.stride(), t.dtype, t.device)
        else:
            return None
    if config is not None:
        try:
            items = tuple(sorted(config.items()))
            hash(items)
        except (AttributeError, TypeError):
            return None
        key += (items,)
    return key


def _span(t: torch.Tensor) -> tuple[int, int]:
    """The bytes ``[first, last]`` a tensor's elements occupy."""
    start = t.data_ptr()
    extent = sum((n - 1) * s for n, s in zip(t.shape, t.stride()) if n > 0)
    return start, start + (extent + 1) * t.element_size() - 1


def check_no_overlap(op: str, outs: dict, ins: dict) -> None:
    """ValueError when an output buffer is one of the inputs or its bytes overlap an input's: the kernels read
    the inputs while writing the outputs, so such a call would read results half-written."""
    for oname, o in outs.items():
        if o is None or o.numel() == 0:
            continue
        lo, hi = _span(o)
        for iname, t in ins.items():
            if t is None or not isinstance(t, torch.Tensor) or t.numel() == 0:
                continue
            a, b = _span(t)
            if a <= hi and lo <= b:
                what = "is" if o is t else "overlaps the memory of"
                raise ValueError(f"{op}: {oname} {what} the input {iname}; pass a separate output buffer")


def _describable(t: torch.Tensor) -> bool:
    """A row-major 2-d view whose rows start on 16-byte boundaries (the copy engine's rule) and neither
    repeat nor overlap: a row stride of at least one row (a broadcast operand, e.g. the gradient of
    ``y.sum(0)`` expanded back with strides ``(0, 1)``, or rows that share elements, take the pointer loop: a
    tensor descriptor holds positive strides over distinct elements only)."""
    rows, cols = t.shape
    return (
        t.stride(1) == 1
        and rows > 0
        and cols > 0
        and t.stride(0) >= cols
        and (t.stride(0) * t.element_size()) % 16 == 0
    )


def descriptor_layout(t: torch.Tensor) -> tuple[torch.Tensor, bool] | None:
    """``(stored, transposed)``: the matrix as it lies in memory (``t`` or ``t.t()``, last dimension
    contiguous) and whether that is ``t``'s transpose; None when neither qualifies for a tensor descriptor."""
    if TensorDescriptor is None:
        return None
    if _describable(t):
        return t, False
    if t.dim() == 2 and _describable(t.t()):
        return t.t(), True
    return None


def descriptor(t: torch.Tensor, block: tuple[int, int]):
    """A host tensor descriptor of row-major ``t`` with box ``block``, or None when the base is misaligned."""
    if t.data_ptr() % 16:
        return None
    return TensorDescriptor(t, list(t.shape), list(t.stride()), list(block))


def programs(tiles: int, device: torch.device) -> int:
    """Programs of a persistent launch over ``tiles`` work items: one per multiprocessor at most."""
    if device.type != "cuda":
        return min(tiles, _INTERPRETER_PROGRAMS)
    return min(tiles, runtime.multiprocessor_count(device))


def hopper_or_interpreter(device: torch.device) -> bool:
    """Whether tensor descriptors can be launched on ``device``: sm_90 and up, or the interpreter."""
    if device.type != "cuda":
        return True
    return runtime.device_info(runtime.device_index(device))[0] >= (9, 0)


def launch_plan(
    kernel, plan: Plan, tma: bool, device: torch.device, args: tuple, extra: dict | None = None
) -> None:
    """Launch ``kernel`` as ``plan`` says, with the TMA main loop or not (``extra``: keyword arguments of this
    call, e.g. the dropout seed), on ``device`` (:func:`runtime.launch_on`)."""
    kwargs = plan.kwargs[tma] if extra is None else {**plan.kwargs[tma], **extra}
    runtime.launch_on(device, kernel[plan.grids[tma]], args, kwargs)


def use_custom_op(*tensors) -> bool:
    """Whether a call goes through its ``torch.ops.glai`` custom op: while ``torch.compile`` or ``export``
    traces (the graph then holds one opaque node per launch), or when an operand is a tensor subclass (a fake
    or functional tensor of some tracing mode). A plain eager call (Parameters included) goes straight to the
    launch."""
    if torch.compiler.is_compiling():
        return True
    for t in tensors:
        if t is not None and type(t) not in _PLAIN:
            return True
    return False


# ----------------------------------------------------------------------------- launch policy
def check_launch_config(kernel: str, config: dict) -> dict:
    """A caller's ``config=`` as a launchable dict, or a ValueError naming what is wrong with it: the rules of
    ``tuning.check_tile_config`` (which guards the cache too), plus an optional ``SPLIT_K`` and the gate's
    whole-word tiles."""
    if not isinstance(config, dict) or any(k not in config for k in PARAMS):
        raise ValueError(f"a launch config for {kernel!r} must be a dict with keys {PARAMS}, got {config!r}")
    cfg = tuning.check_tile_config({k: v for k, v in config.items() if k in tuning.KEYS})
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


def choose_config(kernel, M, N, K, dtype, precision, config, device=None) -> tuple[dict, str]:
    """``(configuration, source)`` of a launch: ``config=`` when given, else ``launch_configs``'s answer."""
    if config is not None:
        return check_launch_config(kernel, config), "config="
    found = launch_configs.launch_config(kernel, M, N, K, dtype, precision, device)
    cfg, source = found.config, found.source
    if kernel == "gate" and cfg["BLOCK_N"] % WORD_BITS:
        # A power-of-two BLOCK_N that is no multiple of the word is smaller than it: widen the tile to one
        # word rather than fail on a generic configuration.
        cfg["BLOCK_N"] = WORD_BITS
    return cfg, source


def new_plan(op, M, N, K, dtype, device, config) -> Plan:
    precision = runtime.launch_precision(dtype)
    cfg, source = choose_config(op, M, N, K, dtype, precision, config, device)
    plan = Plan(M, N, K, cfg, source, precision)
    plan.constexprs = {"UPCAST": runtime.kernels_interpreted(), "PRECISION": precision}
    return plan


def remember_plan(key, plan: Plan) -> Plan:
    """Keep ``plan`` for its signature (at most ``signature.MEMO_SIZE``, the oldest forgotten first); plans of
    configurations older than a cache reload are dropped."""
    if key is not None:
        global _generation
        if _generation != launch_configs.generation:
            LAUNCH_PLANS.clear()
            _generation = launch_configs.generation
        remember_bounded(LAUNCH_PLANS, key, plan)
    return plan


_generation = 0


# ----------------------------------------------------------------------------- operands
def wants_k_major(plan: Plan) -> bool:
    """Whether the configuration asks for K-major operands (the defaults and candidates do for TF32 only)."""
    return bool(plan.config["K_MAJOR"])


def k_major(t: torch.Tensor, plan: Plan, probe: bool = False) -> torch.Tensor:
    """Operand ``t``, a 2-d view whose dimension 0 runs along the reduction (``B`` ``[K, N]``, or ``g`` and
    ``h`` of the weight gradient), as is, or as a column-major copy (the same view, K contiguous) when the
    plan asks for K-major operands and ``t`` is not contiguous along K already. ``probe``: an empty meta
    tensor with the copy's layout instead of the copy (to plan with)."""
    if not wants_k_major(plan) or t.stride(0) == 1:
        return t
    # Columns padded to 16 bytes, so the copy can be described to the copy engine whatever the batch.
    align = max(16 // t.element_size(), 1)
    strides = (1, -(-max(t.shape[0], 1) // align) * align)
    if probe:
        return torch.empty_strided(t.shape, strides, dtype=t.dtype, device="meta")
    return torch.empty_strided(t.shape, strides, dtype=t.dtype, device=t.device).copy_(t)


def set_tma(plan: Plan, a, b, a_transposed_ok: bool) -> None:
    """Use the persistent TMA loop when the configuration asks for it and both operands, ``A`` ``[M, K]`` and
    ``B`` ``[K, N]``, lie row-major one way or the other (``A`` only as ``[M, K]`` unless the kernel reads
    it transposed); else the pointer loop. Sets the kernel's layout constexprs ``A_KM`` and ``B_KN``."""
    lay_a, lay_b = descriptor_layout(a), descriptor_layout(b)
    plan.tma = (
        bool(plan.config["TMA"])
        and hopper_or_interpreter(a.device)
        and lay_a is not None
        and lay_b is not None
        and (a_transposed_ok or not lay_a[1])
    )
    plan.constexprs["B_KN"] = bool(plan.tma and not lay_b[1])
    if a_transposed_ok:
        plan.constexprs["A_KM"] = bool(plan.tma and lay_a[1])


def operands(plan: Plan, a, b) -> tuple:
    """``(a, b, tma)``: tensor descriptors of ``A`` and ``B`` for the TMA loop, or ``a`` and ``b`` themselves
    when the plan or this call's base addresses (16-byte alignment) rule it out."""
    if plan.tma:
        c = plan.config
        (a_mem, a_t), (b_mem, b_t) = descriptor_layout(a), descriptor_layout(b)
        da = descriptor(a_mem, (c["BLOCK_K"], c["BLOCK_M"]) if a_t else (c["BLOCK_M"], c["BLOCK_K"]))
        db = descriptor(b_mem, (c["BLOCK_N"], c["BLOCK_K"]) if b_t else (c["BLOCK_K"], c["BLOCK_N"]))
        if da is not None and db is not None:
            return da, db, True
    return a, b, False


def constexprs(plan: Plan, tma: bool) -> dict:
    """The kernel's constexpr arguments for a launch whose main loop is ``tma``: the plan's, with the layout
    flags off when this call fell back to the pointer loop."""
    out = dict(plan.constexprs, TMA=tma)
    if tma != plan.tma:
        for flag in ("A_KM", "B_KN"):
            if flag in out:
                out[flag] = False
    return out
