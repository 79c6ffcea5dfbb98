"""Accuracy vs size: dense ResNet-20, fine-tuned to 70/80/90% sparsity, exported to int8.

Trains the dense model for `--epochs` with `compactcnn run` (cached in `--cache-dir`), fine-tunes
it with polynomial pruning (`prune.from_run`) to each sparsity for `--finetune-epochs`, and reads
every run's metrics.json: Keras accuracy, int8 accuracy, zeros in the int8 file, gzip bytes and
the compression against the dense float32 file's gzip bytes. The plain tf_keras baseline
(bench/baseline.py) trained for the same epochs gives the reference a user gets without us.

    python -m bench.accuracy_budget          # E=10, F=3, +16 clusters: ~65 min on 2 cores, cold
    python -m bench.accuracy_budget --quick  # 1 epoch of 3 steps on the sample
"""

from __future__ import annotations

from bench import common, runs

NAME = "accuracy_budget"
# sparsity: (max drop in points of int8 vs dense float, min gzip compression vs dense float32)
BUDGETS = {0.7: (1.0, 10.0), 0.8: (1.5, 13.0)}


def main(argv: list[str] | None = None) -> int:
    """Runs (or reuses) the training runs and writes `accuracy_budget.json`."""
    arguments = common.parser(__doc__.splitlines()[0])
    runs.arguments(arguments)
    arguments.add_argument("--sparsities", default="0.7,0.8,0.9")
    arguments.add_argument(
        "--clusters",
        type=int,
        default=16,
        help="also fine-tune each budgeted sparsity with this many shared weights (0: skip)",
    )
    args = arguments.parse_args(argv)
    runs.quick(args)
    if args.quick:
        args.sparsities = "0.7"
    sparsities = [float(value) for value in args.sparsities.split(",")]
    recorder = common.Recorder(NAME, argv, settings=dict(vars(args)))

    dense_dir, dense = runs.dense(recorder, args)
    reference = dense["keras"]["test_accuracy"]
    baseline = runs.baseline(recorder, args)
    rows = [
        {
            "model": "plain tf_keras, strong recipe",
            "sparsity": 0.0,
            "keras_accuracy": baseline["test_accuracy"],
        },
        _row("dense", dense, reference, str(dense_dir)),
    ]
    budgeted = []  # (row, sparsity) pairs that the size/accuracy budgets apply to
    for sparsity in sparsities:
        run_dir, metrics = runs.finetune(recorder, args, dense_dir, sparsity)
        rows.append(_row(f"fine-tuned {round(sparsity * 100)}%", metrics, reference, str(run_dir)))
        budgeted.append((rows[-1], sparsity, ""))
        if args.clusters and sparsity in BUDGETS:
            # Shared weight values cut the entropy of the int8 codes, which is what gzip saves.
            extra = (f"quantize.weight_clusters={args.clusters}",)
            suffix = f"-c{args.clusters}"
            run_dir, metrics = runs.finetune(recorder, args, dense_dir, sparsity, extra, suffix)
            name = f"fine-tuned {round(sparsity * 100)}% + {args.clusters} clusters"
            rows.append(_row(name, metrics, reference, str(run_dir)))
            budgeted.append((rows[-1], sparsity, f" ({args.clusters} clusters)"))

    # The value is dense minus baseline accuracy, in points.
    targets = {
        "dense beats the plain baseline": common.target(
            round(100 * (reference - baseline["test_accuracy"]), 2), 0.0
        )
    }
    for row, sparsity, variant in budgeted:
        if sparsity in BUDGETS:
            max_drop, min_compression = BUDGETS[sparsity]
            percent = f"{round(sparsity * 100)}%{variant}"
            targets[f"{percent} int8 within {max_drop} pt of dense float"] = common.target(
                row["int8_drop_points"], max_drop, higher_is_better=False
            )
            targets[f"{percent} int8 gzip <= 1/{min_compression:g} of dense float32"] = (
                common.target(row["int8_compression_gzip"], min_compression)
            )
    columns = [
        "model",
        "sparsity",
        "keras_accuracy",
        "int8_accuracy",
        "int8_drop_points",
        "int8_zeros_fraction",
        "int8_gzip_bytes",
        "int8_compression_gzip",
    ]
    print(common.table(rows, columns))
    results = {
        "epochs": args.epochs,
        "finetune_epochs": args.finetune_epochs,
        "dense_float32_gzip_bytes": dense["baseline"]["dense_float32_gzip_bytes"],
        "rows": rows,
    }
    recorder.write(args.results_dir, results, targets)
    return 0


def _row(name: str, metrics: dict, reference: float, run_dir: str) -> dict:
    int8 = metrics["tflite"]["int8"]
    return {
        "model": name,
        "sparsity": metrics.get("pruning", {}).get("overall_sparsity", 0.0),
        "keras_accuracy": metrics["keras"]["test_accuracy"],
        "float32_accuracy": metrics["tflite"].get("float32", {}).get("accuracy"),
        "int8_accuracy": int8["accuracy"],
        "int8_drop_points": runs.delta_points(int8["accuracy"], reference),
        "int8_zeros_fraction": round(int8["zeros_fraction"], 4),
        "int8_gzip_bytes": int8["gzip_bytes"],
        "int8_compression_gzip": int8["compression_gzip"],
        "run_dir": run_dir,
    }


if __name__ == "__main__":
    raise SystemExit(main())
