"""Compile the fused head kernels for sm_90, sm_80 and sm_86 without a GPU, with the dispatch table's configurations.

    python tests/_lower_fused.py            the cases the table's rows do not reach (reduction, depth, one chunk)
    python tests/_lower_fused.py --sweep    the chain kernels at padded widths 16 .. 1024: the spill table
    python tests/_lower_fused.py --evidence JOB [JOB ...]   lower dispatch-evidence jobs (their keys)

Prints one JSON line per case: registers, spill stores/loads and stack frame (``ptxas -v``), shared memory,
and whether the products reach wgmma (sm_90) or mma, and ``fits`` (``lowering.refusal``). The rows of the
dispatch table itself are lowered by ``python -m glai_kernels.tools.dispatch_evidence`` (figures kept in
``glai_kernels/tools/dispatch_evidence.json``). Run it without ``TRITON_INTERPRET``.
"""

import json
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from glai_kernels import fused_table  # noqa: E402
from glai_kernels.fused_config import fused_defaults  # noqa: E402
from glai_kernels.tools import dispatch_evidence  # noqa: E402
from glai_kernels.tools.fused_lowering import data_case, forward_case, weights_case  # noqa: E402
from glai_kernels.tools.lowering import refusal  # noqa: E402

GPUS = ((90, "bf16"), (80, "fp16"), (86, "fp16"))
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _chain(cap, dt, prec):
    return fused_table.chain_config(cap, _DTYPES[dt], prec)


def _weights(cap):
    return fused_defaults(cap)["weights"]


def cases(sweep: bool = False):
    if sweep:
        out = []
        for width in (16, 32, 64, 128, 256, 512, 1024):
            for cap, dt in GPUS:
                c = _chain(cap, dt, "tf32")
                out += [forward_case(width, dt, "tf32", cap, c), data_case(width, dt, "tf32", cap, c)]
                out += [weights_case(width, dt, "tf32", cap, _weights(cap))] if width == 128 else []
        return out
    c90 = _chain(90, "bf16", "tf32")
    return [
        forward_case(
            128, "bf16", "tf32", 90, c90, mode=2, r=1
        ),  # one chunk: the structure stays in registers
        forward_case(100, "bf16", "tf32", 90, c90, mode=2, r=4, depth=2),
        data_case(33, "bf16", "tf32", 90, c90, r=3, depth=2),
        weights_case(128, "bf16", "tf32", 90, _weights(90), splits=1),
    ]


def _evidence_case(job):
    return job, lambda: dispatch_evidence.lower_job(job)


def main(argv) -> int:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: interpreted kernels cannot be compiled", file=sys.stderr)
        return 2
    if "--evidence" in argv:
        todo = [_evidence_case(j) for j in argv[argv.index("--evidence") + 1 :]]
    else:
        todo = cases(sweep="--sweep" in argv)
    failed = 0
    for name, fn in todo:
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
            cap = int(name.split("sm", 1)[1].split()[0])
            res["refusal"] = refusal(res, cap)
            res["fits"] = res["refusal"] is None
        print(json.dumps(res), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
