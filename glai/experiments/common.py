"""What every setting shares: the size presets, the environment record and the MLP-vs-GLAI runner.

A setting hands :func:`run_heads` a fixed problem (raw MNIST-1D or frozen features, or a user's data through
:mod:`.compare`), its :class:`~.task.Task` (loss, test score, target tolerance; MNIST-1D's ten classes by
default) and a set of variants (:mod:`.variants`): plain MLPs and GLAI heads (freeze policies). For every seed
each variant starts from the same seed, sees the same batches and uses the same optimizer and schedule; with
reduction 1 the MLP and GLAI are even the same network until the freeze, so any difference comes from the freeze
itself. Each variant trains with its own learning rate, tuned beforehand on a validation split with the same
budget for every variant (:mod:`.hyper_search`); the MLP is also run a second time (``MLP again``), whose time
against the first run's measures the timing noise of identical work in the same study.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch

from ..data import Split
from ..train import FreezePolicy, RunResult, make_head, train_classifier
from .hyper_search import Hyper, trial_count, tune
from .task import CLASSIFY, Task
from .variants import Plain


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
    # Learning rates every variant tries on a validation split, then two refinements (.hyper_search); empty:
    # all use lr.
    tune_grid: tuple[float, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    "tiny": Preset(
        "tiny",
        (0, 1),
        300,
        (32, 32),
        32,
        2e-3,
        3,
        300,
        1,
        3,
        (1, 5),
        4,
        200,
        2,
        64,
        "small",
        "small",
        (2e-3,),
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
        (2e-3, 8e-3),
    ),
    # Sized for about an hour on one thread of a shared 2-core machine (see bench/results/experiments), or half
    # that with the settings split over two processes.
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
        (5e-4, 2e-3, 8e-3, 3.2e-2),
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


def train_variant(
    variant: str,
    spec,
    hyper: Hyper,
    data: Split,
    seed: int,
    *,
    preset: Preset,
    epochs: int,
    batch_size: int,
    task: Task = CLASSIFY,
) -> RunResult:
    """One run of one variant: a plain MLP of the spec's widths, or the preset's GLAI head under its policy, with
    the task's outputs, loss and test score."""
    torch.manual_seed(seed)
    policy = None if isinstance(spec, Plain) else replace(spec, lr_scale=hyper.lr_scale)
    hidden = spec.hidden(preset.hidden) if isinstance(spec, Plain) else preset.hidden
    model = make_head(data.in_features, hidden, task.out_features, policy, data.x.device)
    return train_classifier(
        model,
        data,
        name=variant,
        epochs=epochs,
        batch_size=batch_size,
        lr=hyper.lr,
        seed=seed,
        policy=policy,
        probe_size=512,
        loss=task.loss,
        score=task.score,
    )


def tune_heads(
    variants: dict,
    tune_data: Split | None,
    *,
    preset: Preset,
    epochs: int,
    batch_size: int,
    tick=None,
    task: Task = CLASSIFY,
) -> tuple[dict[str, Hyper], dict[str, list]]:
    """Hyper-parameters of every variant, tuned on ``tune_data`` (training samples with a held-out test part)
    when the preset asks for it, else the preset's learning rate for all."""
    if not preset.tune_grid or tune_data is None:
        return {v: Hyper(preset.lr) for v in variants}, {v: [] for v in variants}

    def score(variant, spec, hyper):
        kwargs = {"preset": preset, "epochs": epochs, "batch_size": batch_size, "task": task}
        return train_variant(variant, spec, hyper, tune_data, 0, **kwargs).best_acc

    return tune(variants, preset.tune_grid, score, tick)


def run_heads(
    setting: str,
    data: Split,
    variants: dict[str, FreezePolicy | Plain],
    *,
    preset: Preset,
    epochs: int,
    batch_size: int | None = None,
    extra: dict | None = None,
    tick: Callable[[], None] | None = None,
    tune_data: Split | None = None,
    tuned: tuple[dict, dict] | None = None,
    task: Task = CLASSIFY,
) -> list[Record]:
    """Train every variant on ``data`` for every seed of the preset, with the hyper-parameters ``tuned`` gave, or
    tuned here on ``tune_data`` first (training samples with a held-out test part)."""
    batch_size = batch_size or preset.batch_size
    kwargs = {"preset": preset, "epochs": epochs, "batch_size": batch_size, "task": task}
    hypers, trials = tuned or tune_heads(variants, tune_data, tick=tick, **kwargs)
    records = []
    for seed in preset.seeds:
        for variant, spec in variants.items():
            hyper = hypers[variant]
            result = train_variant(variant, spec, hyper, data, seed, **kwargs)
            info = {**(extra or {}), "model": "mlp" if isinstance(spec, Plain) else "glai"}
            info.update(lr=hyper.lr, lr_scale=hyper.lr_scale, tuning=trials[variant])
            records.append(Record(setting, variant, seed, result, info))
            if tick is not None:
                tick()
    return records


def runs_per_seed_and_tuning(variants: dict, preset: Preset) -> tuple[int, int]:
    """``(runs per seed, tuning runs)`` of a set of variants, for the progress bar."""
    return len(variants), trial_count(variants, preset.tune_grid)
