"""The search space and the defaults per GPU architecture, the split of the weight gradient, and the layering of
the tuning modules (each imports only the layers below it). Pure Python: no kernel runs here."""

import ast
from pathlib import Path

import pytest

from glai_kernels import tuning

HOPPER, AMPERE = (9, 0), (8, 0)
PACKAGE = Path(__file__).resolve().parent.parent / "glai_kernels"


def tiles(c, M, N):
    return -(-M // c["BLOCK_M"]) * -(-N // c["BLOCK_N"])


@pytest.mark.parametrize("kernel", tuning.KERNELS)
def test_hopper_and_ampere_defaults_for_wide_layers(kernel):
    big = (8192, 4096, 4096)
    h16 = tuning.default_config(kernel, *big, "bfloat16", HOPPER, tma=True)
    assert (h16["BLOCK_M"], h16["BLOCK_N"], h16["BLOCK_K"], h16["num_warps"], h16["num_stages"]) == (
        128,
        256,
        64,
        8,
        3,
    )
    assert h16["TMA"] == 1 and tuning.default_config(kernel, *big, "bfloat16", HOPPER)["TMA"] == 0
    assert tuning.default_config(kernel, *big, "float16", HOPPER, tma=True) == h16  # one 16-bit family
    a16 = tuning.default_config(kernel, *big, "bfloat16", AMPERE, tma=True)
    assert (a16["BLOCK_M"], a16["BLOCK_N"], a16["BLOCK_K"], a16["TMA"]) == (
        128,
        128,
        32,
        0,
    )  # no TMA before sm_90
    assert tuning.default_config(kernel, *big, "bfloat16", None) == a16  # no GPU: Ampere tiles
    ieee = tuning.default_config(kernel, *big, "float32", HOPPER, tma=True)
    assert ieee["TMA"] == 0 and ieee["K_MAJOR"] == 0  # FMA units: no tensor-core loop, no copies
    for c in (h16, a16, ieee):
        assert tuning.check_config(c) == c


def test_tf32_backward_defaults_read_k_major_operands():
    """Hopper's TF32 products read both operands K-major: the data gradient always copies W (small next to the
    batch); the weight gradient copies g and h only where the copies cost little next to the product."""
    for capability in (HOPPER, AMPERE):
        assert tuning.default_config("backward_data", 8192, 4096, 4096, "tf32", capability)["K_MAJOR"] == 1
        assert tuning.default_config("backward_data", 64, 256, 256, "tf32", capability)["K_MAJOR"] == 1
        assert tuning.default_config("backward_weights", 4096, 4096, 8192, "tf32", capability)["K_MAJOR"] == 1
        assert tuning.default_config("backward_weights", 512, 512, 8192, "tf32", capability)["K_MAJOR"] == 0
        assert tuning.default_config("masked_forward", 8192, 4096, 4096, "tf32", capability)["K_MAJOR"] == 0
        assert (
            tuning.default_config("backward_data", 8192, 4096, 4096, "bfloat16", capability)["K_MAJOR"] == 0
        )


@pytest.mark.parametrize("capability", [HOPPER, AMPERE, None])
@pytest.mark.parametrize("key", ["bfloat16", "tf32", "float32"])
def test_small_outputs_get_tiles_they_fill(capability, key):
    """Batch 256 x width 64 must not launch two half-empty programs: the tile shrinks to the output, and keeps
    splitting until the grid has work for more than a couple of multiprocessors."""
    for kernel in ("masked_forward", "backward_data", "gate"):
        c = tuning.default_config(kernel, 256, 64, 64, key, capability, tma=True)
        assert c["BLOCK_N"] <= 64 and c["BLOCK_K"] <= 64
        assert tiles(c, 256, 64) >= 4
        assert c["num_warps"] == 4  # a 64 x 64 tile is one warpgroup
    # A big output keeps the big tile.
    assert (
        tiles(tuning.default_config("masked_forward", 8192, 4096, 4096, key, capability), 8192, 4096) >= 512
    )


def test_narrow_output_layer_gets_a_narrow_tile():
    for key, bk in (("bfloat16", 128), ("tf32", 64), ("float32", 64)):
        c = tuning.default_config("masked_forward", 8192, 10, 4096, key, HOPPER, tma=True)
        assert (c["BLOCK_N"], c["BLOCK_M"], c["BLOCK_K"], c["num_warps"]) == (16, 128, bk, 4)
    assert tuning.default_config("masked_forward", 8192, 20, 4096, "bfloat16", HOPPER)["BLOCK_N"] == 32
    # The gate packs whole words: never narrower than 32 columns.
    assert tuning.default_config("gate", 8192, 10, 4096, "bfloat16", HOPPER)["BLOCK_N"] == 32
    assert tuning.default_config("gate", 256, 40, 64, "bfloat16", HOPPER)["BLOCK_N"] == 64
    # A short reduction (the data gradient of the output layer, K = 10) takes the shortest K step.
    assert tuning.default_config("backward_data", 8192, 4096, 10, "bfloat16", HOPPER)["BLOCK_K"] == 16


def test_candidates_per_architecture():
    base = tuning.SEARCH_SPACE["masked_forward"]
    assert tuning.candidates("masked_forward", "bfloat16", AMPERE, tma=True) == list(base)
    hopper = tuning.candidates("masked_forward", "bfloat16", HOPPER, tma=True)
    wide = tuning.cfg(128, 256, 64, 8, 3)
    assert wide in hopper and dict(wide, TMA=1) in hopper
    assert any(c["num_stages"] == 4 and c["BLOCK_N"] == 256 for c in hopper)  # 4-stage Hopper tiles
    no_tma = tuning.candidates("masked_forward", "bfloat16", HOPPER, tma=False)
    assert wide in no_tma and not any(c["TMA"] for c in no_tma)
    assert tuning.candidates("masked_forward", "float32", HOPPER, tma=True) == list(
        base
    )  # FMA: no wgmma tiles
    tf32 = tuning.candidates("backward_weights", "tf32", HOPPER, tma=True)
    assert len(tf32) == 2 * len([c for c in tf32 if not c["K_MAJOR"]])
    assert not any(c["K_MAJOR"] for c in tuning.candidates("masked_forward", "tf32", HOPPER, tma=True))
    for kernel in tuning.KERNELS:  # every candidate is well formed, and the gate's pack whole words
        for c in tuning.candidates(kernel, "tf32", HOPPER, tma=True):
            assert tuning.check_config(c) == c and c["BLOCK_N"] % 32 == 0


def test_check_config_flags():
    c = {k: v for k, v in tuning.cfg(64, 64, 32, 4, 3).items() if k not in tuning.FLAGS}
    assert tuning.check_config(c) == tuning.cfg(64, 64, 32, 4, 3)  # flags default to 0
    assert tuning.check_config(dict(c, TMA=1))["TMA"] == 1
    for bad in (dict(c, TMA=2), dict(c, K_MAJOR=True), dict(c, TMA=-1), dict(c, SPLIT=1)):
        with pytest.raises(ValueError):
            tuning.check_config(bad)


def test_batch_splits():
    c = tuning.cfg(64, 64, 64, 4, 3)
    assert tuning.batch_splits(c, 10, 4096, 8192, None) == (1, 8192)  # no GPU: one split
    # dW of the output layer, 10 x 4096: 64 tiles on a GPU of 132 multiprocessors gives 2 splits.
    assert tuning.batch_splits(c, 10, 4096, 8192, 132) == (2, 4096)
    assert tuning.batch_splits(c, 4096, 4096, 8192, 132) == (1, 8192)  # enough tiles already
    assert tuning.batch_splits(dict(c, SPLIT_K=3), 10, 4096, 100, None) == (2, 64)  # 2 steps of 64: 2 splits
    S, rows = tuning.batch_splits(c, 10, 64, 1 << 20, 132)
    assert S == 16 and S * rows >= 1 << 20 and rows % 64 == 0


# ----------------------------------------------------------------------------- layering
# Each tuning module may import only the modules listed for it (within glai_kernels), directly or lazily.
LAYERS = {
    "signature": set(),  # the memo of checked call signatures: a leaf any launch side may use
    "tuning": {"costs", "layout"},
    "tuning_cache": {"tuning", "costs", "layout"},
    "launch_configs": {"tuning", "tuning_cache", "costs", "layout"},
    "triton_launch": {"launch_configs", "tuning", "tuning_cache", "costs", "layout", "kernels", "signature"},
    "triton_ops": {
        "signature",
        "triton_launch",
        "launch_configs",
        "tuning",
        "tuning_cache",
        "costs",
        "layout",
        "kernels",
        "reference",
        "dropout_launch",
    },  # fmt: skip
    # In-kernel dropout: the rates and seeds (a leaf), and the launch-side constants and mask helper.
    "dropout": set(),
    "dropout_launch": {"dropout", "kernels"},
    "lowering": {"kernels", "layout", "tuning", "dropout_launch"},
    "tuner": {
        "triton_ops",
        "lowering",
        "launch_configs",
        "tuning",
        "tuning_cache",
        "costs",
        "layout",
        "reference",
        "kernels",
        "triton_launch",
    },  # fmt: skip
    "autotune": {"tuner", "launch_configs", "tuning", "tuning_cache", "costs", "layout", "dispatch_report"},
    # The fused path's dispatch table is a leaf; its evidence and report read it and the lowering, never a launch.
    "fused_table": set(),
    "fused_lowering": {"fused_config", "fused_table", "layout", "lowering", "kernels", "dropout_launch"},
    "dispatch_evidence": {"fused_config", "fused_table", "fused_lowering", "lowering", "layout", "kernels"},
    "dispatch_report": {"dispatch_evidence", "fused_table"},
}


def package_imports(path: Path) -> set[str]:
    """The glai_kernels modules a file imports (module level or inside functions), by their first name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("glai_kernels."):
            found.add(node.module.split(".")[1])
    return found


def test_tuning_layers_import_one_way():
    graph = {p.stem: package_imports(p) for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    for module, allowed in LAYERS.items():
        extra = graph[module] - allowed
        assert not extra, f"{module} imports {sorted(extra)}, above its layer"
    # No cycle anywhere in the package (backend's import of the ops by name is a function call, not an edge).
    state: dict[str, int] = {}

    def visit(m, path):
        if state.get(m) == 1:
            raise AssertionError(f"import cycle: {' -> '.join(path + [m])}")
        if state.get(m) == 2 or m not in graph:
            return
        state[m] = 1
        for dep in graph[m]:
            visit(dep, path + [m])
        state[m] = 2

    for m in graph:
        visit(m, [])
