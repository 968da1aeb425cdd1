"""One command for a lent GPU: check every Triton kernel against the float64 reference, then time it.

    make gpu                                            # = python bench/gpu_check.py --out gpu-out
    PYTHONPATH=. python3 bench/gpu_check.py --out DIR   # a bare GPU machine: no make, no venv

Order: a preflight (GPU, versions, the C compiler and Python headers Triton needs, a one-element kernel), then
correctness at realistic sizes (fp32 IEEE, TF32, fp16, bf16), determinism, kernel timings against cuBLAS and a
memory-rate copy, training steps of a classification head against a plain MLP, and the ``torch.compile``
baselines last. Every check and timing is appended to ``DIR/gpu_check.jsonl`` (flushed and fsync'd) the moment
it is known; a killed run keeps every line written before. ``--dry-run`` runs the same plan on the CPU under
Triton's interpreter; ``--count-compiles`` replays it with launches stubbed to count what it will compile.
``python -m bench.gpu_report DIR/gpu_check.jsonl`` turns the file into tables, CSV rows and plots.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a plain checkout: no install needed
    sys.path.insert(0, str(ROOT))

from bench.gpu.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
