"""Test accuracy of ResNet-20 pruned to 60% and 70%, from scratch and by fine-tuning (issue 3).

Runs (cached in `--cache-dir`, shared with accuracy_budget where the settings are identical):
dense for `--epochs`; polynomial pruning from scratch for the same epochs (pruning from 1/16 to
3/4 of training, as configs/pruning/* do over 160 epochs); and the dense run fine-tuned with
polynomial pruning for `--finetune-epochs`. Prints test accuracy and the change against dense.

    python -m bench.prune_accuracy               # E=10, F=3: about 40 min after accuracy_budget
    python -m bench.prune_accuracy --quick       # 1 epoch of 3 steps on the sample
"""

from __future__ import annotations

from bench import common, runs

NAME = "prune_accuracy"


def main(argv: list[str] | None = None) -> int:
    """Runs (or reuses) the five runs and writes `prune_accuracy.json`."""
    arguments = common.parser(__doc__.splitlines()[0])
    runs.arguments(arguments)
    arguments.add_argument("--sparsities", default="0.6,0.7")
    args = arguments.parse_args(argv)
    runs.quick(args)
    sparsities = [float(value) for value in args.sparsities.split(",")]
    recorder = common.Recorder(NAME, argv, settings=dict(vars(args)))

    dense_dir, dense = runs.dense(recorder, args)
    reference = dense["keras"]["test_accuracy"]
    rows = [_row("dense", "-", dense, reference, dense_dir)]
    for sparsity in sparsities:
        run_dir, metrics = runs.scratch(recorder, args, sparsity)
        rows.append(_row(f"{round(sparsity * 100)}%", "from scratch", metrics, reference, run_dir))
        run_dir, metrics = runs.finetune(recorder, args, dense_dir, sparsity)
        rows.append(_row(f"{round(sparsity * 100)}%", "fine-tuned", metrics, reference, run_dir))
    print(common.table(rows, ["model", "method", "sparsity", "test_accuracy", "delta_points"]))
    results = {"epochs": args.epochs, "finetune_epochs": args.finetune_epochs, "rows": rows}
    recorder.write(args.results_dir, results, targets={})
    return 0


def _row(name: str, method: str, metrics: dict, reference: float, run_dir) -> dict:
    accuracy = metrics["keras"]["test_accuracy"]
    return {
        "model": name,
        "method": method,
        "sparsity": round(metrics.get("pruning", {}).get("overall_sparsity", 0.0), 4),
        "test_accuracy": accuracy,
        # Positive: better than dense (+ 0.0 turns a -0.0 into 0.0).
        "delta_points": round(100 * (accuracy - reference), 2) + 0.0,
        "train_seconds": metrics["train"]["seconds"],
        "run_dir": str(run_dir),
    }


if __name__ == "__main__":
    raise SystemExit(main())
