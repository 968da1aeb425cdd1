"""GLAI ops: bit-packed patterns, the quantitative stack as one autograd Function, the structural gate.

No ``nn.Module`` lives here (see ``glai.nn``). Importing never needs a GPU or Triton.
"""

from .backend import BACKENDS, resolve_backend, triton_available
from .dispatch import glai_mlp, structural_patterns
from .launch_configs import LaunchConfig, launch_config
from .layout import WORD_BITS, pack_patterns, unit_mask, unpack_patterns, words_for
from .per_layer import GLAIStackFunction
from .runtime import interpreting
from .tools import tuner as _tuner  # noqa: F401  (registers the tuner GLAI_AUTOTUNE=1 calls on a miss)

__all__ = [
    "BACKENDS",
    "GLAIStackFunction",
    "LaunchConfig",
    "WORD_BITS",
    "glai_mlp",
    "interpreting",
    "launch_config",
    "pack_patterns",
    "resolve_backend",
    "structural_patterns",
    "triton_available",
    "unit_mask",
    "unpack_patterns",
    "words_for",
]
