"""One command for a lent GPU: check every Triton kernel against the float64 reference, then time it.

    make gpu                                  # = python bench/gpu_check.py --out gpu-out --deadline-s 540
    PYTHONPATH=. python3 bench/gpu_check.py --out DIR --deadline-s 540   # a bare GPU machine: no make, no venv
    python bench/gpu_check.py --plan [--json] # the order and each case's estimated start

Order of value: a preflight (GPU, versions, the C compiler and Python headers Triton needs, a small kernel),
the default path's correctness at the headline heads, the headline (a training step of the fused GLAI head
against the eager and compiled MLP and the compiled GLAI head at three widths, its table printed at once), the
kernels against cuBLAS at 8192 x 4096 x 4096 in bf16, then everything else: correctness at realistic sizes
(fp32 IEEE, TF32, fp16, bf16), determinism, kernel timings, training steps over a head grid, the
``torch.compile`` checks. Every check and timing is appended to ``DIR/gpu_check.jsonl`` (flushed and fsync'd)
the moment it is known; a killed run keeps every line written before, and the run ends itself before
``--deadline-s`` with a timeout line for the running case and its summary. ``--dry-run`` runs the same plan on
the CPU under Triton's interpreter; ``--count-compiles`` replays it with launches stubbed to count what it will
compile.
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
