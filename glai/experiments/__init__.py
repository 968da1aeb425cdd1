"""The MLP-vs-GLAI time-to-accuracy study (``glai-experiment``, ``python -m glai.experiments``).

One module per setting (``scratch``, ``backbone``, ``simclr``, ``fewshot``), with the shared runner and presets in
``common``, the paired statistics in ``stats`` and the output files in ``report``.
"""

from .cli import main

__all__ = ["main"]
