"""Compile every kernel for a GPU target without a GPU, as a GPU run would.

    python tests/_lower_kernels.py

Triton lowers a kernel to TTIR, TTGIR, LLVM IR, PTX and a cubin (with the ``ptxas`` its wheel ships) without a
driver, given the target. The interpreter tests run the kernels' Python semantics; this runs the GPU compiler
over them, so an API or a construct the compiler rejects (a layout conversion it cannot do, a constexpr it
cannot fold, a Triton version without some feature) fails on a CPU-only machine, too.

Each case also reports what the machine code costs: registers per thread, spill stores and loads, stack frame
(from ``ptxas -v`` run again on the kernel's PTX, as Triton runs it), shared memory, and whether the products
reach ``wgmma`` (Hopper's warpgroup MMA) and the loads the bulk tensor copy engine (TMA).

Signatures follow what the JIT specialises for contiguous operands: strides equal to 1 become constants, other
integers and pointers are marked divisible by 16. Prints one JSON line per case; exits 1 if any failed.
Must run without ``TRITON_INTERPRET`` (the kernels would be interpreter objects, not compilable ones).
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from glai_kernels.kernels.gate import gate_kernel  # noqa: E402
from glai_kernels.kernels.masked_matmul import masked_matmul_kernel  # noqa: E402
from glai_kernels.kernels.weight_grad import weight_grad_kernel  # noqa: E402
from glai_kernels.layout import WORD_BITS  # noqa: E402

BATCH, N_IN, N_OUT = 8192, 4096, 4096  # a layer N_IN -> N_OUT


def tile(bm=128, bn=128, bk=64, group=8):
    return {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group}


def lower(kernel, dtype, pointers, ints, constexprs, capability=90, num_warps=8, num_stages=3):
    """Compile ``kernel`` for ``sm_<capability>``; pointers map to an element type or None (absent)."""
    signature, consts = {}, {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name], consts[name] = "constexpr", constexprs[name]
        elif name in pointers:
            if pointers[name] is None:
                signature[name], consts[name] = "constexpr", None
            else:
                signature[name] = "*" + pointers[name]
        elif ints[name] == 1:
            signature[name], consts[name] = "constexpr", 1
        else:
            signature[name] = "i32"
    attrs = {
        (kernel.arg_names.index(n),): [["tt.divisibility", 16]]
        for n, t in signature.items()
        if t.startswith("*") or t == "i32"
    }
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
        "tma": "cp.async.bulk.tensor" in ptx,
        "shared": compiled.metadata.shared,
        **ptxas_resources(ptx, capability),
    }


_PTXAS_FIELDS = {
    "registers": r"Used (\d+) registers",
    "spill_stores": r"(\d+) bytes spill stores",
    "spill_loads": r"(\d+) bytes spill loads",
    "stack_frame": r"(\d+) bytes stack frame",
}


def ptxas_resources(ptx: str, capability: int) -> dict:
    """Registers, spills and stack frame of the kernel in ``ptx``, read from ``ptxas -v``: the report Triton's own
    compile prints only on request. The ptxas and the ``sm_XXa`` name are the ones Triton used for the cubin."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        cmd = [
            get_ptxas(capability).path,
            "-v",
            f"--gpu-name={sm_arch_from_capability(capability)}",
            str(src),
        ]
        log = subprocess.run(
            cmd + ["-o", str(src.with_suffix(".o"))], capture_output=True, text=True, check=True
        )
    text = log.stderr + log.stdout
    found = {}
    for key, pattern in _PTXAS_FIELDS.items():
        match = re.search(pattern, text)
        if match is None:
            raise RuntimeError(f"ptxas -v printed no {key!r} figure:\n{text}")
        found[key] = int(match.group(1))
    return found


def cases():
    def gate(dt, prec, cap=90):
        p = dict(a_ptr=dt, w_ptr=dt, bias_ptr=dt, out_ptr=dt, words_ptr="i32")
        ints = dict(M=BATCH, N=N_OUT, K=N_IN, stride_am=N_IN, stride_ak=1, stride_wn=N_IN, stride_wk=1,
                    stride_bias=1, stride_om=N_OUT, stride_on=1, stride_pm=N_OUT // WORD_BITS,
                    stride_pw=1)  # fmt: skip
        c = dict(HAS_BIAS=True, WORD_BITS=WORD_BITS, UPCAST=False, PRECISION=prec, **tile())
        return f"gate {dt} {prec} sm{cap}", lambda: lower(gate_kernel, dt, p, ints, c, capability=cap)

    def masked(dt, prec, r, bn=128, gated=True, backward=False, cap=90):
        p = dict(
            a_ptr=dt,
            b_ptr=dt,
            bias_ptr=None if backward else dt,
            words_ptr="i32" if gated else None,
            out_ptr=dt,
        )
        # Forward: B = W^T read in place (stride_bk = 1); backward data: B = W (stride_bn = 1).
        bk, bnn = (N_OUT, 1) if backward else (1, N_IN)
        ints = dict(M=BATCH, N=N_OUT, K=N_IN, stride_am=N_IN, stride_ak=1, stride_bk=bk, stride_bn=bnn,
                    stride_bias=1, stride_pm=N_OUT // r // WORD_BITS, stride_pw=1, stride_om=N_OUT,
                    stride_on=1)  # fmt: skip
        c = dict(HAS_BIAS=not backward, HAS_GATE=gated, REDUCTION=r, WORD_BITS=WORD_BITS, UPCAST=False,
                 PRECISION=prec, **tile(bn=bn))  # fmt: skip
        what = ("backward_data" if backward else "masked_forward") + ("" if gated else " ungated")
        return f"{what} {dt} {prec} r{r} BN{bn} sm{cap}", lambda: lower(
            masked_matmul_kernel, dt, p, ints, c, cap
        )

    def weights(dt, prec, bias, split=False):
        # Split over the batch: fp32 partials into a [S, N, K] workspace; otherwise dW itself, in its dtype.
        out = "fp32" if split else dt
        p = dict(g_ptr=dt, h_ptr=dt, dw_ptr=out, db_ptr=out if bias else None)
        ints = dict(N=N_OUT, K=N_IN, M=BATCH, M_SPLIT=BATCH // 4 if split else BATCH, stride_gm=N_OUT,
                    stride_gn=1, stride_hm=N_IN, stride_hk=1, stride_dws=N_OUT * N_IN if split else 0,
                    stride_dwn=N_IN, stride_dwk=1, stride_dbs=N_OUT if split else 0, stride_db=1)  # fmt: skip
        c = dict(HAS_BIAS=bias, UPCAST=False, PRECISION=prec, **tile())
        name = f"backward_weights {dt} {prec} bias={bias} split={split} sm90"
        return name, lambda: lower(weight_grad_kernel, dt, p, ints, c)

    return [
        gate("bf16", "tf32"),
        gate("fp16", "tf32", cap=80),
        masked("bf16", "tf32", 1),  # whole words per tile
        masked("bf16", "tf32", 4, bn=64),  # tile inside one word
        masked("bf16", "tf32", 3),  # per-element gather
        masked("bf16", "tf32", 1, gated=False),
        masked("bf16", "tf32", 2, backward=True),
        masked("fp16", "tf32", 2, cap=80),
        masked("fp32", "ieee", 1),
        masked("fp32", "tf32", 1),
        weights("bf16", "tf32", True),
        weights("bf16", "tf32", False),
        weights("bf16", "tf32", True, split=True),
        weights("fp32", "tf32", True),
    ]


def main() -> int:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: interpreted kernels cannot be compiled", file=sys.stderr)
        return 2
    failed = 0
    for name, fn in cases():
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
        print(json.dumps(res), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
