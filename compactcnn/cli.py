"""The `compactcnn` command: parse arguments, call one stage, print user mistakes as one line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from compactcnn.errors import UserError


def run_command_line(
    config: str | Path, overrides: list[str], run_dir: str | Path, python: str = sys.executable
) -> list[str]:
    """The `compactcnn run` command for one run: the one place sweeps and benchmarks build it."""
    command = [python, "-m", "compactcnn", "run", str(config)]
    for override in overrides:
        command += ["--set", override]
    return command + ["--out", str(run_dir)]


def _run(args: argparse.Namespace) -> int:
    from compactcnn.config import load_config
    from compactcnn.run import run

    config = load_config(args.config, args.set)
    run_dir = Path(args.out) if args.out else Path(config.output.dir) / Path(args.config).stem
    metrics = run(config, run_dir, verbose=args.verbose)
    summary = {"run_dir": str(run_dir), "keras_accuracy": metrics["keras"]["test_accuracy"]}
    for name, result in metrics["tflite"].items():
        summary[f"{name}_accuracy"] = result["accuracy"]
        summary[f"{name}_gzip_bytes"] = result["gzip_bytes"]
    print(json.dumps(summary, indent=2))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from compactcnn import evaluate
    from compactcnn.config import load_config
    from compactcnn.data import load_data
    from compactcnn.predict import input_size

    model_path = Path(args.model)
    model = evaluate.load_model_file(model_path)
    # The images are read at the size the model takes (the user's --set may still override it).
    height, width = input_size(model)
    size = f"data.image_size=[{height}, {width}]"
    config = load_config(None, [f"data.name={args.data}", size, *args.set])
    data = load_data(config.data)
    if model_path.suffix == ".keras":
        result = evaluate.evaluate_keras(model, data.x_test, data.y_test)
        result.pop("predictions")
    else:
        result = evaluate.evaluate_tflite(
            model_path,
            data.x_test,
            data.y_test,
            threads=args.threads,
            latency_runs=args.latency_runs,
        )
    print(json.dumps({"model": str(model_path), "data": args.data, **result}, indent=2))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from compactcnn.predict import format_table, predict_files

    results = predict_files(args.model, [Path(image) for image in args.images], top=5)
    print(json.dumps(results, indent=2) if args.json else format_table(results))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from compactcnn.sweep import run_sweep

    out = run_sweep(args.study, out_dir=args.out, jobs=args.jobs)
    print(f"results: {out}")
    return 0


def _tune(args: argparse.Namespace) -> int:
    from compactcnn.tuning import run_tuning

    out = run_tuning(args.study, out_dir=args.out, storage_url=args.storage, study_name=args.name)
    print(f"results: {out}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from compactcnn.report import write_report

    path = write_report(
        args.dir,
        max_bytes=args.max_bytes,
        max_latency_ms=args.max_latency_ms,
        metric=args.metric,
        storage=args.storage,
    )
    print(f"report: {path}")
    return 0


def _sensitivity(args: argparse.Namespace) -> int:
    from compactcnn import sensitivity

    path = sensitivity.measure_run(
        args.run, sensitivity.parse_sparsities(args.sparsities), args.images
    )
    print(f"sensitivity: {path} and {path.with_name(sensitivity.CHART_FILE).name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="compactcnn",
        description="Train, prune and quantize CIFAR ResNets; export small, fast TFLite models.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="train, compress, export and evaluate one model")
    run.add_argument("config", help="YAML config, e.g. configs/quickstart.yaml")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override, e.g. train.epochs=3",
    )
    run.add_argument("--out", help="run directory (default: <output.dir>/<config name>)")
    run.add_argument(
        "--verbose", type=int, default=1, choices=(0, 1, 2), help="Keras progress: 0, 1 bar, 2 line"
    )
    run.set_defaults(func=_run)

    evaluate = commands.add_parser("evaluate", help="measure a .keras or .tflite on a test set")
    evaluate.add_argument("model", help="model.keras or a .tflite file")
    evaluate.add_argument("--data", required=True, help="data.name, e.g. cifar10 or sample")
    evaluate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    evaluate.add_argument("--threads", type=int, default=2)
    evaluate.add_argument("--latency-runs", type=int, default=50)
    evaluate.set_defaults(func=_evaluate)

    predict = commands.add_parser("predict", help="top-5 classes of image files")
    predict.add_argument("model", help="model.keras or a .tflite file")
    predict.add_argument(
        "images", nargs="+", help="image files (any size; resized to the model's input)"
    )
    predict.add_argument("--json", action="store_true", help="print JSON instead of a table")
    predict.set_defaults(func=_predict)

    sweep = commands.add_parser("sweep", help="run every point of a study grid (resumable)")
    sweep.add_argument("study", help="study YAML, e.g. configs/studies/quick.yaml")
    sweep.add_argument("--out", help="sweep directory (default: runs/sweeps/<study name>)")
    sweep.add_argument("--jobs", type=int, default=1, help="runs at once")
    sweep.set_defaults(func=_sweep)

    tune = commands.add_parser(
        "tune", help="search a study's space with Optuna (resumable, shareable by many processes)"
    )
    tune.add_argument("study", help="tuning study YAML, e.g. configs/studies/tune_tiny.yaml")
    tune.add_argument("--out", help="tuning directory (default: runs/tuning/<study name>)")
    tune.add_argument(
        "--storage",
        help="Optuna RDB URL shared by every process of the study, e.g. "
        "postgresql://user@host:5432/db (default: sqlite:///<out>/optuna.db)",
    )
    tune.add_argument(
        "--study-name", dest="name", help="the study's name in the storage (default: file stem)"
    )
    tune.set_defaults(func=_tune)

    report = commands.add_parser(
        "report", help="tables, charts and the best model of a sweep or tuning folder"
    )
    report.add_argument("dir", help="sweep or tuning directory")
    report.add_argument("--max-bytes", type=int, help="size budget of the chosen file")
    report.add_argument("--max-latency-ms", type=float, help="latency budget per image")
    report.add_argument("--metric", default="tflite.int8.accuracy", help="what 'best' maximizes")
    report.add_argument(
        "--storage", help="a tuning folder's storage URL, when tune.yaml hides its password"
    )
    report.set_defaults(func=_report)

    sensitivity = commands.add_parser(
        "sensitivity",
        help="accuracy drop of each layer pruned alone, for prune.allocation=sensitivity",
    )
    sensitivity.add_argument("run", help="a finished run directory; sensitivity.csv goes there")
    sensitivity.add_argument(
        "--sparsities",
        default="0.5,0.7,0.8,0.9,0.95",
        help="comma-separated sparsities each layer is tested at",
    )
    sensitivity.add_argument(
        "--images",
        type=int,
        default=2000,
        help="images measured on: of the validation split, else of the training set (never test)",
    )
    sensitivity.set_defaults(func=_sensitivity)

    try:
        from compactcnn.vertex import add_vertex_parser
    except ImportError:  # pragma: no cover - vertex.py is always shipped
        add_vertex_parser = None
    if add_vertex_parser is not None:
        add_vertex_parser(commands)
    return parser


def parse_arguments(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parses `argv`; only commands that set `extra_arguments` accept options they do not know.

    `vertex trial` is such a command: Vertex AI appends `--<parameter>=<value>` for each searched
    key, and the study file, not the parser, knows those keys. The others reject them as usual.
    """
    args, unknown = parser.parse_known_args(list(argv))
    if unknown and not getattr(args, "extra_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.unknown = unknown
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `compactcnn` console script.

    Returns:
        0 on success, 2 for a user mistake (printed as one line), 130 when interrupted.
    """
    args = parse_arguments(build_parser(), sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
