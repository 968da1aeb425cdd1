"""Compile the fused head kernels for sm_90, sm_80 and sm_86 without a GPU, with their default configurations.

    python tests/_lower_fused.py            # the cases the test runs: each kernel at each arch's widest width
    python tests/_lower_fused.py --sweep    # the chain kernels at padded widths 16 .. 1024: the spill table

Prints one JSON line per case: registers, spill stores/loads and stack frame (``ptxas -v``, through
``_lower_kernels.ptxas_resources``), shared memory, and whether the products reach wgmma (sm_90) or mma.
The kernels take their layers as tuples, which ``_lower_kernels.lower``'s flat signatures cannot describe, so
the signature is built here: pointers and ints marked divisible by 16 and ints equal to 1 made constants,
element by element, as the JIT specialises contiguous operands. Run it without ``TRITON_INTERPRET``.
"""

import json
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from glai_kernels.dropout_launch import fused_constexprs  # noqa: E402
from glai_kernels.fused_config import chunk_for, defaults_for_capability, padded  # noqa: E402
from glai_kernels.kernels.fused_backward import fused_grad_data_kernel, fused_grad_weights_kernel  # noqa: E402
from glai_kernels.kernels.fused_forward import fused_forward_kernel  # noqa: E402
from glai_kernels.layout import WORD_BITS, words_for  # noqa: E402
from glai_kernels.lowering import ptxas_resources  # noqa: E402

BATCH, IN, OUT, DEPTH = 16384, 512, 10, 3  # a head: 512 features in, DEPTH hidden layers, 10 classes


def _arg(value, dtype):
    """Signature type, constant (or None) and divisibility of one scalar argument."""
    if isinstance(value, str):  # a pointer's element type
        return "*" + value, None, True
    if value == 1:
        return "constexpr", 1, False
    return "i32", None, value % 16 == 0


def lower_fused(
    kernel, args: dict, constexprs: dict, capability: int, num_warps: int, num_stages: int
) -> dict:
    signature, consts, attrs = {}, {}, {}
    for i, name in enumerate(kernel.arg_names):
        if name in constexprs:
            signature[name], consts[name] = "constexpr", constexprs[name]
            continue
        value = args[name]
        items = value if isinstance(value, tuple) else (value,)
        types = []
        for j, item in enumerate(items):
            ty, const, div = _arg(item, None)
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


def forward_case(width, dt, prec, cap, mode=0, r=1, depth=DEPTH, dropout=0.0):
    cfg = defaults_for_capability(cap)["chain"]
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


def data_case(width, dt, prec, cap, r=1, depth=DEPTH, dropout=0.0):
    cfg = defaults_for_capability(cap)["chain"]
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


def weights_case(width, dt, prec, cap, splits=8, depth=DEPTH):
    cfg = defaults_for_capability(cap)["weights"]
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


# Shared memory a block may use (the opt-in maximum) per capability: a kernel needing more compiles but cannot
# launch, so the lowering check holds every case to it.
SHARED_LIMIT = {90: 232448, 86: 101376, 80: 166912}
GPUS = ((90, "bf16"), (80, "fp16"), (86, "fp16"))


def _widest(cap: int) -> int:
    return defaults_for_capability(cap)["max_width"]


def cases(sweep: bool = False):
    if sweep:
        out = []
        for width in (16, 32, 64, 128, 256, 512, 1024):
            for cap, dt in GPUS:
                out += [forward_case(width, dt, "tf32", cap), data_case(width, dt, "tf32", cap)]
                out += [weights_case(width, dt, "tf32", cap)] if width == 128 else []
        return out
    top = _widest(90)
    return [
        forward_case(top, "bf16", "tf32", 90),
        forward_case(top, "bf16", "tf32", 90, mode=1),
        forward_case(top, "bf16", "tf32", 90, mode=2, r=1),
        forward_case(128, "bf16", "tf32", 90, mode=2, r=1),  # one chunk: the structure stays in registers
        forward_case(100, "bf16", "tf32", 90, mode=2, r=4, depth=2),
        forward_case(64, "fp32", "tf32", 90, mode=1, depth=1),
        forward_case(_widest(80), "fp16", "tf32", 80),
        forward_case(_widest(86), "fp16", "tf32", 86, mode=2),
        forward_case(top, "bf16", "tf32", 90, mode=2, r=1, dropout=0.1),  # Philox in every hidden epilogue
        forward_case(_widest(86), "fp16", "tf32", 86, mode=1, dropout=0.1),
        data_case(top, "bf16", "tf32", 90),
        data_case(33, "bf16", "tf32", 90, r=3, depth=2),
        data_case(_widest(80), "fp16", "tf32", 80),
        data_case(_widest(86), "fp16", "tf32", 86),
        data_case(top, "bf16", "tf32", 90, dropout=0.1),
        weights_case(128, "bf16", "tf32", 90),
        weights_case(128, "bf16", "tf32", 90, splits=1),
        weights_case(128, "fp16", "tf32", 80),
    ]


def main(argv) -> int:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: interpreted kernels cannot be compiled", file=sys.stderr)
        return 2
    failed = 0
    for name, fn in cases(sweep="--sweep" in argv):
        start = time.perf_counter()
        try:
            res = {"case": name, "ok": True, **fn()}
        except Exception as exc:
            failed += 1
            res = {
                "case": name,
                "ok": False,
                "error": f"{type(exc).__name__}: {exc}",
                "trace": traceback.format_exc(),
            }
        res["seconds"] = round(time.perf_counter() - start, 2)
        if res["ok"]:
            cap = int(name.rsplit("sm", 1)[1])
            res["fits"] = (
                res["shared"] <= SHARED_LIMIT[cap] and res["spill_stores"] == res["spill_loads"] == 0
            )
        print(json.dumps(res), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
