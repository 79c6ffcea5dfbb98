"""Images/s the input pipeline alone delivers (augmentation on) vs what training consumes.

Interleaved rounds in one process: iterate compactcnn's training stream (the plain baseline's
per-image pipeline too, for reference) for `--batches` batches after a warm-up, then train
compactcnn's dense ResNet-20 for `--steps` timed steps on the same stream. The ratio
pipeline / training says how much head-room the input pipeline leaves (target >= 5x).

    python -m bench.data_pipeline            # 3 rounds, 200 batches, 10 training steps
    python -m bench.data_pipeline --quick    # bundled sample, batch 32
"""

from __future__ import annotations

import time

import tf_keras as keras

from bench import baseline, common, setups

NAME = "data_pipeline"


def pipeline_rate(dataset, batch_size: int, warmup: int, batches: int) -> float:
    """Images/s of iterating `dataset` for `batches` batches after `warmup` (a fresh iterator)."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    started = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    """Measures pipeline and training rates and writes `data_pipeline.json`."""
    arguments = common.parser(__doc__.splitlines()[0])
    common.data_arguments(arguments)
    arguments.add_argument("--rounds", type=int, default=3)
    arguments.add_argument("--batches", type=int, default=200, help="timed pipeline batches")
    arguments.add_argument("--steps", type=int, default=10, help="timed training steps")
    arguments.add_argument("--warmup", type=int, default=3)
    arguments.add_argument("--batch-size", type=int, default=128)
    args = arguments.parse_args(argv)
    if args.quick:
        args.rounds, args.batches, args.steps, args.warmup, args.batch_size = 2, 20, 3, 1, 32
    recorder = common.Recorder(NAME, argv, settings=dict(vars(args)))

    data = common.load_images(args.quick, args.data_path)
    keras.utils.set_random_seed(0)
    training = setups.compactcnn_training(data, args.batch_size)
    plain = baseline.train_dataset(data.x_train, data.y_train, args.batch_size)
    common.timed_fit(training.model, training.dataset, 1, 1, 1)  # trace the step once

    variants = {
        "pipeline": lambda: pipeline_rate(
            training.dataset, args.batch_size, args.warmup, args.batches
        ),
        "baseline_pipeline": lambda: pipeline_rate(
            plain, args.batch_size, args.warmup, args.batches
        ),
        "training": lambda: common.timed_fit(
            training.model, training.dataset, args.batch_size, args.warmup, args.steps
        ),
    }
    rates = common.interleave(variants, args.rounds)
    ratios = {
        "pipeline/training": common.paired_ratio(rates["pipeline"], rates["training"]),
        "baseline_pipeline/training": common.paired_ratio(
            rates["baseline_pipeline"], rates["training"]
        ),
    }
    results = {
        "images_per_second": {name: common.summary(values) for name, values in rates.items()},
        "ratios": ratios,
    }
    targets = {"pipeline/training >= 5": common.target(ratios["pipeline/training"], 5.0)}
    print(
        common.table(
            [
                {"measure": name, "median_images_per_second": common.summary(values)["median"]}
                for name, values in rates.items()
            ]
        )
    )
    print(common.table([{"ratio": key, "value": value} for key, value in ratios.items()]))
    recorder.write(args.results_dir, results, targets)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
