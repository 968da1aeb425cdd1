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
        assert tuning.check_tile_config(c) == c


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
            assert tuning.check_tile_config(c) == c and c["BLOCK_N"] % 32 == 0


def test_check_config_flags():
    c = {k: v for k, v in tuning.cfg(64, 64, 32, 4, 3).items() if k not in tuning.FLAGS}
    assert tuning.check_tile_config(c) == tuning.cfg(64, 64, 32, 4, 3)  # flags default to 0
    assert tuning.check_tile_config(dict(c, TMA=1))["TMA"] == 1
    for bad in (dict(c, TMA=2), dict(c, K_MAJOR=True), dict(c, TMA=-1), dict(c, SPLIT=1)):
        with pytest.raises(ValueError):
            tuning.check_tile_config(bad)


def test_batch_splits():
    c = tuning.cfg(64, 64, 64, 4, 3)
    assert tuning.per_layer_splits(c, 10, 4096, 8192, None) == (1, 8192)  # no GPU: one split
    # dW of the output layer, 10 x 4096: 64 tiles on a GPU of 132 multiprocessors gives 2 splits.
    assert tuning.per_layer_splits(c, 10, 4096, 8192, 132) == (2, 4096)
    assert tuning.per_layer_splits(c, 4096, 4096, 8192, 132) == (1, 8192)  # enough tiles already
    assert tuning.per_layer_splits(dict(c, SPLIT_K=3), 10, 4096, 100, None) == (
        2,
        64,
    )  # 2 steps of 64: 2 splits
    S, rows = tuning.per_layer_splits(c, 10, 64, 1 << 20, 132)
    assert S == 16 and S * rows >= 1 << 20 and rows % 64 == 0


# ----------------------------------------------------------------------------- layering
# Each module may import only the modules listed for it (within glai_kernels), directly or lazily; every module
# of the package is listed, so a new one states its place. ``kernels`` is the Triton kernels' folder.
LEAVES = {"layout", "signature", "fused_table", "dropout", "eager", "fallback", "first_order"}
LAYERS = {
    **{leaf: set() for leaf in LEAVES},
    "runtime": {"kernels"},  # only to ask, once, whether Triton defined the kernels for its interpreter
    "checks": {"layout"},
    "costs": {"layout"},
    "backend": {"runtime"},
    "dropout_launch": {"dropout", "kernels"},
    "reference": {"layout", "dropout_launch"},
    # What a per-layer launch reads: the space and defaults, the cache, the lookup.
    "tuning": {"costs"},
    "tuning_cache": {"tuning"},
    "launch_configs": {"runtime", "tuning", "tuning_cache"},
    # The per-layer path.
    "per_layer_launch": {"runtime", "launch_configs", "tuning", "layout", "signature"},
    "per_layer_ops": {
        "runtime",
        "per_layer_launch",
        "tuning",
        "layout",
        "kernels",
        "reference",
        "dropout_launch",
    },
    "per_layer": {"backend", "reference", "dropout", "eager", "fallback", "first_order", "layout"},
    # The fused path: its table, configurations, launches, plans and Function.
    "fused_config": {"fused_table", "runtime"},
    "fused_launch": {
        "fused_config",
        "fused_table",
        "runtime",
        "dropout_launch",
        "kernels",
        "layout",
        "signature",
    },
    "fused_plan": {"fused_table", "fused_launch"},
    "fused": {
        "fused_table",
        "fused_plan",
        "reference",
        "checks",
        "dropout",
        "eager",
        "fallback",
        "first_order",
        "layout",
    },  # fmt: skip
    # The front door: the rule, then one path.
    "dispatch": {
        "backend",
        "checks",
        "dropout",
        "fallback",
        "fused",
        "fused_plan",
        "fused_table",
        "per_layer",
        "reference",
        "runtime",
        "signature",
    },  # fmt: skip
    # The tools, which never run inside a training step.
    "tools.lowering": {"kernels", "layout", "dropout_launch"},
    "tools.tuner": {
        "per_layer_ops",
        "tools.lowering",
        "launch_configs",
        "tuning",
        "tuning_cache",
        "costs",
        "layout",
        "reference",
    },  # fmt: skip
    "tools.autotune": {"tools.tuner", "tools.dispatch_report", "launch_configs", "tuning", "tuning_cache"},
    "tools.fused_lowering": {"fused_config", "layout", "tools.lowering", "kernels", "dropout_launch"},
    "tools.dispatch_evidence": {"fused_table", "tools.fused_lowering", "tools.lowering"},
    "tools.dispatch_report": {"tools.dispatch_evidence", "fused_table"},
}
PER_LAYER = {"per_layer", "per_layer_ops", "per_layer_launch", "launch_configs", "tuning", "tuning_cache"}
FUSED = {"fused", "fused_plan", "fused_launch", "fused_config", "fused_table"}


def _module(path: Path) -> str:
    """A module's name inside the package (``tools.tuner``), or ``kernels`` for any module of that folder."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return "kernels" if parts[0] == "kernels" else ".".join(parts)


def _named(parts: list[str]) -> str:
    return "kernels" if parts[0] == "kernels" else ".".join(parts[:2] if parts[0] == "tools" else parts[:1])


def package_imports(path: Path) -> set[str]:
    """The glai_kernels modules a file imports (module level or inside functions), by their names in the
    package (``kernels`` for the kernels' folder)."""
    here = _module(path).split(".")[:-1] if path.parts[-2] != "kernels" else ["kernels"]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            base = here[: len(here) - (node.level - 1)]
            if node.module:
                found.add(_named(base + node.module.split(".")))
            else:
                found.update(_named(base + [alias.name]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("glai_kernels."):
            found.add(_named(node.module.split(".")[1:]))
    return found - {_module(path)}


def test_tuning_layers_import_one_way():
    graph = {
        _module(p): package_imports(p)
        for p in PACKAGE.rglob("*.py")
        if p.name != "__init__.py" and p.parts[-2] != "kernels"
    }
    assert set(graph) == set(LAYERS), f"modules without a layer: {sorted(set(graph) ^ set(LAYERS))}"
    for module, allowed in LAYERS.items():
        extra = graph[module] - allowed
        assert not extra, f"{module} imports {sorted(extra)}, above its layer"
    # Neither path imports the other, and nothing on a training step imports the tools.
    for module in FUSED:
        assert not graph[module] & PER_LAYER, f"{module} (fused) imports the per-layer path"
    for module in PER_LAYER:
        assert not graph[module] & FUSED, f"{module} (per-layer) imports the fused path"
    for module, deps in graph.items():
        if not module.startswith("tools."):
            assert not {d for d in deps if d.startswith("tools.")}, f"{module} imports the tools"
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
