"""What every setting shares: the size presets, the environment record and the MLP-vs-GLAI runner.

A setting hands :func:`run_heads` a fixed classification problem (raw MNIST-1D or frozen features) and a set of
GLAI variants (freeze policies). For every seed the plain MLP and each variant start from the same seed, see the
same batches and use the same optimizer and schedule; with reduction 1 they are even the same network until the
freeze, so any difference comes from the freeze itself.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from ..data import NUM_CLASSES, Split
from ..train import FreezePolicy, RunResult, make_head, train_classifier

MLP = "MLP"
# The flip-rate rule every reduction / cache variant is built on, spelled out rather than taken from the
# FreezeMonitor defaults, so that the results keep their meaning if the defaults change.
BASE_RULE = {"threshold": 0.01, "patience": 2}
BASE = "flip<0.01/p2"


@dataclass(frozen=True)
class Preset:
    """Sizes of one study. ``tiny`` is for the smoke test, ``quick`` for a first look, ``full`` for the record."""

    name: str
    seeds: tuple[int, ...]
    samples: int  # MNIST-1D draw of the main task (80 % train)
    hidden: tuple[int, ...]  # hidden widths of every head, MLP and GLAI alike
    batch_size: int
    lr: float
    scratch_epochs: int
    backbone_samples: int  # separate draw the CNN backbone is trained on
    backbone_epochs: int
    head_epochs: int
    fewshot_ks: tuple[int, ...]
    fewshot_epochs: int
    simclr_samples: int
    simclr_epochs: int
    simclr_batch: int
    policy_grid: str  # "small", "medium" or "full": how many freeze policies the scratch setting compares
    backbone_grid: str  # the same for the frozen-backbone setting, whose epochs cost about twice as much

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    "tiny": Preset(
        "tiny", (0, 1), 300, (32, 32), 32, 2e-3, 3, 300, 1, 3, (1, 5), 4, 200, 2, 64, "small", "small"
    ),
    "quick": Preset(
        "quick",
        (0, 1),
        5000,
        (256, 256),
        64,
        2e-3,
        25,
        5000,
        15,
        25,
        (1, 5, 10),
        80,
        2000,
        6,
        256,
        "small",
        "small",
    ),
    # Sized for about 20 minutes on one thread of a shared 2-core machine (see bench/results/experiments).
    "full": Preset(
        "full",
        (0, 1, 2, 3, 4),
        5000,
        (256, 256),
        64,
        2e-3,
        40,
        8000,
        30,
        40,
        (1, 5, 10),
        150,
        4000,
        20,
        256,
        "full",
        "medium",
    ),
}


def _cpu_name() -> str:
    # platform.processor() is empty on many Linux systems; /proc/cpuinfo names the model there.
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict:
    """Where and with what the numbers were measured."""
    import numpy

    versions = {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": numpy.__version__}
    for name in ("mnist1d", "scipy", "triton"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # an optional package: absent or without a version is fine
            versions[name] = None
    try:
        from importlib.metadata import version

        versions["mnist1d"] = versions["mnist1d"] or version("mnist1d")
    except Exception:
        pass
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": name,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "versions": versions,
    }


@dataclass
class Record:
    """One training run of one variant and seed in one setting, flattened for the report."""

    setting: str
    variant: str
    seed: int
    result: RunResult
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "setting": self.setting,
            "variant": self.variant,
            "seed": self.seed,
            **self.extra,
            **self.result.to_dict(),
        }


def run_heads(
    setting: str,
    data: Split,
    variants: dict[str, FreezePolicy | None],
    *,
    preset: Preset,
    epochs: int,
    batch_size: int | None = None,
    extra: dict | None = None,
    tick: Callable[[], None] | None = None,
) -> list[Record]:
    """Train the MLP (``variants[name] is None``) and every GLAI variant on ``data`` for every seed."""
    records = []
    for seed in preset.seeds:
        for variant, policy in variants.items():
            torch.manual_seed(seed)
            model = make_head(data.in_features, preset.hidden, NUM_CLASSES, policy, data.x.device)
            result = train_classifier(
                model,
                data,
                name=variant,
                epochs=epochs,
                batch_size=batch_size or preset.batch_size,
                lr=preset.lr,
                seed=seed,
                policy=policy,
                probe_size=512,
            )
            records.append(Record(setting, variant, seed, result, dict(extra or {})))
            if tick is not None:
                tick()
    return records


def select(variants: dict, only: set[str] | None) -> dict:
    """The variants named in ``only`` (all when ``None``), always with the MLP they are paired with."""
    if only is None:
        return variants
    return {k: v for k, v in variants.items() if k == MLP or k in only}


def policy_variants(grid: str, epochs: int) -> dict[str, FreezePolicy | None]:
    """The MLP and the freeze policies compared: flip-rate rules, fixed budgets, reduction, refresh, no cache."""

    def at(fraction: float) -> int:
        return max(1, round(epochs * fraction))

    early = at(0.1)
    variants: dict[str, FreezePolicy | None] = {MLP: None, BASE: FreezePolicy(**BASE_RULE)}
    variants[f"freeze@{early}"] = FreezePolicy(kind="epoch", epoch=early)
    variants["r=2"] = FreezePolicy(**BASE_RULE, reduction=2)
    variants[f"freeze@{early} refresh/1"] = FreezePolicy(kind="epoch", epoch=early, refresh_every=1)
    if grid == "small":
        return variants
    # Reduction pays off only if the full-width network has time to learn from its own initialisation after the
    # freeze: an early fixed freeze is the fair test of it, not the late freeze a flip-rate rule picks.
    for r in (2, 4):
        variants[f"freeze@{early} r={r}"] = FreezePolicy(kind="epoch", epoch=early, reduction=r)
    rules = ((0.05, 2), (0.02, 2), (0.005, 2), (0.01, 4), (0.002, 3))
    if grid == "medium":
        for thr, pat in rules[1:3]:
            variants[f"flip<{thr:g}/p{pat}"] = FreezePolicy(threshold=thr, patience=pat)
        variants["r=4"] = FreezePolicy(**BASE_RULE, reduction=4)
        return variants
    for thr, pat in rules:
        variants[f"flip<{thr:g}/p{pat}"] = FreezePolicy(threshold=thr, patience=pat)
    for fraction in (0.25, 0.5, 0.75):
        variants[f"freeze@{at(fraction)}"] = FreezePolicy(kind="epoch", epoch=at(fraction))
    variants["r=4"] = FreezePolicy(**BASE_RULE, reduction=4)
    variants[f"freeze@{early} refresh/3"] = FreezePolicy(kind="epoch", epoch=early, refresh_every=3)
    variants[f"{BASE} no-cache"] = FreezePolicy(**BASE_RULE, cache=False)
    return variants
