"""Test set-up. Triton's interpreter must be switched on before any kernel module is imported, so it is set
here, before the tests import anything from glai_kernels. On a machine with CUDA the kernels run for real."""

import os

import torch

os.environ.setdefault("GLAI_STRICT", "1")  # a refused launch fails a test, never falls back in silence
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


if os.environ.get("TRITON_INTERPRET") == "1":
    from bench.interpreter_shim import patch_old_interpreter

    patch_old_interpreter()
