"""Compile the fused head kernels for a GPU target without a GPU, at a given width and launch configuration.

The three fused kernels (forward, data-gradient chain, weight gradient) take their layers as tuples, which
:func:`glai_kernels.tools.lowering.lower`'s flat signatures cannot describe, so the signature is built here: pointers
and ints marked divisible by 16 and ints equal to 1 made constants, element by element, as the JIT specialises
contiguous operands. The stack lowered is a head: ``IN`` features in, ``depth`` hidden layers of one width,
``OUT`` classes, a batch of ``BATCH`` rows (the batch and the outer sizes are runtime ints: they change no code).

Each ``*_case`` returns ``(name, thunk)``; the thunk compiles and returns the machine-code figures
(``lowering.ptxas_resources`` plus shared memory and whether the products reach wgmma / mma).
Needs Triton with its NVIDIA backend and no ``TRITON_INTERPRET``.
"""

from __future__ import annotations

from ..dropout_launch import fused_constexprs
from ..fused_config import chunk_for, padded
from ..layout import WORD_BITS, words_for
from .lowering import ptxas_resources

BATCH, IN, OUT, DEPTH = 16384, 512, 10, 3  # a head: 512 features in, DEPTH hidden layers, 10 classes
# Triton's element type and tl.dot's input_precision of each dot precision of the dispatch table.
TRITON_TYPES = {"fp16": ("fp16", "tf32"), "bf16": ("bf16", "tf32"), "fp32-tf32": ("fp32", "tf32"),
                "fp32-ieee": ("fp32", "ieee")}  # fmt: skip


def _arg(value):
    """Signature type, constant (or None) and divisibility of one scalar argument."""
    if isinstance(value, str):  # a pointer's element type
        return "*" + value, None, True
    if value == 1:
        return "constexpr", 1, False
    return "i32", None, value % 16 == 0


def lower_fused(
    kernel, args: dict, constexprs: dict, capability: int, num_warps: int, num_stages: int
) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature, consts, attrs = {}, {}, {}
    for i, name in enumerate(kernel.arg_names):
        if name in constexprs:
            signature[name], consts[name] = "constexpr", constexprs[name]
            continue
        value = args[name]
        items = value if isinstance(value, tuple) else (value,)
        types = []
        for j, item in enumerate(items):
            ty, const, div = _arg(item)
            path = (i, j) if isinstance(value, tuple) else (i,)
            types.append(ty)
            if const is not None:
                consts[path] = const
            if div:
                attrs[path] = [["tt.divisibility", 16]]
        signature[name] = tuple(types) if isinstance(value, tuple) else types[0]
    compiled = triton.compile(
        ASTSource(kernel, signature, constexprs=consts, attrs=attrs),
        target=GPUTarget("cuda", capability, 32),
        options={"num_warps": num_warps, "num_stages": num_stages},
    )
    ptx = compiled.asm["ptx"]
    return {
        "cubin_bytes": len(compiled.asm.get("cubin", b"")),
        "wgmma": "wgmma" in ptx,
        "mma": "mma.sync" in ptx,
        "shared": compiled.metadata.shared,
        **ptxas_resources(ptx, capability),
    }


def _mats(dt, shapes):
    """Pointer, row-stride and column-stride tuples of contiguous matrices of ``shapes``."""
    return tuple(dt for _ in shapes), tuple(s[1] for s in shapes), tuple(1 for _ in shapes)


def forward_case(width, dt, prec, cap, cfg, mode=0, r=1, depth=DEPTH, dropout=0.0):
    """The forward kernel in ``mode`` (0 given patterns, 1 structural, 2 from the structure) at ``cfg``, with
    dropout at rate ``dropout`` on every hidden layer (0: the code without it)."""
    from ..kernels.fused_forward import fused_forward_kernel

    hidden = (width,) * depth
    s_n = tuple(n // r for n in hidden)
    dims = (IN, *hidden, OUT)
    w_shapes = [(b, a) for a, b in zip(dims[:-1], dims[1:])]
    s_dims = (IN, *s_n)
    s_shapes = [(b, a) for a, b in zip(s_dims[:-1], s_dims[1:])]
    args = dict(
        x_ptr=dt, y_ptr=dt, M=BATCH, IN=IN, OUT=OUT, stride_xm=IN, stride_xk=1, stride_ym=OUT, stride_yn=1
    )
    args.update(zip(("w_ptrs", "w_sn", "w_sk"), _mats(dt, w_shapes)))
    args.update(b_ptrs=tuple(dt for _ in w_shapes), b_s=tuple(1 for _ in w_shapes))
    args.update(zip(("h_ptrs", "h_sm", "h_sn"), _mats(dt, [(BATCH, n) for n in hidden])))
    args.update(zip(("p_ptrs", "p_sm", "p_sw"), _mats("i32", [(BATCH, words_for(n)) for n in s_n])))
    args.update(zip(("sw_ptrs", "sw_sn", "sw_sk"), _mats(dt, s_shapes)))
    args.update(sb_ptrs=tuple(dt for _ in s_shapes), sb_s=tuple(1 for _ in s_shapes))
    args.update(zip(("st_ptrs", "st_sm", "st_sn"), _mats(dt, [(BATCH, n) for n in s_n])))
    args.update(seed_ptr="i64")
    consts = dict(
        HIDDEN=hidden, PAD=tuple(padded(n) for n in hidden), HAS_B=(True,) * (depth + 1), S_HIDDEN=s_n,
        S_PAD=tuple(padded(n) for n in s_n), S_HAS_B=(True,) * depth, MODE=mode, REDUCTION=1 if mode == 1 else r,
        BLOCK_M=cfg["BLOCK_M"], BLOCK_K=cfg["BLOCK_K"], BLOCK_N=cfg["BLOCK_N"],
        CHUNK=chunk_for(cfg, tuple(padded(n) for n in hidden + s_n)), WORD_BITS=WORD_BITS, UPCAST=False,
        PRECISION=prec, **fused_constexprs((dropout,) * depth if dropout else None, depth),
    )  # fmt: skip
    name = f"forward mode{mode} r{r} w{width}{f' dropout{dropout}' if dropout else ''} {dt} {prec} sm{cap}"
    return name, lambda: lower_fused(
        fused_forward_kernel, args, consts, cap, cfg["num_warps"], cfg["num_stages"]
    )


def data_case(width, dt, prec, cap, cfg, r=1, depth=DEPTH, dropout=0.0):
    """The data-gradient chain (down to ``dx``) at ``cfg``, with dropout as :func:`forward_case`."""
    from ..kernels.fused_backward import fused_grad_data_kernel

    hidden = (width,) * depth
    dims = (IN, *hidden, OUT)
    w_shapes = [(b, a) for a, b in zip(dims[:-1], dims[1:])]
    args = dict(dy_ptr=dt, dx_ptr=dt, M=BATCH, IN=IN, OUT=OUT, stride_dym=OUT, stride_dyn=1, stride_dxm=IN,
                stride_dxk=1)  # fmt: skip
    args.update(zip(("w_ptrs", "w_sn", "w_sk"), _mats(dt, w_shapes)))
    args.update(zip(("p_ptrs", "p_sm", "p_sw"), _mats("i32", [(BATCH, words_for(n // r)) for n in hidden])))
    args.update(zip(("g_ptrs", "g_sm", "g_sn"), _mats(dt, [(BATCH, n) for n in hidden])))
    args.update(seed_ptr="i64")
    consts = dict(
        HIDDEN=hidden, PAD=tuple(padded(n) for n in hidden), LOWEST=0, NEED_DX=True, REDUCTION=r,
        BLOCK_M=cfg["BLOCK_M"], BLOCK_K=cfg["BLOCK_K"], BLOCK_N=cfg["BLOCK_N"],
        CHUNK=chunk_for(cfg, tuple(padded(n) for n in hidden)), WORD_BITS=WORD_BITS, UPCAST=False,
        PRECISION=prec, **fused_constexprs((dropout,) * depth if dropout else None, depth),
    )  # fmt: skip
    name = f"grad_data r{r} w{width}{f' dropout{dropout}' if dropout else ''} {dt} {prec} sm{cap}"
    return name, lambda: lower_fused(
        fused_grad_data_kernel, args, consts, cap, cfg["num_warps"], cfg["num_stages"]
    )


def weights_case(width, dt, prec, cap, cfg, splits=8, depth=DEPTH):
    """The grouped weight gradient of every layer at ``cfg`` (``splits`` batch splits)."""
    from ..kernels.fused_backward import fused_grad_weights_kernel

    hidden = (width,) * depth
    dims = (IN, *hidden, OUT)
    Ns, Ks = dims[1:], dims[:-1]
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
    tiles_k = tuple(-(-k // bn) for k in Ks)
    start = [0]
    for n, t in zip(Ns, tiles_k):
        start.append(start[-1] + -(-n // bm) * t)
    args = {}
    args.update(zip(("g_ptrs", "g_sm", "g_sn"), _mats(dt, [(BATCH, n) for n in Ns])))
    args.update(zip(("a_ptrs", "a_sm", "a_sk"), _mats(dt, [(BATCH, k) for k in Ks])))
    args.update(zip(("dw_ptrs", "dw_sn", "dw_sk"), _mats(dt, list(zip(Ns, Ks)))))
    args.update(db_ptrs=tuple(dt for _ in Ns), db_s=tuple(1 for _ in Ns), Ns=Ns, Ks=Ks)
    offs = [0]
    for n, k in zip(Ns, Ks):
        offs += [offs[-1] + n * k, offs[-1] + n * k + n]
    args.update(ws_dw=tuple(offs[0:-1:2]), ws_db=tuple(offs[1::2]), M=BATCH, M_SPLIT=BATCH // splits,
                ws_ptr="fp32", ws_split=offs[-1], cnt_ptr="i32")  # fmt: skip
    consts = dict(
        TILE_START=tuple(start), TILES_K=tiles_k, HAS_B=(True,) * len(Ns), SPLITS=splits, BLOCK_M=bm,
        BLOCK_N=bn, BLOCK_K=cfg["BLOCK_K"], UPCAST=False, PRECISION=prec,
    )  # fmt: skip
    name = f"grad_weights splits{splits} w{width} {dt} {prec} sm{cap}"
    return name, lambda: lower_fused(
        fused_grad_weights_kernel, args, consts, cap, cfg["num_warps"], cfg["num_stages"]
    )
