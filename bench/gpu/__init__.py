"""The GPU run of ``bench/gpu_check.py`` and its report (``bench/gpu_report.py``, the entry point of ``report``).

``journal``: the JSONL written line by line and the run's clock; ``watchdog``: the deadline the run keeps;
``failures``: what a crash line says, and whether the CUDA context survived it; ``preflight``: the machine and
its tool chain; ``target``: the GPU, the dry run and the compile-count replay; ``plan``: the sections in order
of value and their sizes; ``headline``, ``fused``, ``kernels`` and ``steps``: the cases (the training step
itself is ``bench/head_step.py``'s, shared with the CPU benchmarks); ``configs``: which launch configuration
ran; ``count``: the compile-count estimate and each case's estimated start; ``tables``: a run's lines read
back and its tables; ``report``: the report pipeline (tables, CSV rows, plots); ``cli``: the command line.
"""
