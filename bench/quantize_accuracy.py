"""Every export format of dense and 70%-pruned ResNet-20, and prune-preserving QAT (issue 4).

Reads the dense run and the 70% fine-tuned run (cached, shared with accuracy_budget), and trains
one more: the same fine-tuning followed by one epoch of prune-preserving quantization-aware
training (`quantize.qat=true`). For each file: accuracy, bytes, gzip bytes, compression ratios
against the dense float32 file, and for pruned runs the fraction of the pruned zeros that survive
into the int8 file (int8 zeros fraction / Keras kernel sparsity).

    python -m bench.quantize_accuracy            # E=10, F=3: about 10 min after accuracy_budget
    python -m bench.quantize_accuracy --quick    # 1 epoch of 3 steps on the sample
"""

from __future__ import annotations

from bench import common, runs
from compactcnn.config import EXPORT_FORMATS

NAME = "quantize_accuracy"
SPARSITY = 0.7


def main(argv: list[str] | None = None) -> int:
    """Runs (or reuses) the three runs and writes `quantize_accuracy.json`."""
    arguments = common.parser(__doc__.splitlines()[0])
    runs.arguments(arguments)
    arguments.add_argument("--qat-epochs", type=int, default=1)
    args = arguments.parse_args(argv)
    runs.quick(args)
    recorder = common.Recorder(NAME, argv, settings=dict(vars(args)))

    dense_dir, dense = runs.dense(recorder, args)
    pruned_dir, pruned = runs.finetune(recorder, args, dense_dir, SPARSITY)
    qat_dir, qat = runs.finetune(
        recorder,
        args,
        dense_dir,
        SPARSITY,
        extra=("quantize.qat=true", f"quantize.qat_epochs={args.qat_epochs}"),
        suffix=f"-pqat{args.qat_epochs}",
    )
    rows = []
    for name, run_dir, metrics in (
        ("dense", dense_dir, dense),
        ("pruned70", pruned_dir, pruned),
        ("pruned70+pqat", qat_dir, qat),
    ):
        sparsity = metrics.get("pruning", {}).get("overall_sparsity")
        for format_name in EXPORT_FORMATS:
            result = metrics["tflite"].get(format_name)
            if result is None:
                continue
            rows.append(
                {
                    "model": name,
                    "format": format_name,
                    "accuracy": result["accuracy"],
                    "keras_accuracy": metrics["keras"]["test_accuracy"],
                    "bytes": result["bytes"],
                    "gzip_bytes": result["gzip_bytes"],
                    "compression_bytes": result["compression_bytes"],
                    "compression_gzip": result["compression_gzip"],
                    "zeros_fraction": round(result["zeros_fraction"], 4),
                    "zeros_kept": round(result["zeros_fraction"] / sparsity, 4)
                    if sparsity
                    else None,
                    "qat": bool(result.get("qat", False)),
                    "run_dir": str(run_dir),
                }
            )
    columns = [
        "model",
        "format",
        "accuracy",
        "bytes",
        "gzip_bytes",
        "compression_bytes",
        "compression_gzip",
        "zeros_fraction",
        "zeros_kept",
    ]
    print(common.table(rows, columns))
    int8_qat = next(
        row for row in rows if row["model"] == "pruned70+pqat" and row["format"] == "int8"
    )
    targets = {
        # The tf-stack notes measured 0.700 of 0.70 zeros kept by prune-preserving QAT.
        "pqat int8 keeps >= 0.99 of the pruned zeros": common.target(int8_qat["zeros_kept"], 0.99)
    }
    results = {"epochs": args.epochs, "finetune_epochs": args.finetune_epochs, "rows": rows}
    recorder.write(args.results_dir, results, targets)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
