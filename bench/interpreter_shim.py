"""Triton 3.6's interpreter with numpy >= 2.4: the one line later Triton fixed, patched where both need it."""


def patch_old_interpreter() -> bool:
    """Triton 3.6's interpreter turns a scalar into a Python int with ``int(data)``, ``data`` a shape-(1,)
    numpy array, which numpy >= 2.4 refuses ("only 0-dimensional arrays can be converted to Python
    scalars"): every kernel fails. Later Triton writes ``int(data.squeeze())``; this applies that one line, and
    only where the installed numpy refuses and the installed interpreter still has the old line. Whether it
    patched. The test suite and the GPU check's dry run apply it; a GPU run never interprets."""
    import inspect

    import numpy as np

    try:
        int(np.ones(1))
        return False  # this numpy still converts a one-element array
    except TypeError:
        pass
    try:
        from triton.runtime import interpreter
    except ImportError:
        return False
    patch = getattr(interpreter, "_patch_lang_tensor", None)
    if patch is None or "int(self.handle.data)" not in inspect.getsource(patch):
        return False

    def patch_lang_tensor(tensor, scope):
        patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    interpreter._patch_lang_tensor = patch_lang_tensor
    return True
