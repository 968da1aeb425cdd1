"""``glai-demo``: a GLAI MLP against the plain ReLU MLP it replaces, on MNIST-1D generated locally.

Both models have the same widths (so the same trainable parameter count), the same initialisation, batches,
optimizer and schedule. The GLAI model trains as a ReLU MLP until the freeze monitor sees its patterns settle,
then trains its quantities with the patterns looked up in a pattern cache. The demo prints a table and writes
``accuracy_vs_time.png`` and ``demo.json`` into the output folder. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from .cli_checks import (
    ArgumentParser,
    check_environment,
    check_output_folder,
    device_name,
    finite_float,
    int_in,
)
from .data import NUM_CLASSES, mnist1d
from .monitor import NonFiniteError
from .train import FreezePolicy, RunResult, make_head, train_classifier


def int_at_least(minimum: int):
    """An argparse type: an int no smaller than ``minimum``, refused with both numbers otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an int >= {minimum}, got {value}")
        return value

    return parse


def float_in(accept, expected: str):
    """An argparse type: a float for which ``accept(value)`` holds (NaN never does), refused naming
    ``expected`` and what came otherwise."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_fraction = float_in(lambda v: 0.0 <= v <= 1.0, "a fraction of flipped bits in [0, 1]")
_positive_float = finite_float(lambda v: v > 0, "a finite number > 0")


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(prog="glai-demo", description=__doc__.splitlines()[0].replace("``", ""))
    p.add_argument(
        "--samples",
        type=int_at_least(2 * NUM_CLASSES),
        default=5000,
        help="MNIST-1D samples in all, 80%% for training",
    )
    p.add_argument("--hidden", type=int_at_least(1), default=256, help="width of every hidden layer")
    p.add_argument("--depth", type=int_at_least(1), default=2, help="number of hidden layers")
    p.add_argument("--epochs", type=int_at_least(1), default=60)
    p.add_argument("--batch-size", type=int_at_least(1), default=64)
    p.add_argument("--lr", type=_positive_float, default=2e-3)
    p.add_argument(
        "--reduction", type=int_at_least(1), default=1, help="structural width = hidden / reduction"
    )
    p.add_argument(
        "--threshold", type=_fraction, default=None, help="freeze flip-rate threshold (library default)"
    )
    p.add_argument(
        "--patience", type=int_at_least(1), default=None, help="calm checks before freezing (library default)"
    )
    p.add_argument(
        "--seed", type=int_in(-(2**63), 2**64 - 1), default=0, help="model initialisation and batch order"
    )
    p.add_argument(
        "--data-seed",
        type=int_in(0, 2**32 - 1),
        default=42,
        help="MNIST-1D draw (42 is the published dataset's)",
    )
    p.add_argument("--device", type=device_name, default="cpu", help="cpu, cuda, cuda:1, ... or auto")
    p.add_argument("--threads", type=int_at_least(1), default=1, help="CPU threads for torch")
    p.add_argument("--out", type=Path, default=Path("glai-demo-out"), help="folder for the plot and the JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    # Checked here, not when the GLAI model is built: that comes after the whole MLP run.
    if args.hidden % args.reduction:
        p.error(f"--reduction {args.reduction} must divide --hidden, got {args.hidden}")
    check_output_folder(p, "--out", args.out)  # the demo's own folder: written over
    check_environment(p)
    return args


def pick_device(name: str) -> torch.device:
    """``--device``: a torch device name, or ``auto`` (CUDA when present); a clear exit when it cannot be used."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SystemExit(
            f"--device {name!r} is not a torch device (cpu, cuda, cuda:1, ... or auto)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available on this machine (try --device cpu)")
    return device


def set_threads(threads: int) -> None:
    # Steps of a small MLP are a few milliseconds: a second thread buys little, and on a busy machine
    # oversubscribed threads made a step ten times slower in our measurements. One thread is the default.
    torch.set_num_threads(threads)


def _fmt_time(t: float | None) -> str:
    return "never" if t is None else f"{t:.2f}"


def format_flips(history: list[float], limit: int = 8) -> str:
    if not history:
        return "-"
    shown = [f"{r:.3f}" for r in history[:limit]]
    return " ".join(shown) + (" ..." if len(history) > limit else "")


def results_table(runs: list[RunResult], target: float) -> str:
    """A Markdown table: one row a model."""
    head = (
        "| model | params | best test acc (%) | best at epoch | train time (s) | "
        f"time to {target:.1f}% (s) | epochs | freeze epoch | flip-rate history |"
    )
    lines = [head, "|" + " --- |" * 9]
    for r in runs:
        freeze = "-" if r.freeze_epoch is None else str(r.freeze_epoch)
        lines.append(
            f"| {r.name} | {r.params:,} | {r.best_acc:.2f} | {r.best_epoch} | {r.total_time:.2f} | "
            f"{_fmt_time(r.time_to(target))} | {r.epochs} | {freeze} | {format_flips(r.flip_history)} |"
        )
    return "\n".join(lines)


def plot_runs(runs: list[RunResult], path: Path, title: str, target: float | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in runs:
        (line,) = ax.plot(r.time, r.test_acc, marker=".", label=f"{r.name} (best {r.best_acc:.1f}%)")
        if r.freeze_epoch is not None:
            i = r.freeze_epoch - 1
            ax.plot([r.time[i]], [r.test_acc[i]], marker="*", ms=14, color=line.get_color(), ls="none")
    if target is not None:
        ax.axhline(target, color="grey", ls="--", lw=1, label=f"MLP best - 0.5 = {target:.1f}%")
    ax.set_xlabel("training wall time (s, evaluation excluded)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _progress_bar(total: int, desc: str, disable: bool):
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="epoch", disable=disable, file=sys.stderr, leave=True)

    def update(epoch: int, result: RunResult) -> None:
        post = {"acc": f"{result.test_acc[-1]:.1f}", "best": f"{result.best_acc:.1f}"}
        if result.freeze_epoch is not None:
            post["frozen@"] = result.freeze_epoch
        bar.set_postfix(post)
        bar.update(1)

    return bar, update


def speed_verdict(mlp: RunResult, glai: RunResult, target: float, reduction: int) -> str:
    """One sentence on who reached ``target`` first, calling GLAI faster or slower only beyond this run's timing
    noise (the study's rule, docs/design.md section 6).

    The noise is measured on identical work: with reduction 1 the two runs are the same network, batches and steps
    until GLAI's freeze, so their structural epochs differ in time only by noise (and a small monitor check). If
    GLAI reached the target at the same epoch as the MLP, before it froze, the two runs were identical up to the
    target and any time difference is noise by construction. With reduction > 1 nothing is identical and no
    noise is measured: the sentence says so instead of calling a winner."""
    t_mlp, t_glai = mlp.time_to(target), glai.time_to(target)
    if t_glai is None:
        return f"GLAI never reached {target:.1f}% (the MLP did in {t_mlp:.2f}s)."
    epoch_mlp = next(i for i, t in enumerate(mlp.time) if t == t_mlp) + 1
    epoch_glai = next(i for i, t in enumerate(glai.time) if t == t_glai) + 1
    ratio = t_mlp / t_glai
    said = f"GLAI reached {target:.1f}% in {t_glai:.2f}s, the MLP in {t_mlp:.2f}s ({ratio:.2f}x)"
    frozen = glai.freeze_epoch
    if reduction == 1 and epoch_glai == epoch_mlp and (frozen is None or epoch_glai < frozen):
        return f"{said}: at the same epoch, before the freeze, so the runs were identical up to there: no speedup."
    same = (
        (frozen - 1) if frozen is not None else len(glai.time)
    )  # structural epochs, the freeze epoch left out
    if reduction != 1 or same < 1:
        return (
            f"{said}; no identical work to measure this run's timing noise against, so no winner is called."
        )
    noise = abs(glai.time[same - 1] / mlp.time[same - 1] - 1.0)
    if ratio > 1.0 + noise:
        word = "faster"
    elif ratio < 1.0 / (1.0 + noise):
        word = "slower"
    else:
        return f"{said}: within this run's timing noise (±{100 * noise:.0f}% on the first {same} identical epochs)."
    return f"{said}: GLAI {word}, beyond this run's timing noise (±{100 * noise:.0f}% on {same} identical epochs)."


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return _run(args)
    except NonFiniteError as exc:
        print(f"glai-demo: error: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    device = pick_device(args.device)
    started = time.perf_counter()
    data = mnist1d(args.samples, seed=args.data_seed).to(device)
    hidden = (args.hidden,) * args.depth
    policy = FreezePolicy(threshold=args.threshold, patience=args.patience, reduction=args.reduction)

    runs = []
    for name in ("MLP", "GLAI"):
        torch.manual_seed(args.seed)  # the same initial weights for both (with reduction 1)
        model = make_head(data.in_features, hidden, NUM_CLASSES, policy if name == "GLAI" else None, device)
        bar, update = _progress_bar(args.epochs, f"{name:>4}", args.no_progress)
        with bar:
            runs.append(
                train_classifier(
                    model,
                    data,
                    name=name,
                    epochs=args.epochs,
                    batch_size=args.batch_size,
                    lr=args.lr,
                    seed=args.seed,
                    policy=policy if name == "GLAI" else None,
                    progress=update,
                )
            )
    mlp, glai = runs
    target = mlp.best_acc - 0.5
    print(
        f"\nMNIST-1D ({data.x.shape[0]} train / {data.x_test.shape[0]} test), hidden {list(hidden)}, "
        f"reduction {args.reduction}, seed {args.seed}, device {device}, {torch.get_num_threads()} threads\n"
    )
    print(results_table(runs, target))
    if glai.freeze_reason:
        cost = ", ".join(f"{k} {v:.2f}s" for k, v in glai.cost.items())
        print(f"\nGLAI froze after epoch {glai.freeze_epoch} ({glai.freeze_reason}); cost split: {cost}")
    print("GLAI flip rate per epoch: " + (" ".join(f"{r:.4f}" for r in glai.flip_history) or "-"))
    if mlp.time_to(target) is not None:
        print(speed_verdict(mlp, glai, target, args.reduction))
    out = Path(args.out)
    png = plot_runs(runs, out / "accuracy_vs_time.png", "MNIST-1D: MLP vs GLAI", target)
    record = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": [r.to_dict() for r in runs]}
    (out / "demo.json").write_text(json.dumps(record, indent=1))
    print(
        f"\nplot: {png}\nresults: {out / 'demo.json'}\ntotal wall time {time.perf_counter() - started:.1f}s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
