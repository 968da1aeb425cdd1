"""The dispatch table alone decides the fused path: the width rule, the errors and the launch configurations
all read ``fused_table``, per architecture, dtype, dot precision and mode. (No kernel runs here; a CUDA device
of each architecture is stood in for by its capability.)"""

import pytest
import torch

from glai_kernels import dispatch, fused_config, fused_table, runtime
from glai_kernels.fused_plan import FROM_STRUCTURE, GIVEN, STRUCTURAL

F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32


@pytest.fixture
def on_gpu(monkeypatch):
    """``use(capability)``: ``cuda:0`` reports that capability, and the interpreter is off."""

    def use(capability):
        monkeypatch.setattr(runtime, "interpreting", lambda: False)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: divmod(capability, 10))

    return use


def test_every_entry_is_read_by_fused_width():
    for (cap, prec), (chain, widths) in fused_table.TABLE.items():
        dtype = fused_table.DTYPE_OF[prec]
        dot = "ieee" if prec == "fp32-ieee" else "tf32"
        for mode in (GIVEN, STRUCTURAL, FROM_STRUCTURE):
            assert fused_table.fused_width(cap, dtype, dot, mode) == widths[mode] > 0
        assert fused_table.chain_config(cap, dtype, dot) == chain
        assert fused_config.fused_defaults(cap, dtype, dot)["chain"] == chain
    assert fused_table.MAX_WIDTH == max(w for _, ws in fused_table.TABLE.values() for w in ws.values())
    # A device reads the newest key not above its capability.
    assert fused_table.fused_width(89, F32, "ieee", GIVEN) == fused_table.TABLE[(86, "fp32-ieee")][1][GIVEN]
    assert fused_table.chain_config(100, BF16, "tf32") == fused_table.TABLE[(90, "bf16")][0]
    assert fused_table.weights_config(90, F32, "ieee") != fused_table.weights_config(90, F32, "tf32")
    with pytest.raises(ValueError, match="float32, float16 or bfloat16 operands, got torch.float64"):
        fused_table.fused_width(90, torch.float64, "ieee", GIVEN)


@pytest.mark.parametrize("cap", [80, 86, 90])
@pytest.mark.parametrize("dtype,dot,words", [(F32, "ieee", "float32 with IEEE dots"),
                                             (F32, "tf32", "float32 with TF32 dots"), (BF16, "tf32", "bfloat16")])  # fmt: skip
def test_the_rule_and_its_error_name_the_case(on_gpu, cap, dtype, dot, words):
    on_gpu(cap)
    dev = torch.device("cuda:0")
    widest = fused_table.fused_width(cap, dtype, dot, STRUCTURAL)
    ok = dispatch.why_not_fused("triton", 3, dtype, [widest, 17], [widest, 17], dev, STRUCTURAL, dot)
    assert ok is None
    why = dispatch.why_not_fused("triton", 3, dtype, [17, widest + 1], [17, widest + 1], dev, STRUCTURAL, dot)
    assert why == (
        f"the fused path takes hidden widths up to {widest} for {words}, mode structural, on sm_{cap} (cuda:0), "
        f"got hidden width {widest + 1} at layer 1"
    )


def test_the_current_tf32_setting_is_the_default_precision(on_gpu, monkeypatch):
    on_gpu(90)
    seen = []
    monkeypatch.setattr(runtime, "torch_dot_precision", lambda dtype: seen.append(dtype) or "tf32")
    assert "TF32" in dispatch.why_not_fused("triton", 2, F32, [10_000], (), torch.device("cuda:0"))
    assert seen == [F32]


def test_launch_configurations_follow_the_table(on_gpu):
    on_gpu(80)
    for prec, dtype in fused_table.DTYPE_OF.items():
        dot = "ieee" if prec == "fp32-ieee" else "tf32"
        cfg = fused_config.fused_defaults(runtime.capability_key(torch.device("cuda:0")), dtype, dot)
        assert cfg["chain"] == fused_table.TABLE[(80, prec)][0]
        assert cfg["weights"] == fused_table.weights_config(80, dtype, dot)
    interp = fused_config.fused_defaults(runtime.capability_key(torch.device("cpu")), F32, "ieee")
    assert (
        interp["chain"] == fused_table.CHAIN_INTERPRETER
        and interp["max_width"] == fused_table.INTERPRETER_WIDTH
    )


def test_the_tf32_setting_is_part_of_a_float32_calls_signature(monkeypatch):
    """Switching TF32 changes float32's entry: the call is checked again (its verdict and launches are per
    setting); a 16-bit call's signature does not depend on it."""
    from glai_kernels import glai_mlp, pack_patterns
    from glai_kernels.signature import Verdicts

    monkeypatch.setattr(dispatch, "_PLANS", Verdicts())
    checked = []
    validate = dispatch._validate
    monkeypatch.setattr(dispatch, "_validate", lambda *a: checked.append(a[0].dtype) or validate(*a))
    setting = ["ieee"]
    monkeypatch.setattr(runtime, "dot_precision", lambda dtype: setting[0])
    for dtype in (F32, BF16):
        x = torch.randn(5, 7, dtype=dtype)
        ws = [torch.randn(9, 7, dtype=dtype), torch.randn(3, 9, dtype=dtype)]
        pats = [pack_patterns(torch.rand(5, 9) > 0.5)]
        for prec in ("ieee", "ieee", "tf32", "tf32", "ieee"):
            setting[0] = prec
            glai_mlp(x, ws, None, pats, backend="torch")
    assert checked == [F32, F32, BF16]  # float32: once per setting, then remembered; bf16: once
