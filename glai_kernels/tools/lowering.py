"""Compile a kernel for a GPU target without a GPU, and read what its machine code costs.

Triton lowers a kernel to TTIR, TTGIR, LLVM IR, PTX and a cubin (with the ``ptxas`` its wheel ships) given only
the target, no driver. :func:`lower` compiles one kernel at one launch configuration for a layer of given sizes,
with the signature the JIT would specialise for contiguous operands (strides of 1 become constants, sizes that
are multiples of 16 are marked so), and reports registers per thread, spill stores and loads and stack frame
(``ptxas -v`` run again on the PTX, as Triton runs it), shared memory, and whether the products reach ``wgmma``
(Hopper's warpgroup MMA) and the loads the bulk tensor copy engine (TMA), plus how many 16-byte and 4-byte
asynchronous copy instructions (``cp.async``) the PTX holds: 4-byte ones are loads that could not be vectorised.

The tuner prunes candidates that this refuses before timing anything (:func:`refused`, by :func:`refusal`, the
criterion the lowering tests and the dispatch table's evidence use too), and
``tests/_lower_kernels.py`` reports every default (and, on request, every candidate). Needs Triton with its
NVIDIA backend; must run without ``TRITON_INTERPRET`` (interpreted kernels cannot be compiled).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

from ..layout import WORD_BITS, words_for

_TRITON_DTYPES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "tf32": "fp32"}
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


def _args(kernel: str, M: int, N: int, K: int, dt: str, precision: str, c: dict, v: dict) -> tuple:
    """``(jit function, pointer element types, ints, constexprs)`` of a launch as ``per_layer_ops`` makes it for a
    contiguous layer, ``M x N`` the output and ``K`` the reduction (``costs.gemm_dims``)."""
    from ..dropout_launch import constexprs as dropout_constexprs
    from ..kernels.gate import gate_kernel
    from ..kernels.masked_matmul import masked_matmul_kernel
    from ..kernels.weight_grad import weight_grad_kernel

    tile = {k: c[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M")}
    common = dict(UPCAST=False, PRECISION=precision, TMA=bool(c["TMA"]), **tile)
    r = v.get("reduction", 1)
    if kernel == "gate":
        p = dict(a_ptr=dt, w_ptr=dt, bias_ptr=dt, out_ptr=dt, words_ptr="i32")
        ints = dict(M=M, N=N, K=K, stride_am=K, stride_ak=1, stride_wn=K, stride_wk=1, stride_bias=1,
                    stride_om=N, stride_on=1, stride_pm=words_for(N), stride_pw=1)  # fmt: skip
        relu_out = v.get("relu_out", True)
        if not relu_out:
            p["out_ptr"] = None
        const = dict(HAS_BIAS=True, RELU_OUT=relu_out, WORD_BITS=WORD_BITS, **common)
        descs = {"a_ptr": ("BLOCK_M", "BLOCK_K"), "w_ptr": ("BLOCK_N", "BLOCK_K")}
        return gate_kernel, p, ints, const, descs
    if kernel in ("masked_forward", "backward_data"):
        backward = kernel == "backward_data"
        gated = v.get("gated", True)
        drop = v.get("dropout", 0.0)
        p = dict(a_ptr=dt, b_ptr=dt, bias_ptr=None if backward else dt, words_ptr="i32" if gated else None,
                 out_ptr=dt, seed_ptr="i64" if drop else None)  # fmt: skip
        # Forward: B = W^T read in place ([N, K], K contiguous). Backward data: B = W, [K, N] with N contiguous,
        # or (K_MAJOR) a column-major copy of W whose K is contiguous.
        b_kn = backward and not c["K_MAJOR"]
        bk, bn = (N, 1) if b_kn else (1, K)
        ints = dict(M=M, N=N, K=K, stride_am=K, stride_ak=1, stride_bk=bk, stride_bn=bn, stride_bias=1,
                    stride_pm=words_for(N // r), stride_pw=1, stride_om=N, stride_on=1, drop_layer=0)  # fmt: skip
        const = dict(
            HAS_BIAS=not backward,
            HAS_GATE=gated,
            REDUCTION=r,
            WORD_BITS=WORD_BITS,
            B_KN=b_kn,
            **common,
            **dropout_constexprs(drop),
        )
        descs = {
            "a_ptr": ("BLOCK_M", "BLOCK_K"),
            "b_ptr": ("BLOCK_K", "BLOCK_N") if b_kn else ("BLOCK_N", "BLOCK_K"),
        }
        return masked_matmul_kernel, p, ints, const, descs
    if kernel == "backward_weights":
        # dW [M, N] = g^T h over a batch of K rows (the kernel's own names: N, K, M).
        bias, split = v.get("bias", True), v.get("split", False)
        out = "fp32" if split else dt
        p = dict(g_ptr=dt, h_ptr=dt, dw_ptr=out, db_ptr=out if bias else None)
        k_major = bool(c["K_MAJOR"])
        # g [batch, M] and h [batch, N] are row-major; K_MAJOR: column-major copies (the batch contiguous).
        gm, gn = (1, K) if k_major else (M, 1)
        hm, hk = (1, K) if k_major else (N, 1)
        ints = dict(N=M, K=N, M=K, M_SPLIT=K // 4 if split else K, stride_gm=gm, stride_gn=gn, stride_hm=hm,
                    stride_hk=hk, stride_dws=M * N if split else 0, stride_dwn=N, stride_dwk=1,
                    stride_dbs=M if split else 0, stride_db=1)  # fmt: skip
        const = dict(HAS_BIAS=bias, A_KM=not k_major, B_KN=not k_major, **common)
        descs = {
            "g_ptr": ("BLOCK_M", "BLOCK_K") if k_major else ("BLOCK_K", "BLOCK_M"),
            "h_ptr": ("BLOCK_N", "BLOCK_K") if k_major else ("BLOCK_K", "BLOCK_N"),
        }
        return weight_grad_kernel, p, ints, const, descs
    raise ValueError(f"unknown kernel {kernel!r}")


def lower(kernel: str, M: int, N: int, K: int, key: str, c: dict, capability: int = 90, **variant) -> dict:
    """Compile ``kernel`` at configuration ``c`` for ``sm_<capability>`` on a GEMM ``M x N x K`` with operands of
    dtype key ``key`` (``tuning_cache.DTYPE_KEYS``); returns the machine-code figures. ``variant``: ``reduction``,
    ``gated``, ``relu_out``, ``bias``, ``split``, ``dropout`` (per kernel, as ``_args`` reads them)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    dt = _TRITON_DTYPES[key]
    precision = "tf32" if key != "float32" else "ieee"
    fn, pointers, ints, constexprs, descs = _args(kernel, M, N, K, dt, precision, c, variant)
    signature, consts = {}, {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name], consts[name] = "constexpr", constexprs[name]
        elif name in pointers:
            if pointers[name] is None:
                signature[name], consts[name] = "constexpr", None
            elif c["TMA"] and name in descs:
                block = ", ".join(str(c[d]) for d in descs[name])
                signature[name] = f"tensordesc<{pointers[name]}[{block}]>"
            else:
                signature[name] = "*" + pointers[name]
        elif ints[name] == 1:
            signature[name], consts[name] = "constexpr", 1
        else:
            signature[name] = "i32"
    attrs = {
        (fn.arg_names.index(n),): [["tt.divisibility", 16]]
        for n, t in signature.items()
        if t.startswith("*") or (t == "i32" and ints[n] % 16 == 0)
    }
    compiled = triton.compile(
        ASTSource(fn, signature, constexprs=consts, attrs=attrs),
        target=GPUTarget("cuda", capability, 32),
        options={"num_warps": c["num_warps"], "num_stages": c["num_stages"]},
    )
    ptx = compiled.asm["ptx"]
    return {
        "wgmma": "wgmma" in ptx,
        "mma": "mma.sync" in ptx,
        "tma": "cp.async.bulk.tensor" in ptx,
        "cp16": len(re.findall(r"cp\.async\.c[ag]\.shared\.global \[[^]]*\], \[[^]]*\], 0x10\b", ptx)),
        "cp4": len(re.findall(r"cp\.async\.c[ag]\.shared\.global \[[^]]*\], \[[^]]*\], 0x4\b", ptx)),
        "shared": compiled.metadata.shared,
        "cubin_bytes": len(compiled.asm.get("cubin", b"")),
        **ptxas_resources(ptx, capability),
    }


# Shared memory a block may use (the opt-in maximum) per capability: a kernel needing more compiles but cannot
# launch. A device takes the newest key not above its capability.
SHARED_LIMIT = {80: 166912, 86: 101376, 90: 232448}
MAX_REGISTERS = 255


def shared_limit(capability: int) -> int:
    keys = [k for k in sorted(SHARED_LIMIT) if k <= capability]
    return SHARED_LIMIT[keys[-1] if keys else min(SHARED_LIMIT)]


def refusal(figures: dict, capability: int) -> str | None:
    """Why a kernel lowered for ``sm_<capability>`` with these figures (:func:`lower`'s) may not be dispatched,
    or None: the one criterion of the dispatch table's evidence, the lowering tests and the tuner. A spill moves
    registers through local memory on every use; more shared memory than the device has cannot launch."""
    if figures["spill_stores"] or figures["spill_loads"]:
        return f"spills {figures['spill_stores']} B stores / {figures['spill_loads']} B loads"
    if figures["registers"] > MAX_REGISTERS:
        return f"needs {figures['registers']} registers a thread, more than {MAX_REGISTERS}"
    if "shared" in figures and figures["shared"] > shared_limit(capability):
        return f"needs {figures['shared']} B of shared memory, sm_{capability} has {shared_limit(capability)}"
    return None


_spill_memo: dict[tuple, int] = {}


def refused(
    kernel: str, key: str, c: dict, capability: int, shape: tuple[int, int, int] = (8192, 4096, 4096)
) -> str | None:
    """:func:`refusal` of ``kernel`` at configuration ``c`` compiled for ``sm_<capability>`` (memoised per
    process); a candidate that does not compile raises as its launch would."""
    memo_key = (kernel, key, tuple(sorted(c.items())), capability, shape)
    if memo_key not in _spill_memo:
        variant = {"reduction": 1} if kernel in ("masked_forward", "backward_data") else {}
        _spill_memo[memo_key] = refusal(lower(kernel, *shape, key, c, capability, **variant), capability)
    return _spill_memo[memo_key]
