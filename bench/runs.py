"""The cached training runs the accuracy benchmarks share: dense, pruned, fine-tuned, baseline.

Each is a `compactcnn run` of configs/resnet20_cifar10_jpeg.yaml (or `python -m bench.baseline`)
in `<cache>/<label>-<hash of settings and code>`; a benchmark asking for the same settings as
another reuses its finished run instead of training again.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import Any

from bench import common

# Fine-tuning starts from a trained model, so it uses a tenth of the from-scratch peak rate and
# no warm-up; cosine decay over the fine-tuning epochs as in training.
FINETUNE_LEARNING_RATE = 0.01


def arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the options of the accuracy benchmarks: epochs, fine-tuning epochs, cache folder."""
    parser.add_argument("--epochs", type=int, default=10, help="dense / from-scratch epochs")
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument(
        "--cache-dir", type=Path, default=common.CACHE_DIR, help="where runs are kept and reused"
    )


def quick(args: argparse.Namespace) -> None:
    """Shrinks the epochs for --quick (the runs themselves get `common.quick_run_overrides`)."""
    if args.quick:
        args.epochs, args.finetune_epochs = 1, 1


def _run(recorder, args, label: str, overrides: list[str]) -> tuple[Path, dict[str, Any]]:
    if args.quick:
        overrides = overrides + common.quick_run_overrides()
    return common.compactcnn_run(recorder, label, overrides, args.cache_dir)


def dense(recorder, args, seed: int = 0) -> tuple[Path, dict[str, Any]]:
    """The dense ResNet-20 trained for `args.epochs` (with `train.seed` when `seed` is not 0)."""
    overrides = [f"train.epochs={args.epochs}"] + ([f"train.seed={seed}"] if seed else [])
    return _run(recorder, args, f"dense-e{args.epochs}", overrides)


def finetune(
    recorder,
    args,
    dense_dir: Path,
    sparsity: float,
    extra: tuple[str, ...] = (),
    suffix: str = "",
    epochs: int | None = None,
    learning_rate: float = FINETUNE_LEARNING_RATE,
) -> tuple[Path, dict[str, Any]]:
    """The dense run fine-tuned with polynomial pruning to `sparsity` (`prune.from_run`) for
    `epochs` (default `args.finetune_epochs`) from `learning_rate` (cosine, no warm-up), with
    `extra` overrides and `suffix` appended to the folder's label."""
    epochs = args.finetune_epochs if epochs is None else epochs
    overrides = [
        f"train.epochs={epochs}",
        f"train.learning_rate={learning_rate}",
        "train.warmup_epochs=0",
        "prune.schedule=polynomial",
        f"prune.final_sparsity={sparsity}",
        f"prune.from_run={dense_dir}",
        *extra,
    ]
    label = f"finetune{round(sparsity * 100)}-e{args.epochs}-f{epochs}{suffix}"
    return _run(recorder, args, label, overrides)


def sensitivity(recorder, args, dense_dir: Path) -> Path:
    """Runs `compactcnn sensitivity` on the dense run once (its sensitivity.csv is then reused).

    Returns:
        The sensitivity.csv, in the dense run directory.
    """
    command = ["python", "-m", "compactcnn", "sensitivity", str(dense_dir)]
    if args.quick:  # Two sparsities on 64 images: seconds instead of minutes.
        command += ["--images", "64", "--sparsities", "0.5,0.9"]
    path = common.resolve(dense_dir) / "sensitivity.csv"
    if path.exists():
        recorder.command(shlex.join(command), 0.0, cached=True, run_dir=str(dense_dir))
    else:
        common.run_command(recorder, command, run_dir=str(dense_dir))
    return path


def scratch(recorder, args, sparsity: float) -> tuple[Path, dict[str, Any]]:
    """ResNet-20 pruned from scratch to `sparsity` over `args.epochs`, on the configs/pruning
    schedule scaled to the run (begin at 1/16 of training, target reached at 3/4)."""
    overrides = [
        f"train.epochs={args.epochs}",
        "prune.schedule=polynomial",
        f"prune.final_sparsity={sparsity}",
        f"prune.begin_epoch={0 if args.quick else args.epochs / 16}",
        f"prune.end_epoch={0.75 * args.epochs}",
    ]
    return _run(recorder, args, f"scratch{round(sparsity * 100)}-e{args.epochs}", overrides)


def baseline(recorder, args, recipe: str = "strong", seed: int = 0) -> dict[str, Any]:
    """The plain tf_keras baseline (`recipe`, see bench/baseline.py) trained for `args.epochs`;
    returns its metrics."""
    out = _baseline_dir(args, f"baseline-{recipe}-e{args.epochs}", seed)
    command = _baseline_command(args, recipe, seed) + ["--out", str(out)]
    return _cached_baseline(recorder, command, out)[1]


def plain_tfmot(
    recorder,
    args,
    sparsity: float,
    prune_epochs: int,
    seed: int = 0,
    learning_rate: float = FINETUNE_LEARNING_RATE,
) -> tuple[Path, dict[str, Any]]:
    """The strong baseline after `args.epochs` (its dense folder shared with `baseline`), pruned
    with plain tfmot to `sparsity` over `prune_epochs` from `learning_rate` (cosine) and exported
    to int8 (bench/baseline.py).

    Returns:
        The output folder (metrics.json, int8.tflite) and its metrics.
    """
    dense = _baseline_dir(args, f"baseline-strong-e{args.epochs}", seed)
    label = f"tfmot{round(sparsity * 100)}-e{args.epochs}-p{prune_epochs}-lr{learning_rate:g}"
    out = _baseline_dir(args, label, seed)
    command = _baseline_command(args, "strong", seed) + [
        "--dense-dir",
        str(dense),
        "--prune-sparsity",
        str(sparsity),
        "--prune-epochs",
        str(prune_epochs),
        "--prune-learning-rate",
        f"{learning_rate:g}",
    ]
    if args.quick:  # Tiny runs: every step updates the masks, few calibration images.
        command += ["--prune-frequency", "1", "--calibration-samples", "20", "--latency-runs", "5"]
    return _cached_baseline(recorder, command + ["--out", str(out)], out)


def _baseline_dir(args, label: str, seed: int) -> Path:
    # The code's digest, as in `common.run_key`: a run of other code is not reused.
    label += (f"-s{seed}" if seed else "") + ("-quick" if args.quick else "")
    label += f"-{common.code_digest()}"
    return common.relative(Path(args.cache_dir) / label)


def _baseline_command(args, recipe: str, seed: int) -> list[str]:
    command = ["python", "-m", "bench.baseline", "--recipe", recipe, "--epochs", str(args.epochs)]
    if seed:
        command += ["--seed", str(seed)]
    if args.quick:
        command += ["--quick", "--steps-per-epoch", "3", "--batch-size", "32"]
    return command


def _cached_baseline(recorder, command: list[str], out: Path) -> tuple[Path, dict[str, Any]]:
    """Runs a bench.baseline command unless `out` holds its metrics.json already."""
    metrics_path = common.resolve(out) / "metrics.json"
    if metrics_path.exists():
        recorder.command(shlex.join(command), 0.0, cached=True, run_dir=str(out))
    else:
        common.run_command(recorder, command, run_dir=str(out))
    return out, json.loads(metrics_path.read_text())


def delta_points(accuracy: float, reference: float) -> float:
    """Accuracy drop from `reference`, in percentage points (positive = worse)."""
    return round(100 * (reference - accuracy), 2)
