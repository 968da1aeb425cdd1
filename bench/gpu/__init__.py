"""The GPU run of ``bench/gpu_check.py`` and its report, ``bench/gpu_report.py``.

``journal``: the JSONL written line by line and the run's clock; ``preflight``: the machine and its tool
chain; ``target``: the GPU, the dry run and the compile-count replay; ``plan``: the sections and their sizes;
``kernels`` and ``steps``: the cases; ``configs``: which launch configuration ran; ``count``: the
compile-count estimate; ``report``: the tables; ``cli``: the command line.
"""
