"""Both packages import and work on a machine without Triton (and without a GPU)."""

import subprocess
import sys
import textwrap


def run_without_triton(code: str) -> subprocess.CompletedProcess:
    # A None entry in sys.modules makes every `import triton` raise ImportError, as on a machine without it.
    prelude = "import sys\nsys.modules['triton'] = None\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )


def test_import_and_train_without_triton():
    result = run_without_triton(
        """
        import torch, glai, glai_kernels
        from glai_kernels import resolve_backend, triton_available
        assert not triton_available()
        assert resolve_backend("auto", torch.device("cpu")) == "torch"
        model = glai.GLAIMLP(5, [8], 2).freeze()
        model(torch.randn(3, 5)).sum().backward()
        try:
            resolve_backend("triton", torch.device("cpu"))
        except RuntimeError as exc:
            print("refused:", exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "refused: backend='triton' was requested but the Triton kernels are unavailable" in result.stdout
