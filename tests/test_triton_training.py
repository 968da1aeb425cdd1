"""Whole-model checks of the Triton backend: training steps equal the torch backend's, autocast works, and
``torch.compile`` of a model holding a GLAIMLP matches eager (with the torch backend, and with Triton through
its registered custom ops). Without CUDA the kernels run under Triton's interpreter (see conftest)."""

import copy

import pytest
import torch
import torch.nn.functional as F

from glai.nn import GLAIMLP

pytest.importorskip("glai_kernels.per_layer_ops", reason="the Triton kernels need Triton")

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    yield
    torch._dynamo.reset()


def _pair(hidden, reduction, bias, seed):
    """A frozen model on the torch backend and an identical copy on the Triton backend."""
    torch.manual_seed(seed)
    model = GLAIMLP(13, hidden, 5, reduction=reduction, bias=bias, backend="torch").to(DEVICE)
    model.freeze()
    twin = copy.deepcopy(model)
    twin.backend = "triton"
    return model, twin


def _close(a, b, what):
    torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-6, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize(
    "hidden,reduction,bias,batch,x_grad",
    [([33, 31], 1, True, 33, True), ([100, 36], 2, False, 77, False), ([100], 4, True, 1, True)],
)
def test_training_steps_match_torch_backend(hidden, reduction, bias, batch, x_grad):
    model, twin = _pair(hidden, reduction, bias, seed=len(hidden) * 100 + reduction)
    opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in (model, twin)]
    gen = torch.Generator().manual_seed(reduction)
    for step in range(3):
        x = torch.randn(batch, 13, generator=gen).to(DEVICE)
        target = torch.randn(batch, 5, generator=gen).to(DEVICE)
        losses, x_grads = [], []
        for m, opt in zip((model, twin), opts):
            xi = x.clone().requires_grad_(x_grad)
            opt.zero_grad()
            loss = F.mse_loss(m(xi), target)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
            x_grads.append(xi.grad)
        _close(losses[1], losses[0], f"loss at step {step}")
        if x_grad:
            _close(x_grads[1], x_grads[0], f"input gradient at step {step}")
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        _close(q, p, f"parameter {name} after 3 steps")
    # The gate kernel produces the same patterns as the reference.
    x = torch.randn(batch, 13, generator=gen).to(DEVICE)
    for p, q in zip(model.patterns(x), twin.patterns(x)):
        assert torch.equal(p, q)


def test_autocast_matches_torch_backend():
    """Under autocast the stack runs in the autocast dtype (bf16 operands, fp32 accumulation) and the fp32
    master weights get fp32 gradients."""
    model, twin = _pair([33, 31], 1, True, seed=5)
    x = torch.randn(33, 13, device=DEVICE)
    outs, grads = [], []
    for m in (model, twin):
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            y = m(x)
        y.float().square().mean().backward()
        outs.append(y)
        grads.append([p.grad for p in m.parameters()])
    assert outs[1].dtype == torch.bfloat16
    torch.testing.assert_close(outs[1].float(), outs[0].float(), rtol=2e-2, atol=2e-2)
    for g_ref, g in zip(*grads):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, g_ref, rtol=5e-2, atol=5e-2)


def _compiled_matches_eager(model, compile_backend):
    x = torch.randn(33, 13, device=DEVICE)
    compiled = torch.compile(model, backend=compile_backend, fullgraph=True)
    results = []
    for m in (model, compiled):
        model.zero_grad(set_to_none=True)
        y = m(x)
        y.square().sum().backward()
        results.append((y.detach(), [p.grad.clone() for p in model.parameters()]))
    (y_eager, g_eager), (y_comp, g_comp) = results
    torch.testing.assert_close(y_comp, y_eager, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_comp, g_eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_compiled_model_matches_eager_torch_backend():
    model, _ = _pair([33, 31], 1, True, seed=7)
    _compiled_matches_eager(model, "inductor")


def test_compiled_model_matches_eager_triton_backend():
    """The Triton ops are opaque custom ops to torch.compile, in one graph (fullgraph) with the rest. Under
    the interpreter the graph runs through AOTAutograd without Inductor codegen (the cheap half of the check;
    the GPU script compiles with Inductor)."""
    _, twin = _pair([100, 36], 2, True, seed=9)
    _compiled_matches_eager(twin, "inductor" if CUDA else "aot_eager")
