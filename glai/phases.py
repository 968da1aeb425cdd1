"""The two phases of a GLAI block, and the error for an operation the current phase does not allow.

A leaf of ``glai``: the block (:mod:`glai.nn`) and the modules that act on it by phase (conversion, the monitor,
the pattern cache) import it; it imports nothing of the project.
"""

PHASES = ("structural", "quantitative")


class PhaseError(RuntimeError, ValueError):
    """An operation that the model's current phase does not allow (e.g. ``freeze()`` twice)."""
