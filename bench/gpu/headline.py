"""The headline: the figures a user asks for first, measured in the first minutes of a run.

At three heads (narrow, medium, and the widest hidden width the fused path takes; batch 16384 on a GPU), one
training step each of the eager MLP, the fused GLAI head (quantitative phase, cached patterns), the MLP under
``torch.compile`` (default and ``mode="reduce-overhead"``) and the compiled fused GLAI head; before them the
correctness of the default path at those heads, in every dtype the dispatcher sends to the fused path; after
them the masked forward and both backward kernels against cuBLAS at the first kernel shape in bf16.
"""

from __future__ import annotations

from bench.gpu import fused, kernels, steps
from bench.gpu.journal import Case
from bench.head_step import VARIANTS as STEP_VARIANTS
from bench.head_step import Point

# The headline's columns, in this order: the eager MLP is the baseline of the others' speedups.
VARIANTS = ("eager", "f-qcache", "c-dflt", "c-ro", "c-glai")
KERNELS = ("masked_forward", "backward_data", "backward_weights")


def widest_fused_width(dtype: str) -> int:
    """The widest hidden width the fused path takes for ``dtype`` ("bfloat16", "float16", "tf32", "float32":
    IEEE dots, PyTorch's default) on sm_90 in every mode, from the dispatch table
    (``glai_kernels.fused_table``): the headline's widest head, and the fp32 head of the default-path checks."""
    import torch

    from glai_kernels import fused_table

    torch_dtype = torch.float32 if dtype == "tf32" else getattr(torch, dtype)
    precision = "tf32" if dtype == "tf32" else "ieee"
    return min(fused_table.fused_width(90, torch_dtype, precision, mode) for mode in fused_table.MODE_NAMES)


def points(sizes) -> list:
    """The headline heads: ``sizes.headline`` with a width of None read as the widest fused width (bf16)."""
    batch, in_f, widths, depth, out_f = sizes.headline
    return [Point("bfloat16", batch, in_f, w or widest_fused_width("bfloat16"), depth, out_f) for w in widths]


def default_path_cases(target, sizes, first: bool = True) -> list[Case]:
    """The default path (``fused=None``) against float64, given patterns (outputs and gradients). ``first``:
    the checks that run before the headline (bf16 at every headline head, fp16 at the widest, IEEE fp32, the
    PyTorch default, at fp32's widest fused width, from the dispatch table), else those that open the
    correctness section (TF32 at that width, and IEEE fp32 at the widest head where the table stops fp32
    short of it). The split keeps every headline case in the first third of the budget."""
    heads = [(p.batch, p.in_f, p.width, p.depth, p.out_f) for p in points(sizes)]
    widest = heads[-1]
    fp32 = (*widest[:2], min(widest_fused_width("float32"), widest[2]), *widest[3:])
    if first:
        checks = [(h, "bfloat16") for h in heads] + [(widest, "float16"), (fp32, "float32")]
    else:
        checks = [(fp32, "tf32")] + ([(widest, "float32")] if fp32 != widest else [])
    return [fused.check_case(target, head, label, "cache", fused=None) for head, label in checks]


def step_cases(target, sizes, state: dict) -> list[Case]:
    """The memory rate (the steps' floors), then every headline variant at every headline head."""
    by_short = {v.short: v for v in STEP_VARIANTS}
    cases = [kernels.memory_rate_case(target, sizes.copy_elements, state)]
    for point in points(sizes):
        cases += [steps.step_case(target, by_short[s], point, state) for s in VARIANTS]
    return cases


def kernel_cases(target, ops, sizes) -> list[Case]:
    return kernels.timing_cases(target, ops, sizes.kernel_shapes[:1], ("bfloat16",), KERNELS)
