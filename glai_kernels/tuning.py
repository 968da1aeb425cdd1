"""Launch configurations of the Triton kernels (tile sizes, ``num_warps``, ``num_stages``).

``config_for(kernel, M, N, K, dtype)`` is what every host function asks; it must answer at once (no tuning
inside a training step). Under the interpreter it returns one small fixed configuration.
"""

from __future__ import annotations

import torch

from .backend import interpreting

KERNELS = ("gate", "masked_forward", "backward_data", "backward_weights")

_INTERPRETER = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 4, "num_warps": 1, "num_stages": 1}
_DEFAULT = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8, "num_warps": 8, "num_stages": 3}


def config_for(kernel: str, M: int, N: int, K: int, dtype: torch.dtype) -> dict:
    """The launch configuration for ``kernel`` on a GEMM of ``M x N x K`` in ``dtype``."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; expected one of {KERNELS}")
    return dict(_INTERPRETER if interpreting() else _DEFAULT)
