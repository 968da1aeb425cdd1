"""The MLP-vs-GLAI time-to-accuracy study (``glai-experiment``, ``python -m glai.experiments``).

One module per setting (``scratch``, ``backbone``, ``simclr``, ``fewshot``), with the shared runner and presets in
``common``, the variants compared in ``variants``, the learning-rate search in ``hyper_search``, the paired
statistics in ``stats`` and the output files in ``report``. :func:`compare` (``--data``)
runs the same protocol on a user's own features (``compare``, ``userdata``, ``task``, ``compare_report``).
"""

from .cli import main
from .compare import Comparison, compare
from .userdata import DataError

__all__ = ["Comparison", "DataError", "compare", "main"]
