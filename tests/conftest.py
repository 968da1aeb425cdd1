"""Test set-up. Triton's interpreter must be switched on before any kernel module is imported, so it is set
here, before the tests import anything from glai_kernels. On a machine with CUDA the kernels run for real."""

import os

import torch

os.environ.setdefault("GLAI_STRICT", "1")  # a refused launch fails a test, never falls back in silence
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _shim_old_interpreter() -> None:
    """Triton 3.6's interpreter turns a scalar into a Python int with ``int(data)``, ``data`` a shape-(1,)
    numpy array, which numpy >= 2.4 refuses ("only 0-dimensional arrays can be converted to Python
    scalars"): every kernel fails. Later Triton writes ``int(data.squeeze())``; this applies that one line, and
    only where the installed numpy refuses and the installed interpreter still has the old line."""
    import inspect

    import numpy as np

    try:
        int(np.ones(1))
        return  # this numpy still converts a one-element array
    except TypeError:
        pass
    try:
        from triton.runtime import interpreter
    except ImportError:
        return
    patch = getattr(interpreter, "_patch_lang_tensor", None)
    if patch is None or "int(self.handle.data)" not in inspect.getsource(patch):
        return

    def patch_lang_tensor(tensor, scope):
        patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    interpreter._patch_lang_tensor = patch_lang_tensor


if os.environ.get("TRITON_INTERPRET") == "1":
    _shim_old_interpreter()
