"""No training step crashes on a resource limit: a launch that Triton refuses (``OutOfResources``, as a GPU
with less shared memory than the lowering assumed would raise) sends its call signature to the next path down,
fused -> per-layer -> torch, with one warning naming the case and the compiler's message, the choice
remembered, and the values of the lower path; ``GLAI_STRICT=1`` raises instead. The refusals are made here by
replacing a kernel with one that raises as Triton's launcher does."""

import collections
import warnings

import pytest
import torch

fl = pytest.importorskip("glai_kernels.fused_launch", reason="the fused kernels need Triton")
from triton.runtime.errors import OutOfResources  # noqa: E402

from glai_kernels import dispatch, glai_mlp, pack_patterns, per_layer_ops  # noqa: E402
from glai_kernels.signature import Verdicts  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
HIDDEN, IN, OUT, BATCH = [19, 11], 7, 5, 13


class _Kernel:
    """Stands in for a JIT function: counts each launch, then refuses it (or launches the real kernel)."""

    def __init__(self, kernel, name, counts, refuse):
        self.kernel, self.name, self.counts, self.refuse = kernel, name, counts, refuse

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.counts[self.name] += 1
            if self.refuse:
                raise OutOfResources(262144, 232448, "shared memory")
            return self.kernel[grid](*args, **kwargs)

        return run


@pytest.fixture
def kernels(monkeypatch):
    """``refuse(*names)``: those kernels refuse every launch; every kernel's launches are counted."""
    monkeypatch.setenv("GLAI_STRICT", "0")
    monkeypatch.setattr(dispatch, "_PLANS", Verdicts())
    counts = collections.Counter()
    names = {fl: ("fused_forward_kernel", "fused_grad_data_kernel", "fused_grad_weights_kernel"),
             per_layer_ops: ("gate_kernel", "masked_matmul_kernel", "weight_grad_kernel")}  # fmt: skip

    def refuse(*refused):
        for module, ks in names.items():
            for name in ks:
                real = getattr(module, name)
                real = getattr(real, "kernel", real)
                monkeypatch.setattr(module, name, _Kernel(real, name, counts, name in refused))
        return counts

    return refuse


def _stack(seed=0):
    gen = torch.Generator().manual_seed(seed)
    dims = [IN, *HIDDEN, OUT]
    ws = [torch.randn(b, a, generator=gen) / a**0.5 for a, b in zip(dims[:-1], dims[1:])]
    bs = [torch.randn(b, generator=gen) for b in dims[1:]]
    x = torch.randn(BATCH, IN, generator=gen)
    pats = [pack_patterns(torch.rand(BATCH, n, generator=gen) > 0.4) for n in HIDDEN]
    leaves = [t.to(DEVICE).requires_grad_(True) for t in (x, *ws, *bs)]
    return leaves[0], leaves[1:4], leaves[4:], [p.to(DEVICE) for p in pats]


def _step(fused_flag=None, backend="triton"):
    """Loss, and the gradients of x, weights and biases, of one step (fresh leaves, the same values)."""
    x, ws, bs, pats = _stack()
    y = glai_mlp(x, ws, bs, pats, backend=backend, fused=fused_flag)
    y.square().sum().backward()
    return [y.detach(), x.grad, *[w.grad for w in ws], *[b.grad for b in bs]]


def _same(got, want):
    for i, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(g, w, rtol=2e-5, atol=2e-6, msg=lambda m: f"output {i}: {m}")


def _steps(n, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = [_step(**kw) for _ in range(n)]
    return results, [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


def test_a_refused_fused_forward_runs_per_layer_once_warned_and_remembered(kernels):
    want = _step(backend="torch")
    counts = kernels("fused_forward_kernel")
    results, warned = _steps(3)
    for got in results:
        _same(got, want)
    assert len(warned) == 1, warned
    for part in ("fused launch", "widths [19, 11, 5]", "float32", str(DEVICE), "mode given", "OutOfResources",
                 "Required: 262144", "per-layer path"):  # fmt: skip
        assert part in warned[0], (part, warned[0])
    assert counts["fused_forward_kernel"] == 1  # remembered: never tried again
    assert counts["masked_matmul_kernel"] > 0 and counts["fused_grad_weights_kernel"] == 0


def test_a_refused_fused_backward_gives_torch_gradients_then_per_layer(kernels):
    want = _step(backend="torch")
    counts = kernels("fused_grad_data_kernel")
    results, warned = _steps(2)
    for got in results:
        _same(got, want)
    assert len(warned) == 1 and "fused_grad_data_kernel" not in warned[0] and "OutOfResources" in warned[0]
    assert counts["fused_forward_kernel"] == 1 and counts["fused_grad_data_kernel"] == 1
    assert counts["masked_matmul_kernel"] > 0  # the second step: per-layer


def test_a_refused_per_layer_launch_runs_torch_once_warned_and_remembered(kernels):
    want = _step(backend="torch")
    counts = kernels("masked_matmul_kernel")
    results, warned = _steps(3, fused_flag=False)
    for got in results:
        _same(got, want)
    assert len(warned) == 1 and "per-layer launch" in warned[0] and "torch path" in warned[0], warned
    assert counts["masked_matmul_kernel"] == 1


def test_strict_raises_and_other_errors_are_never_swallowed(kernels, monkeypatch):
    kernels("fused_forward_kernel", "masked_matmul_kernel")
    monkeypatch.setenv("GLAI_STRICT", "1")
    with pytest.raises(OutOfResources):
        _step()
    with pytest.raises(OutOfResources):
        _step(fused_flag=False)
    monkeypatch.setenv("GLAI_STRICT", "0")

    def broken(*args, **kwargs):
        raise RuntimeError("a bug, not a resource limit")

    monkeypatch.setattr(fl, "fused_forward_kernel", type("K", (), {"__getitem__": lambda s, g: broken})())
    monkeypatch.setattr(dispatch, "_PLANS", Verdicts())
    with pytest.raises(RuntimeError, match="a bug"):
        _step()
