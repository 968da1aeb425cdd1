"""Peak device memory of one training step, GLAI against the plain MLP at the same shapes (CUDA only).

The MLP keeps every hidden activation for its backward (``batch x width`` floats a layer, plus ReLU's own
output); GLAI keeps the layer inputs and one bit a structural unit. See ``providers.step_memory``.
"""

from bench import harness, providers


def test_train_step_memory(benchmark, memory_case, device):
    case = memory_case
    name, saved, peak, step = providers.step_memory(case, device)
    args = (case.batch, case.in_f, case.out_f, case.r, case.dtype)
    for op, value in (("train_step_saved", saved), ("train_step_peak", peak)):
        harness.record(op, name, *args, (value,) * 3, device, unit="MiB", file=harness.MEMORY_CSV)
    benchmark.extra_info.update(saved_mib=round(saved, 2), peak_mib=round(peak, 2))
    benchmark.pedantic(step, rounds=3)
