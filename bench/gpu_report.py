"""The report of a GPU run: ``python -m bench.gpu_report DIR/gpu_check.jsonl`` (``--help`` for the options).

Tables, CSV rows and plots of the run's JSONL; the pipeline is :mod:`bench.gpu.report`. This file is only its
entry point, runnable from a plain checkout as ``python bench/gpu_report.py`` as well.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a plain checkout: no install needed
    sys.path.insert(0, str(ROOT))

from bench.gpu.report import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
