"""The dtype labels of every figure in ``bench/`` and the switch that applies one.

A label names a tensor dtype and, for float32, the precision of its products: ``"tf32"`` is float32 with TF32
products allowed, ``"float32"`` IEEE float32 products (PyTorch's default).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

DTYPES = {
    "float32": torch.float32,
    "tf32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


@contextmanager
def precision(label: str):
    """fp32 products under TF32 for ``label == "tf32"`` (PyTorch's switch, which the kernels follow too).

    torch >= 2.9 has ``fp32_precision``; its legacy ``allow_tf32`` raises when read once the new API was used
    (the tuner uses it), so the new one is set where it exists and the legacy one only on older torch."""
    matmul = torch.backends.cuda.matmul
    name = "fp32_precision" if hasattr(matmul, "fp32_precision") else "allow_tf32"
    prev = getattr(matmul, name)
    tf32 = label == "tf32"
    setattr(matmul, name, ("tf32" if tf32 else "ieee") if name == "fp32_precision" else tf32)
    try:
        yield
    finally:
        setattr(matmul, name, prev)
