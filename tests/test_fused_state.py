"""State that outlives a launch: the weight gradient's split-combine counters come back to a known state on
every launch, whatever the launch before them left behind.

A launch that faulted, two launches overlapping on two streams, or a workspace whose zeroing was only recorded
in a CUDA graph can leave a ticket counter non-zero. Here a launch leaves every counter at 3 (what such a
launch could leave), and the next weight gradients must still match the float64 reference.
"""

import pytest
import torch

from glai_kernels import reference as ref

fl = pytest.importorskip("glai_kernels.fused_launch", reason="the fused kernels need Triton")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SPLITS = 3  # the interpreter's default is one split, which never touches the counters


def _rel_err(out, expected) -> float:
    return (out.double() - expected).norm().item() / expected.norm().item()


def test_weight_gradients_stay_right_after_a_launch_left_its_counters_at_3(monkeypatch):
    real_launch = fl.launch_fused
    counters_seen = []

    def corrupting_launch(kernel, grid, cfg, device, *args, **constexprs):
        real_launch(kernel, grid, cfg, device, *args, **constexprs)
        if kernel is fl.fused_grad_weights_kernel:
            counters = args[-1]  # the ticket counters, one a tile
            counters_seen.append(counters)
            counters.fill_(3)  # as a faulted or overlapping launch could leave them

    monkeypatch.setattr(fl, "launch_fused", corrupting_launch)
    cfg = {"weights": dict(fl.resolved_config(DEVICE, None)["weights"], SPLITS=SPLITS)}
    g = torch.Generator().manual_seed(15)
    M, dims = 301, (7, 33, 10)  # 301 rows: three splits of 112, 112 and 77 at BLOCK_K 16
    for step in range(2):  # two backward passes: the second runs after the first left its counters at 3
        grads = [(torch.randn(M, n, generator=g) * M**-0.5).to(DEVICE) for n in dims[1:]]
        inputs = [torch.randn(M, k, generator=g).to(DEVICE) for k in dims[:-1]]
        out = (
            [torch.full((n, k), float("nan"), device=DEVICE) for k, n in zip(dims[:-1], dims[1:])],
            [torch.full((n,), float("nan"), device=DEVICE) for n in dims[1:]],
        )
        dws, dbs = fl.grad_weights(grads, inputs, [True, True], 0, config=cfg, out=out)
        assert counters_seen and counters_seen[-1].numel() > 0, "the launch must have used ticket counters"
        for i in range(len(dws)):
            rw, rb = ref.backward_weights(grads[i].double(), inputs[i].double(), True)
            for what, got, want in (("dW", dws[i], rw), ("db", dbs[i], rb)):
                err = _rel_err(got, want)
                assert err <= 1e-5, f"pass {step + 1}, {what} of layer {i}: relative error {err:.3e} > 1e-05"
