"""GLAI: ReLU MLP blocks whose activation patterns freeze early, trained on their quantities afterwards.

``glai.nn.GLAIMLP`` is the block, ``FreezeMonitor`` decides when its patterns have settled, and
``PatternCache`` keeps the frozen patterns of a fixed dataset. The ops live in ``glai_kernels``.
"""

from . import nn
from .cache import PatternCache, PatternDataset
from .conversion import convert
from .monitor import FreezeMonitor, NonFiniteError
from .nn import GLAIMLP, PhaseError

__all__ = [
    "GLAIMLP",
    "FreezeMonitor",
    "NonFiniteError",
    "PatternCache",
    "PatternDataset",
    "PhaseError",
    "convert",
    "nn",
]
__version__ = "0.1.0"
