"""Accuracy vs size at one training budget: ResNet-20 at 70/80/90% zeros, int8 (issue 11).

Every row gets the same budget: E dense epochs (`--epochs`), then F = P + C + Q compression
epochs. Our rows fine-tune the dense run (`prune.from_run`) for P pruning epochs
(`--finetune-epochs`), C clustering epochs (`--cluster-epochs`) and Q PCQAT epochs
(`--qat-epochs`); a row without clustering and QAT prunes for all F epochs instead, and plain
tfmot (bench/baseline.py: the strong plain recipe for E epochs, then `prune_low_magnitude` for F
epochs, post-training int8) too. At each sparsity:

- `best`: the whole combination: `--allocation` (sensitivity, from `compactcnn sensitivity` on
  the dense run, or global_magnitude), `--clusters` shared values per layer and prune- and
  cluster-preserving QAT (PCQAT) before the int8 export;
- `plain_tfmot`: what a competent user gets without us (see bench/baseline.py);
- `no_pcqat`, `uniform`: `best` with one technique removed (no clusters and no PCQAT, the int8
  file then post-training quantized; uniform allocation);
- `kd`: `best` plus distillation from the dense run (it was part of `best` until the QAT
  model's BN statistics were recalibrated: since then it adds nothing measurable here);
- `no_qat`: `best` without PCQAT: C + Q clustering epochs, then post-training int8.

Every int8 file is read back: zeros, distinct values (per quantization scale and per tensor),
bytes, gzip bytes and batch-1 latency at 1 thread are measured here from the file; the Keras and
int8 accuracies (10,000 test images) come from the run that wrote it. The drop is against our
dense model (the one the compression started from), the size ratio against the dense float32
file of the row's own architecture. Rows run best, plain_tfmot, then the ablations, each for
every sparsity, so a partial run already answers the targets. The results JSON is rewritten after
every row; a row already in it with the same budget and settings is taken from there, so the
benchmark can span machines whose cache folders are gone.

    python -m bench.accuracy_budget                  # E=10, F=8+1+1: ~5 h on 2 cores, cold
    python -m bench.accuracy_budget --sparsities 0.7 --rows best,plain_tfmot
    python -m bench.accuracy_budget --finetune-epochs 3 \
        --results-dir bench/results/accuracy_budget-f5  # the first budget, F=3+1+1
    python -m bench.accuracy_budget --seed 1 --rows best,plain_tfmot \
        --results-dir bench/results/accuracy_budget-seed1  # a second seed, every run of its own
    python -m bench.accuracy_budget --quick          # 70% only, 3 steps per epoch, the sample
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from bench import common, runs
from compactcnn import distribute, evaluate
from compactcnn.config import CLUSTER_GRADIENTS, QuantizeConfig, load_config

NAME = "accuracy_budget"
# sparsity: (max int8 drop in points vs our dense model, min gzip compression vs dense float32)
BUDGETS = {0.7: (0.5, 10.0), 0.8: (1.0, 15.0), 0.9: (2.0, 25.0)}
# The best combination's int8 accuracy must beat plain tfmot's by this many points.
MARGIN_OVER_TFMOT = 1.0
# Row kinds in the order they run; "dense" (the reference) always comes first.
ROWS = {
    "best": "allocation + clusters + PCQAT",
    "plain_tfmot": "strong plain recipe + tfmot prune_low_magnitude, post-training int8",
    "no_pcqat": "best without clusters and PCQAT (post-training int8; their epochs prune)",
    "uniform": "best with prune.allocation=uniform",
    "kd": "best with distillation from the dense run",
    # Post-training int8 keeps the clusters and zeros too (each per-channel scale maps a kernel's
    # shared values to as many codes); its QAT epoch clusters instead.
    "no_qat": "best without PCQAT: clusters, then post-training int8",
}
# Stands for the dense run directory in a row's settings, so they do not depend on --cache-dir.
DENSE = "<dense>"
COLUMNS = [
    "row",
    "sparsity",
    "keras_accuracy",
    "int8_accuracy",
    "drop_points",
    "zeros_fraction",
    "max_distinct_per_scale",
    "bytes",
    "gzip_bytes",
    "gzip_ratio",
    "latency_ms",
    "total_epochs",
]


def main(argv: list[str] | None = None) -> int:
    """Runs (or reuses) every requested row and writes `accuracy_budget.json`."""
    arguments = common.parser(__doc__.splitlines()[0])
    runs.arguments(arguments)
    # F = 10 = E, as the issue allows: at F = 3 + 1 + 1 the 80% and 90% rows lost their points
    # to too few pruning epochs (bench/results/accuracy_budget-f5/).
    arguments.set_defaults(finetune_epochs=8)
    arguments.add_argument("--cluster-epochs", type=int, default=1)
    arguments.add_argument("--qat-epochs", type=int, default=1, help="PCQAT fine-tune epochs")
    arguments.add_argument(
        "--finetune-learning-rate",
        type=float,
        default=0.1,
        help="peak rate (cosine, no warm-up) of the pruning epochs, ours and plain tfmot's",
    )
    arguments.add_argument("--sparsities", default="0.7,0.8,0.9")
    arguments.add_argument("--clusters", type=int, default=16, help="shared values per layer")
    arguments.add_argument(
        "--cluster-gradient",
        choices=CLUSTER_GRADIENTS,
        default=QuantizeConfig.cluster_gradient,
        help="quantize.cluster_gradient of the clustering epochs",
    )
    arguments.add_argument(
        "--cluster-learning-rate", type=float, default=QuantizeConfig.cluster_learning_rate
    )
    arguments.add_argument(
        "--allocation", choices=("sensitivity", "global_magnitude"), default="sensitivity"
    )
    # On by default: shorter names are bytes of our files that nothing reads (the signature and
    # the io names stay), as a user shipping the smallest file would set it.
    arguments.add_argument(
        "--short-tensor-names",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="quantize.short_tensor_names in our compressed rows' files",
    )
    arguments.add_argument(
        "--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}"
    )
    arguments.add_argument(
        "--latency-runs", type=int, default=100, help="timed batch-1 invocations per file"
    )
    arguments.add_argument(
        "--seed", type=int, default=0, help="train.seed of every run (plain tfmot: its --seed)"
    )
    args = arguments.parse_args(argv)
    runs.quick(args)
    if args.quick:
        args.cluster_epochs = args.qat_epochs = 1
        args.sparsities, args.latency_runs = "0.7", 5
    kinds = [kind for kind in args.rows.split(",") if kind]
    unknown = sorted(set(kinds) - set(ROWS))
    if unknown:
        raise SystemExit(f"unknown row(s) {unknown}; choose from {list(ROWS)}")
    sparsities = [float(value) for value in args.sparsities.split(",")]
    recorder = common.Recorder(NAME, argv, settings=dict(vars(args)))

    budget = _budget(args)
    context = _Context(recorder, args)
    finished = _finished_rows(args, budget)
    wanted = [("dense", 0.0)] + [(kind, s) for kind in ROWS if kind in kinds for s in sparsities]
    # Rows of the results JSON that this call does not redo stay in it.
    rows = [row for key, row in finished.items() if key[:2] not in wanted]
    for kind, sparsity in wanted:
        key = (kind, sparsity, _settings(args, kind, sparsity))
        row = finished.get(key)
        if row is None:
            row = context.measure(kind, sparsity, list(key[2]))
            _check_budget(row, budget)
        else:
            print(f"{kind} {sparsity:g}: taken from the results JSON")
        rows.append(row)
        _write(recorder, args, budget, rows)
    if context.dense_loaded:
        # The dense row describes the dense run this call's rows started from. A dense row
        # taken from the JSON may come from a run retrained on another machine: bfloat16
        # kernels differ between CPUs, so the same settings can give another model.
        dense_dir, dense = context.dense()
        int8_file = common.resolve(dense_dir) / dense["tflite"]["int8"]["path"]
        index = next(i for i, row in enumerate(rows) if row["row"] == "dense")
        if rows[index]["int8_sha256"] != hashlib.sha256(int8_file.read_bytes()).hexdigest():
            print("the dense run differs from the results JSON's dense row: row replaced")
            rows[index] = context.measure("dense", 0.0, list(_settings(args, "dense", 0.0)))
            _write(recorder, args, budget, rows)
    print(common.table(_ordered(rows), COLUMNS))
    return 0


def _budget(args) -> dict[str, Any]:
    """What every row's epochs add up to, and what else must match for a row to be reused."""
    compression = args.finetune_epochs + args.cluster_epochs + args.qat_epochs
    config_path = common.resolve(common.JPEG_CONFIG)
    config = config_path.read_bytes()
    # `train.precision: auto` trains in mixed_bfloat16 on a CPU that computes it natively and in
    # float32 elsewhere: a row measured on the other kind of machine started from another dense
    # model, so it is not reused.
    precision, _ = distribute.choose_precision(load_config(config_path).train.precision)
    return {
        "dense_epochs": args.epochs,
        "compression_epochs": compression,
        "total_epochs": args.epochs + compression,
        "chain": {
            "prune": args.finetune_epochs,
            "cluster": args.cluster_epochs,
            "qat": args.qat_epochs,
        },
        "config": common.JPEG_CONFIG,
        "config_sha256": hashlib.sha256(config).hexdigest(),
        "finetune_learning_rate": args.finetune_learning_rate,
        "precision": precision,
        "quick": args.quick,
    }


def _epochs(args, kind: str) -> dict[str, int]:
    """The epochs a row spends in each stage (the chain's cluster and QAT epochs prune when the
    row has no chain)."""
    chain = kind in ("best", "uniform", "kd", "no_qat")
    compression = args.finetune_epochs + args.cluster_epochs + args.qat_epochs
    qat = args.qat_epochs if chain and kind != "no_qat" else 0
    epochs = {
        "dense": args.epochs,
        "prune": 0 if kind == "dense" else args.finetune_epochs if chain else compression,
        "cluster": args.cluster_epochs + args.qat_epochs - qat if chain else 0,
        "qat": qat,
    }
    return {**epochs, "total": sum(epochs.values())}


def _check_budget(row: dict[str, Any], budget: dict[str, Any]) -> None:
    wanted = budget["dense_epochs"] if row["row"] == "dense" else budget["total_epochs"]
    if row["epochs"]["total"] != wanted:
        raise RuntimeError(f"{row['row']} used {row['epochs']}, not {wanted} epochs")


def _settings(args, kind: str, sparsity: float) -> tuple[str, ...]:
    """A row's settings: its `--set` overrides (plain tfmot: its options), the dense run dir as
    DENSE. Equal settings and budget: the row in the results JSON is reused."""
    epochs = _epochs(args, kind)
    # Seed 0 adds nothing, so the rows measured before --seed existed are still reused.
    seed = [f"train.seed={args.seed}"] if args.seed else []
    if kind == "dense":
        return (f"train.epochs={args.epochs}", *seed)
    if kind == "plain_tfmot":
        plain = (
            "bench.baseline",
            "--recipe strong",
            f"--prune-epochs {epochs['prune']}",
            f"--prune-learning-rate {args.finetune_learning_rate:g}",
        )
        return plain + ((f"--seed {args.seed}",) if args.seed else ())
    overrides = [
        f"train.epochs={epochs['prune']}",
        f"prune.final_sparsity={sparsity}",
        f"prune.allocation={'uniform' if kind == 'uniform' else args.allocation}",
        *seed,
    ]
    if kind == "kd":
        overrides.append(f"distill.teacher={DENSE}")
    if epochs["cluster"]:
        overrides += [
            f"quantize.weight_clusters={args.clusters}",
            f"quantize.cluster_epochs={epochs['cluster']}",
        ]
        # Only when not the config's defaults, so the committed rows' settings stay as they were.
        if args.cluster_gradient != QuantizeConfig.cluster_gradient:
            overrides.append(f"quantize.cluster_gradient={args.cluster_gradient}")
        if args.cluster_learning_rate != QuantizeConfig.cluster_learning_rate:
            overrides.append(f"quantize.cluster_learning_rate={args.cluster_learning_rate:g}")
    if epochs["qat"]:
        overrides += ["quantize.qat=true", f"quantize.qat_epochs={epochs['qat']}"]
    if args.short_tensor_names:
        overrides.append("quantize.short_tensor_names=true")
    # Only the files the table reads: skipping float16 and dynamic_int8 saves minutes per row.
    return (*overrides, "quantize.formats=[float32, int8]")


class _Context:
    """Runs the rows; the dense run and its sensitivity.csv only when a row needs them."""

    def __init__(self, recorder: common.Recorder, args):
        self.recorder, self.args = recorder, args
        self._dense: tuple[Path, dict[str, Any]] | None = None
        self._sensitivity: Path | None = None
        self._dense_commands: list[dict[str, Any]] = []

    @property
    def dense_loaded(self) -> bool:
        """Whether a row of this call needed (and so trained or found) the dense run."""
        return self._dense is not None

    def dense(self) -> tuple[Path, dict[str, Any]]:
        if self._dense is None:
            before = len(self.recorder.commands)
            self._dense = runs.dense(self.recorder, self.args, self.args.seed)
            self._dense_commands = self.recorder.commands[before:]
        return self._dense

    def measure(self, kind: str, sparsity: float, settings: list[str]) -> dict[str, Any]:
        """Trains (or reuses the cached run of) one row and measures its int8 file.

        The row keeps the commands that made it (the results JSON's `commands` holds only the
        last call's, and a row outlives the call that measured it).
        """
        before = len(self.recorder.commands)
        row = self._measure(kind, sparsity, settings)
        made = self.recorder.commands[before:]
        row["commands"] = self._dense_commands if kind == "dense" else made
        return row

    def _measure(self, kind: str, sparsity: float, settings: list[str]) -> dict[str, Any]:
        args = self.args
        dense_dir, dense = self.dense()
        reference = dense["keras"]["test_accuracy"]
        epochs = _epochs(args, kind)
        if kind == "dense":
            return _row(
                kind,
                sparsity,
                epochs,
                settings,
                run_dir=dense_dir,
                keras_accuracy=reference,
                int8=dense["tflite"]["int8"],
                int8_file=common.resolve(dense_dir) / dense["tflite"]["int8"]["path"],
                start_accuracy=reference,
                reference=reference,
                measured_sparsity=0.0,
                dense_float32_gzip=dense["baseline"]["dense_float32_gzip_bytes"],
                latency_runs=args.latency_runs,
            )
        if kind == "plain_tfmot":
            out, metrics = runs.plain_tfmot(
                self.recorder,
                args,
                sparsity,
                epochs["prune"],
                seed=args.seed,
                learning_rate=args.finetune_learning_rate,
            )
            return _row(
                kind,
                sparsity,
                epochs,
                settings,
                run_dir=out,
                keras_accuracy=metrics["test_accuracy"],
                int8=metrics["tflite"]["int8"],
                int8_file=common.resolve(out) / metrics["tflite"]["int8"]["path"],
                start_accuracy=metrics["dense"]["test_accuracy"],
                reference=reference,
                measured_sparsity=metrics["kernel_sparsity"],
                dense_float32_gzip=metrics["dense_float32"]["gzip_bytes"],
                latency_runs=args.latency_runs,
            )
        if "prune.allocation=sensitivity" in settings and self._sensitivity is None:
            # Read by the run from the dense run directory (its prune.from_run).
            self._sensitivity = runs.sensitivity(self.recorder, args, dense_dir)
        # The first two settings (train.epochs, prune.final_sparsity) are finetune's own.
        extra = tuple(item.replace(DENSE, str(dense_dir)) for item in settings[2:])
        run_dir, metrics = runs.finetune(
            self.recorder,
            args,
            dense_dir,
            sparsity,
            extra=extra,
            suffix=f"-{kind}",
            epochs=epochs["prune"],
            learning_rate=args.finetune_learning_rate,
        )
        return _row(
            kind,
            sparsity,
            epochs,
            settings,
            run_dir=run_dir,
            keras_accuracy=metrics["keras"]["test_accuracy"],
            int8=metrics["tflite"]["int8"],
            int8_file=common.resolve(run_dir) / metrics["tflite"]["int8"]["path"],
            start_accuracy=reference,
            reference=reference,
            measured_sparsity=metrics["pruning"]["overall_sparsity"],
            dense_float32_gzip=metrics["baseline"]["dense_float32_gzip_bytes"],
            latency_runs=args.latency_runs,
        )


def _row(
    kind: str,
    sparsity: float,
    epochs: dict[str, int],
    settings: list[str],
    run_dir: Path,
    keras_accuracy: float,
    int8: dict[str, Any],
    int8_file: Path,
    start_accuracy: float,
    reference: float,
    measured_sparsity: float,
    dense_float32_gzip: int,
    latency_runs: int,
) -> dict[str, Any]:
    """One table row: the run's accuracies, and everything else measured from its int8 file."""
    measured = measure_file(int8_file, latency_runs)
    return {
        "row": kind,
        "sparsity": sparsity,
        "description": ROWS.get(kind, "our dense model: the reference"),
        "settings": settings,
        "epochs": epochs,
        "total_epochs": epochs["total"],
        "keras_accuracy": keras_accuracy,
        "int8_accuracy": int8["accuracy"],
        # The accuracy of the dense model this row's compression started from.
        "start_accuracy": start_accuracy,
        "reference_accuracy": reference,
        "drop_points": runs.delta_points(int8["accuracy"], reference),
        "measured_sparsity": round(measured_sparsity, 4),
        **measured,
        "dense_float32_gzip_bytes": dense_float32_gzip,
        "gzip_ratio": round(dense_float32_gzip / measured["gzip_bytes"], 3),
        "int8_qat": bool(int8.get("qat", False)),
        "run_dir": str(run_dir),
        "int8_file": str(common.relative(int8_file)),
    }


def measure_file(path: Path, latency_runs: int) -> dict[str, Any]:
    """What the int8 file itself holds: weight zeros, distinct values, sizes, latency, digest."""
    zeros = evaluate.count_tflite_zeros(path)
    counts = evaluate.distinct_values_per_tensor(path).values()
    shape = evaluate.load_model_file(path).get_input_details()[0]["shape"][1:]
    # Any pixels do: int8 kernels take as long whatever the values.
    image = np.random.default_rng(0).integers(0, 256, tuple(shape), dtype=np.uint8)
    return {
        "zeros_fraction": zeros["zeros_fraction"],
        "weights": zeros["weights"],
        "max_distinct_per_scale": max(count["per_scale"] for count in counts),
        "max_distinct_per_tensor": max(count["values"] for count in counts),
        **evaluate.file_sizes(path),
        # What limits the gzip ratio: the weight codes' order-0 entropy (evaluate.weight_entropy).
        **evaluate.weight_entropy(path),
        "latency_ms": round(evaluate.measure_latency(path, image, 1, latency_runs), 4),
        "latency_threads": 1,
        "latency_runs": latency_runs,
        "int8_sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(),
    }


def _finished_rows(args, budget: dict[str, Any]) -> dict[tuple, dict]:
    """Rows of an earlier results JSON with the same budget, by (row, sparsity, settings)."""
    path = Path(args.results_dir) / f"{NAME}.json"
    if not path.exists():
        return {}
    results = json.loads(path.read_text())["results"]
    # The chain's split of the F epochs does not matter to a row that spent its own epochs the
    # same way (plain tfmot and no_pcqat prune for all F whatever the split), so those rows carry
    # over to a budget that only splits F differently.
    if not results.get("budget") or _without_chain(results["budget"]) != _without_chain(budget):
        return {}
    return {
        (row["row"], row["sparsity"], tuple(row["settings"])): row
        for row in results.get("rows", [])
        if row["epochs"] == _epochs(args, row["row"])
    }


def _without_chain(budget: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in budget.items() if key != "chain"}


def _ordered(rows: list[dict]) -> list[dict]:
    order = ["dense", *ROWS]
    return sorted(rows, key=lambda row: (row["sparsity"], order.index(row["row"])))


def _write(recorder, args, budget: dict[str, Any], rows: list[dict]) -> None:
    rows = _ordered(rows)
    references = {row["reference_accuracy"] for row in rows}
    if len(references) > 1:
        print(f"warning: rows measured against different dense runs {sorted(references)}")
    by_key = {(row["row"], row["sparsity"]): row for row in rows}
    targets = {}
    for sparsity, (max_drop, min_ratio) in BUDGETS.items():
        best, plain = by_key.get(("best", sparsity)), by_key.get(("plain_tfmot", sparsity))
        if best is None and plain is None:
            continue
        percent = f"{round(sparsity * 100)}%"
        targets[f"{percent} best: int8 drop <= {max_drop} pt vs our dense"] = common.target(
            best and best["drop_points"], max_drop, higher_is_better=False
        )
        targets[f"{percent} best: int8 gzip >= {min_ratio:g}x smaller than dense float32"] = (
            common.target(best and best["gzip_ratio"], min_ratio)
        )
        margin = None
        if best and plain:
            margin = round(100 * (best["int8_accuracy"] - plain["int8_accuracy"]), 2)
        targets[f"{percent} best beats plain tfmot int8 by >= {MARGIN_OVER_TFMOT} pt"] = (
            common.target(margin, MARGIN_OVER_TFMOT)
        )
    results = {
        "budget": budget,
        "clusters": args.clusters,
        "allocation": args.allocation,
        "rows": rows,
    }
    recorder.write(args.results_dir, results, targets)


if __name__ == "__main__":
    raise SystemExit(main())
