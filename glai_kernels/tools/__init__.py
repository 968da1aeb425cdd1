"""Tools that never run inside a training step: the tuner, the ``glai-autotune`` command line, and lowering
(compiling a kernel for a GPU architecture without one, to read its registers, spills and shared memory).

A launch reads what the tuner writes (``glai_kernels.tuning_cache``) and the dispatch table the lowering
evidence backs (``glai_kernels.fused_table``); nothing on the training path imports this package, except that
importing ``glai_kernels`` registers :func:`tuner.tune_and_save` as what ``GLAI_AUTOTUNE=1`` calls on a cache miss.
"""
