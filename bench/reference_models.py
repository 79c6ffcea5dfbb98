"""The field's reference models against their published targets: ResNet-8 vs MLPerf Tiny (issue 14).

MLPerf Tiny's image-classification reference is a ResNet-8 (78,666 parameters) on CIFAR-10 whose
quality target is 85% top-1 for the int8 model, a file of about 96 KB. This benchmark trains
`resnet8_tiny` with our recipe and compression (configs/resnet8_tiny_cifar10.yaml: 50% polynomial
pruning, int8) on the shared JPEG CIFAR-10 for `--epochs`, and the dense model beside it, and
writes each exported file's test accuracy, raw `.tflite` bytes (what a microcontroller's flash
holds) and gzip bytes against that target. The reference trains for 500 epochs on the original
PNG data; every row states its epochs.

    python -m bench.reference_models                 # E=40: about 40 min on 2 cores
    python -m bench.reference_models --rows pruned50 --epochs 60
    python -m bench.reference_models --quick         # 1 epoch of 3 steps on the sample
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import common

NAME = "reference_models"
CONFIG = "configs/resnet8_tiny_cifar10.yaml"
# MLPerf Tiny v1.0 image classification: the quality target and the reference int8 file.
TARGET_ACCURACY = 0.85
REFERENCE_INT8_BYTES = 96_000
# name -> (what it is, overrides). The pruning schedule is the config's, scaled to the epochs.
ROWS: dict[str, tuple[str, list[str]]] = {
    "pruned50": ("ResNet-8, polynomial pruning to 50%, int8 (the config as shipped)", []),
    "dense": ("ResNet-8, dense, int8", ["prune.schedule=none"]),
}


def main(argv: list[str] | None = None) -> int:
    """Trains (or reuses) each row's run and writes `reference_models.json`."""
    arguments = common.parser(__doc__.splitlines()[0])
    common.data_arguments(arguments)
    arguments.add_argument("--epochs", type=int, default=40)
    arguments.add_argument("--rows", default=",".join(ROWS), help="comma-separated row names")
    arguments.add_argument("--cache-dir", type=Path, default=common.CACHE_DIR)
    args = arguments.parse_args(argv)
    names = [name.strip() for name in args.rows.split(",") if name.strip()]
    unknown = sorted(set(names) - set(ROWS))
    if unknown:
        arguments.error(f"unknown rows {unknown}; choose from {sorted(ROWS)}")
    if args.quick:
        args.epochs = 1
    recorder = common.Recorder(NAME, argv, settings=dict(vars(args)))
    rows = [_measure(recorder, args, name) for name in names]
    print(common.table(rows, ["row", "epochs", "format", "accuracy", "bytes", "gzip_bytes"]))
    targets = {}
    for row in rows:
        if row["format"] == "int8":
            targets[f"{row['row']}: int8 top-1 >= {TARGET_ACCURACY:.0%} (MLPerf Tiny)"] = (
                common.target(row["accuracy"], TARGET_ACCURACY)
            )
    recorder.write(args.results_dir, {"epochs": args.epochs, "rows": rows}, targets)
    return 0


def overrides(args, name: str) -> list[str]:
    """The row's settings: the shared JPEG CIFAR-10 and the config's schedule scaled to E."""
    settings = [
        "data.name=imagefolder",
        f"data.path={args.data_path}",
        # The reference trains on all 50,000 images; the test split is only ever measured.
        "data.validation_size=0",
        f"train.epochs={args.epochs}",
        # The config prunes from epoch 20 to 150 of 200: the same fractions of E.
        f"prune.begin_epoch={args.epochs / 10:g}",
        f"prune.end_epoch={0.75 * args.epochs:g}",
        *ROWS[name][1],
    ]
    return settings + (common.quick_run_overrides() if args.quick else [])


def _measure(recorder, args, name: str) -> dict[str, Any]:
    run_dir, metrics = common.compactcnn_run(
        recorder, f"{name}-e{args.epochs}", overrides(args, name), args.cache_dir, config=CONFIG
    )
    return rows_of(name, args.epochs, metrics, run_dir)


def rows_of(name: str, epochs: int, metrics: dict[str, Any], run_dir) -> dict[str, Any]:
    """The int8 row of one run: accuracy, raw and gzip bytes, against the MLPerf Tiny target."""
    int8 = metrics["tflite"]["int8"]
    return {
        "row": name,
        "description": ROWS[name][0],
        "epochs": epochs,
        "format": "int8",
        "float32_accuracy": metrics["tflite"]["float32"]["accuracy"],
        "accuracy": int8["accuracy"],
        "target_accuracy": TARGET_ACCURACY,
        "vs_target_points": round(100 * (int8["accuracy"] - TARGET_ACCURACY), 2),
        "bytes": int8["bytes"],
        "gzip_bytes": int8["gzip_bytes"],
        "reference_int8_bytes": REFERENCE_INT8_BYTES,
        "zeros_fraction": round(int8["zeros_fraction"], 4),
        "params": metrics["keras"]["params"],
        "train_seconds": metrics["train"]["seconds"],
        "run_dir": str(run_dir),
    }


if __name__ == "__main__":
    raise SystemExit(main())
