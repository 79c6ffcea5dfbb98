"""What `train.precision: auto` costs in accuracy: ResNet-20, E epochs, float32 vs auto (issue 15).

Four `compactcnn run`s of configs/resnet20_cifar10_jpeg.yaml on the shared CIFAR-10, dense and
pruned to 70% from scratch (polynomial, 1/16 to 3/4 of training), each in float32 and in `auto`
(mixed_bfloat16 on a CPU with AVX512-BF16 or AMX, float32 elsewhere: the results name what auto
chose). Every accuracy is the exported file's on the 10,000 test images (export is float32
whatever the training precision). A few tenths of a point either way are noise at one seed.

    python -m bench.precision_accuracy              # E=10: about 35 min on 2 bfloat16 cores
    python -m bench.precision_accuracy --quick      # 1 epoch of 3 steps on the sample
"""

from __future__ import annotations

from typing import Any

from bench import common, runs

NAME = "precision_accuracy"
# The bar: a larger loss than this blocks making `auto` the default.
MAX_COST_POINTS = 0.5


def main(argv: list[str] | None = None) -> int:
    """Trains (or reuses) the four runs and writes `precision_accuracy.json`."""
    arguments = common.parser(__doc__.splitlines()[0])
    runs.arguments(arguments)
    args = arguments.parse_args(argv)
    runs.quick(args)
    recorder = common.Recorder(NAME, argv, settings=dict(vars(args)))
    rows = []
    for sparsity in (0.0, 0.7):
        for precision in ("float32", "auto"):
            rows.append(_measure(recorder, args, sparsity, precision))
            recorder.write(args.results_dir, {"epochs": args.epochs, "rows": rows}, {})
    targets = {}
    for sparsity in (0.0, 0.7):
        pair = {row["precision"]: row for row in rows if row["sparsity_target"] == sparsity}
        cost = round(100 * (pair["float32"]["accuracy"] - pair["auto"]["accuracy"]), 2)
        label = "dense" if sparsity == 0 else f"{sparsity:.0%} pruned"
        targets[f"{label}: float32 - auto <= {MAX_COST_POINTS} points"] = common.target(
            cost, MAX_COST_POINTS, higher_is_better=False
        )
    print(common.table(rows, ["sparsity_target", "precision", "policy", "accuracy", "img_per_s"]))
    recorder.write(args.results_dir, {"epochs": args.epochs, "rows": rows}, targets)
    return 0


def _measure(recorder, args, sparsity: float, precision: str) -> dict[str, Any]:
    overrides = [f"train.epochs={args.epochs}", f"train.precision={precision}"]
    if sparsity:
        overrides += [
            "prune.schedule=polynomial",
            f"prune.final_sparsity={sparsity}",
            f"prune.begin_epoch={0 if args.quick else args.epochs / 16}",
            f"prune.end_epoch={0.75 * args.epochs}",
        ]
    if args.quick:
        overrides += common.quick_run_overrides()
    label = f"precision-{precision}-s{round(sparsity * 100)}-e{args.epochs}"
    run_dir, metrics = common.compactcnn_run(recorder, label, overrides, args.cache_dir)
    return {
        "sparsity_target": sparsity,
        "precision": precision,
        "policy": metrics["train"]["precision"],
        "accuracy": metrics["tflite"]["float32"]["accuracy"],
        "int8_accuracy": metrics["tflite"]["int8"]["accuracy"],
        "sparsity": round(metrics.get("pruning", {}).get("overall_sparsity", 0.0), 4),
        "img_per_s": metrics["train"]["images_per_second"],
        "train_seconds": metrics["train"]["seconds"],
        "run_dir": str(run_dir),
    }


if __name__ == "__main__":
    raise SystemExit(main())
