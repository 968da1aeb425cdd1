"""Peak device memory of one training step, GLAI against the plain MLP at the same shapes (CUDA only).

The MLP keeps every hidden activation for its backward (``batch x width`` floats a layer, plus ReLU's own
output); GLAI keeps the layer inputs and one bit a structural unit. ``saved`` is what the forward leaves
allocated for the backward (the output included), ``peak`` the high-water mark of the whole step, both above
the parameters and gradients already allocated.
"""

import torch

from bench import harness, providers
from glai_kernels import backend, costs

MIB = float(1 << 20)


def test_train_step_memory(benchmark, memory_case, device):
    case = memory_case
    dtype = getattr(torch, case.dtype)
    widths = costs.mlp_widths(case.in_f, case.out_f)
    if case.provider == "baseline":
        model, name = providers.plain_mlp(widths, device, dtype), "baseline"
    else:
        model = providers.glai_model(widths, case.r, "auto", device, dtype)
        name = backend.resolve_backend("auto", device) + (
            "_cached" if case.provider.endswith("_cached") else ""
        )
    params = list(model.parameters())
    x = torch.randn(case.batch, widths[0], device=device, dtype=dtype)
    dy = torch.randn(case.batch, widths[-1], device=device, dtype=dtype)
    extra = (model.patterns(x),) if case.provider.endswith("_cached") else ()

    def step():
        for p in params:
            p.grad = None
        model(x, *extra).backward(dy)
        torch.cuda.synchronize()

    step()  # allocator pools, kernel compilation
    for p in params:
        p.grad = torch.zeros_like(
            p
        )  # gradients count as already allocated: only the step's own memory is measured
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    y = model(x, *extra)
    saved = (torch.cuda.memory_allocated() - base) / MIB
    y.backward(dy)
    del y
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / MIB
    args = (case.batch, case.in_f, case.out_f, case.r, case.dtype)
    for op, value in (("train_step_saved", saved), ("train_step_peak", peak)):
        harness.record(op, name, *args, (value,) * 3, device, unit="MiB", file=harness.MEMORY_CSV)
    benchmark.extra_info.update(saved_mib=round(saved, 2), peak_mib=round(peak, 2))
    benchmark.pedantic(step, rounds=3)
