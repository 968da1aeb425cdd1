"""Compile every kernel for GPU targets without a GPU, as a GPU run would, and report what the code costs.

    python tests/_lower_kernels.py                    every default (sm_90 and sm_80) and the special cases
    python tests/_lower_kernels.py --all-candidates   also every candidate of the search space (minutes)
    python tests/_lower_kernels.py --table            a table instead of JSON lines

Triton lowers a kernel to TTIR, TTGIR, LLVM IR, PTX and a cubin without a driver, given the target
(``glai_kernels.tools.lowering``). The interpreter tests run the kernels' Python semantics; this runs the GPU compiler
over them, so an API or a construct the compiler rejects (a layout conversion it cannot do, a constexpr it
cannot fold, a Triton version without some feature) fails on a CPU-only machine, too. Each case reports registers
per thread, spill stores and loads and stack frame (``ptxas -v``), shared memory, whether the products reach
``wgmma`` (Hopper) or ``mma.sync`` (Ampere), whether the loads use the bulk tensor copy engine (TMA), and how
many 16-byte and 4-byte ``cp.async`` instructions the PTX holds.

Cases: the default configuration of each kernel and dtype key (bfloat16, tf32, float32) for sm_90 and sm_80 at
a layer 4096 -> 4096 with a batch of 8192 (on sm_90 also the same tile with the pointer main loop, which a call
with misaligned operands falls back to), plus the paths a default does not reach at that shape (non-power-of-two
reduction, a tile inside one word, no gate, the gate without its ReLU output, a split batch, a small output, the
narrow output layer, TF32 backward kernels without K-major copies). Runs cases in parallel processes; prints one
JSON line per case; exits 1 if any failed. Must run without ``TRITON_INTERPRET``.
"""

import argparse
import json
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from glai_kernels import costs, tuning  # noqa: E402
from glai_kernels.launch_configs import descriptors_available  # noqa: E402
from glai_kernels.tools import lowering  # noqa: E402

BATCH, WIDTH = 8192, 4096
KEYS = ("bfloat16", "tf32", "float32")
ARCHS = {90: (9, 0), 80: (8, 0)}


def _variant(kernel: str) -> dict:
    return {"reduction": 1} if kernel in ("masked_forward", "backward_data") else {}


def cases(all_candidates: bool = False) -> list[dict]:
    tma = descriptors_available()
    out = []

    def add(kind, kernel, key, arch, c, shape=None, **variant):
        M, N, K = shape or costs.gemm_dims(kernel, BATCH, WIDTH, WIDTH)
        v = {**_variant(kernel), **variant}
        label = " ".join(f"{k}={x}" for k, x in variant.items())
        name = f"{kind} {kernel} {key} sm{arch} {M}x{N}x{K} {tuning.describe(c)} {label}".strip()
        out.append(
            dict(case=name, kind=kind, kernel=kernel, key=key, arch=arch, shape=[M, N, K], config=c, **v)
        )

    for arch, capability in ARCHS.items():
        for kernel in tuning.KERNELS:
            for key in KEYS:
                M, N, K = costs.gemm_dims(kernel, BATCH, WIDTH, WIDTH)
                c = tuning.default_config(kernel, M, N, K, key, capability, tma)
                add("default", kernel, key, arch, c)
                if c["TMA"]:
                    add("fallback", kernel, key, arch, dict(c, TMA=0))
    h90 = (9, 0)

    def d(kernel, key, shape, arch=90):
        return tuning.default_config(kernel, *shape, key, ARCHS[arch], tma)

    big = costs.gemm_dims("masked_forward", BATCH, WIDTH, WIDTH)
    add("case", "masked_forward", "bfloat16", 90, d("masked_forward", "bfloat16", big), reduction=3)
    add(
        "case",
        "masked_forward",
        "bfloat16",
        90,
        dict(d("masked_forward", "bfloat16", big), TMA=0),
        reduction=3,
    )
    add("case", "masked_forward", "bfloat16", 90, tuning.cfg(128, 64, 64, 4, 3), reduction=4)
    add("case", "masked_forward", "bfloat16", 90, d("masked_forward", "bfloat16", big), gated=False)
    add("case", "backward_data", "bfloat16", 90, d("backward_data", "bfloat16", big), reduction=2)
    add("case", "gate", "bfloat16", 90, d("gate", "bfloat16", big), relu_out=False)
    add("case", "gate", "float16", 80, d("gate", "float16", big, 80))
    narrow = costs.gemm_dims("backward_weights", BATCH, WIDTH, 10)  # dW of the output layer: split batch
    add(
        "case",
        "backward_weights",
        "bfloat16",
        90,
        d("backward_weights", "bfloat16", narrow),
        narrow,
        split=True,
    )
    small = costs.gemm_dims("masked_forward", 256, 64, 64)
    add("case", "masked_forward", "bfloat16", 90, d("masked_forward", "bfloat16", small), small)
    out_layer = costs.gemm_dims("masked_forward", BATCH, WIDTH, 10)
    add(
        "case",
        "masked_forward",
        "bfloat16",
        90,
        d("masked_forward", "bfloat16", out_layer),
        out_layer,
        gated=False,
    )
    add("case", "masked_forward", "tf32", 90, d("masked_forward", "tf32", out_layer), out_layer, gated=False)
    for (
        kernel
    ) in tuning.K_MAJOR_KERNELS:  # what K-major copies save: the same tile reading the operands in place
        shape = costs.gemm_dims(kernel, BATCH, WIDTH, WIDTH)
        add("case", kernel, "tf32", 90, dict(d(kernel, "tf32", shape), K_MAJOR=0, TMA=0), shape)
    if all_candidates:
        for arch, capability in ARCHS.items():
            for kernel in tuning.KERNELS:
                for key in KEYS:
                    for c in tuning.candidates(kernel, key, capability, tma and capability >= h90):
                        add("candidate", kernel, key, arch, c)
    return out


def run(case: dict) -> dict:
    start = time.perf_counter()
    keys = ("kind", "kernel", "key", "arch", "shape", "config")
    res = {"case": case["case"], **{k: case[k] for k in keys}, "config": tuning.describe(case["config"])}
    variant = {k: v for k, v in case.items() if k not in keys + ("case",)}
    try:
        res.update(ok=True, **lowering.lower(case["kernel"], *case["shape"], case["key"], case["config"],
                                             case["arch"], **variant))  # fmt: skip
    except Exception as exc:
        res.update(
            ok=False, error=f"{type(exc).__name__}: {exc}"[:2000], trace=traceback.format_exc()[-4000:]
        )
    res["seconds"] = round(time.perf_counter() - start, 2)
    return res


def table(rows: list[dict]) -> str:
    cols = ("registers", "spill_stores", "stack_frame", "shared", "wgmma", "mma", "tma", "cp16", "cp4")
    lines = [f"{'case':112s} " + " ".join(f"{c[:6]:>6s}" for c in cols)]
    for r in rows:
        if not r["ok"]:
            lines.append(f"{r['case']:112s} FAILED {r['error'][:80]}")
            continue
        cells = " ".join(f"{(int(r[c]) if isinstance(r[c], bool) else r[c]):>6}" for c in cols)
        lines.append(f"{r['case']:112s} {cells}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--all-candidates", action="store_true", help="also lower every candidate of the space")
    ap.add_argument("--table", action="store_true", help="print a table, not JSON lines")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiler processes")
    ap.add_argument("-k", dest="select", default="", help="only cases whose name contains this text")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: interpreted kernels cannot be compiled", file=sys.stderr)
        return 2
    todo = [c for c in cases(args.all_candidates) if args.select in c["case"]]
    rows = []
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for res in pool.map(run, todo):
            rows.append(res)
            if not args.table:
                print(json.dumps(res), flush=True)
    if args.table:
        print(table(rows))
    return 1 if any(not r["ok"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
