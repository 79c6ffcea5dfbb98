"""TFLite latency at batch 1 (1 and 2 threads) and 10k-image evaluation time, per exported file.

Files: every format (float32, float16, dynamic_int8, int8) of a ResNet-20, dense and with 70% of
each Conv2D/Dense kernel zeroed by magnitude, each converted without and with
`Optimize.EXPERIMENTAL_SPARSITY`. Latency is the median of `--runs` invocations per file and
thread count, taken in interleaved rounds over all files; evaluation is the wall time of
`evaluate.predict_tflite` over the whole test set at `--eval-threads`.

Without `--model` the ResNet-20 has seeded random weights: latency and size do not depend on the
weight values (apart from the zeros), accuracy does. Pass a trained model for real accuracies:

    python -m bench.tflite_latency --model bench/cache/<dense run>/model.keras
    python -m bench.tflite_latency --quick     # float32 and int8, sample data, 20 runs
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tf_keras as keras
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from bench import common
from compactcnn import evaluate, quantize
from compactcnn.config import EXPORT_FORMATS, QuantizeConfig
from compactcnn.models import create_model

NAME = "tflite_latency"
PRUNABLE = (keras.layers.Conv2D, keras.layers.Dense)


def zero_smallest(model: keras.Model, sparsity: float) -> keras.Model:
    """A copy of the model with the `sparsity` fraction of each Conv2D/Dense kernel, smallest in
    magnitude, set to zero (what magnitude pruning leaves behind)."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for layer in copy.layers:
        if isinstance(layer, PRUNABLE):
            kernel = layer.kernel.numpy()
            count = int(round(sparsity * kernel.size))
            smallest = np.argsort(np.abs(kernel), axis=None)[:count]
            kernel.flat[smallest] = 0.0
            layer.kernel.assign(kernel)
    return copy


def kernels_used(path: Path, threads: int) -> str:
    """'xnnpack' when LiteRT's default delegate takes the file, else 'builtin' (the fallback
    `evaluate.open_interpreter` takes for sparse-encoded quantized weights)."""
    try:
        Interpreter(
            model_path=str(path),
            num_threads=threads,
            experimental_op_resolver_type=OpResolverType.AUTO,
        ).allocate_tensors()
    except RuntimeError as error:
        if "delegate" in str(error):
            return "builtin"
        raise
    return "xnnpack"


def main(argv: list[str] | None = None) -> int:
    """Exports the files, measures them and writes `tflite_latency.json`."""
    arguments = common.parser(__doc__.splitlines()[0])
    common.data_arguments(arguments)
    arguments.add_argument("--model", help="a trained .keras file (default: random ResNet-20)")
    arguments.add_argument("--formats", default=",".join(EXPORT_FORMATS))
    arguments.add_argument("--sparsity", type=float, default=0.7)
    arguments.add_argument("--runs", type=int, default=200, help="timed invocations per file")
    arguments.add_argument("--rounds", type=int, default=4)
    arguments.add_argument("--threads", default="1,2")
    arguments.add_argument("--eval-threads", type=int, default=2)
    arguments.add_argument(
        "--sparsity-flag",
        choices=("both", "off", "on"),
        default="both",
        help="convert without and/or with Optimize.EXPERIMENTAL_SPARSITY",
    )
    args = arguments.parse_args(argv)
    if args.quick:
        args.formats, args.runs, args.rounds, args.sparsity_flag = "float32,int8", 20, 2, "off"
    flags = {"both": (False, True), "off": (False,), "on": (True,)}[args.sparsity_flag]
    formats = args.formats.split(",")
    thread_counts = [int(count) for count in args.threads.split(",")]
    recorder = common.Recorder(NAME, argv, settings=dict(vars(args)))

    data = common.load_images(args.quick, args.data_path)
    keras.utils.set_random_seed(0)
    if args.model:
        dense = keras.models.load_model(common.resolve(args.model), compile=False)
    else:
        dense = create_model("resnet20", data.num_classes)
    models = {
        "dense": dense,
        f"sparse{round(args.sparsity * 100)}": zero_smallest(dense, args.sparsity),
    }
    calibration = data.x_train  # quantize.export draws its own calibration sample

    with tempfile.TemporaryDirectory() as folder:
        files, rows = {}, {}
        for model_name, model in models.items():
            for sparsity_flag in flags:
                config = QuantizeConfig(sparsity_optimization=sparsity_flag)
                out_dir = Path(folder) / f"{model_name}{'-flag' if sparsity_flag else ''}"
                for format_name in formats:
                    key = (model_name, format_name, sparsity_flag)
                    started = time.perf_counter()
                    path = quantize.export(model, config, calibration, out_dir, [format_name])
                    files[key] = path[format_name]
                    rows[key] = {
                        "model": model_name,
                        "format": format_name,
                        "sparsity_flag": sparsity_flag,
                        "convert_seconds": round(time.perf_counter() - started, 2),
                        **evaluate.file_sizes(files[key]),
                        "zeros_fraction": round(
                            evaluate.count_tflite_zeros(files[key])["zeros_fraction"], 4
                        ),
                        "kernels": kernels_used(files[key], 1),
                    }
        latencies = _latencies(files, thread_counts, data.x_test[0], args.runs, args.rounds)
        for key, path in files.items():
            for threads in thread_counts:
                rows[key][f"latency_ms_{threads}t"] = latencies[key, threads]
            started = time.perf_counter()
            probabilities = evaluate.predict_tflite(path, data.x_test, args.eval_threads)
            rows[key]["eval_seconds"] = round(time.perf_counter() - started, 2)
            rows[key]["accuracy"] = round(
                float(np.mean(probabilities.argmax(-1) == data.y_test)), 4
            )

    results = {"eval_images": len(data.x_test), "files": list(rows.values())}
    ratios = {}
    if "int8" in formats and "float32" in formats:
        for model_name in models:
            for flag in flags:
                for threads in thread_counts:
                    column = f"latency_ms_{threads}t"
                    ratio = (
                        rows[model_name, "int8", flag][column]
                        / rows[model_name, "float32", flag][column]
                    )
                    name = f"{model_name}{' flag' if flag else ''} int8/float32 latency {threads}t"
                    ratios[name] = round(ratio, 3)
    results["ratios"] = ratios
    targets = {}
    for threads in thread_counts:
        value = ratios.get(f"dense int8/float32 latency {threads}t")
        targets[f"dense int8 latency <= 0.5x float32 ({threads}t)"] = common.target(
            value, 0.5, higher_is_better=False
        )
    if ("dense", "int8", False) in rows:
        targets[f"int8 eval of {len(data.x_test)} images < 10 s"] = common.target(
            rows["dense", "int8", False]["eval_seconds"], 10.0, higher_is_better=False
        )
    print(common.table(results["files"]))
    print(common.table([{"ratio": key, "value": value} for key, value in ratios.items()]))
    recorder.write(args.results_dir, results, targets)
    return 0


def _latencies(files, thread_counts, image, runs: int, rounds: int) -> dict:
    """Median batch-1 milliseconds per (file key, threads), invocations spread over rounds in
    alternating order so load changes hit every file alike."""
    interpreters, durations = {}, {}
    for key, path in files.items():
        for threads in thread_counts:
            interpreter = evaluate.open_interpreter(path, threads)
            details = interpreter.get_input_details()[0]
            interpreter.set_tensor(details["index"], evaluate.quantize_input(image[None], details))
            for _ in range(evaluate.LATENCY_WARMUP_RUNS):
                interpreter.invoke()
            interpreters[key, threads] = interpreter
            durations[key, threads] = []
    names = list(interpreters)
    per_round = max(1, runs // rounds)
    for index in range(rounds):
        for name in names if index % 2 == 0 else names[::-1]:
            interpreter = interpreters[name]
            for _ in range(per_round):
                started = time.perf_counter()
                interpreter.invoke()
                durations[name].append(time.perf_counter() - started)
    return {name: round(1000 * statistics.median(values), 3) for name, values in durations.items()}


if __name__ == "__main__":
    raise SystemExit(main())
