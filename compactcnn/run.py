"""One run, start to finish: the whole compactcnn pipeline in one place.

    config -> data -> model -> prune.wrap -> train -> prune.strip -> [cluster] -> [QAT]
           -> export -> evaluate

Everything a run produces lands in its run directory (see docs/DESIGN.md); `metrics.json` is
written last, so its presence means the run finished and a re-run returns at once.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from compactcnn import cluster, distribute, evaluate, prune, quantize, train
from compactcnn.config import EXPORT_FORMATS, Config, QuantizeConfig, save_config
from compactcnn.data import cache_dir, load_data, pipeline
from compactcnn.errors import UserError
from compactcnn.models import create_model

# The reference batch of the linear learning-rate scaling rule: recipes quote rates for it.
REFERENCE_BATCH = 128


def run(config: Config, run_dir: str | os.PathLike, verbose: int = 1) -> dict[str, Any]:
    """Trains, compresses, exports and evaluates one model.

    Args:
        config: The resolved configuration.
        run_dir: The run directory. A finished run is returned as is; an interrupted one resumes.
        verbose: Keras progress output (0 silent, 1 progress bar, 2 one line per epoch).

    Returns:
        The metrics written to `run_dir/metrics.json`.
    """
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json"
    if metrics_path.exists():
        print(f"{run_dir} is already finished; delete it to run again")
        return json.loads(metrics_path.read_text())

    # The strategy must exist before any other TensorFlow op runs (collectives, logical devices).
    strategy = distribute.create_strategy(config.distribute)
    policy = distribute.set_precision(config.train.precision)
    chief = distribute.is_chief(strategy)
    replicas = strategy.num_replicas_in_sync
    global_batch = config.train.batch_size * replicas
    peak_lr = distribute.scaled_learning_rate(
        config.train.learning_rate, global_batch, REFERENCE_BATCH, config.train.scale_learning_rate
    )
    # Data, model and pruning errors are the commonest user mistakes: they all surface before the
    # run directory is created, so a rejected run leaves nothing behind.
    data = load_data(config.data, seed=config.train.seed)
    steps_per_epoch = config.train.steps_per_epoch or len(data.x_train) // global_batch
    if steps_per_epoch < 1:
        raise UserError(
            f"{len(data.x_train)} training images make no full batch of {global_batch}; "
            "lower train.batch_size"
        )
    keras.utils.set_random_seed(config.train.seed)
    train_data = train.one_hot(
        pipeline.train_dataset(
            data.x_train,
            data.y_train,
            global_batch,
            augment=config.data.augment,
            cutout=config.data.cutout if config.data.augment else 0,
            seed=config.train.seed,
        ),
        data.num_classes,
    )
    # In-memory data has no files to split, so shard by element: under multi-worker training
    # TensorFlow rebatches each global batch and hands every worker its own slice of it.
    train_data = train_data.with_options(_shard_by_data())
    validation_data = None
    if len(data.x_val):
        validation_data = train.one_hot(
            pipeline.eval_dataset(data.x_val, data.y_val, global_batch), data.num_classes
        )

    pruned = config.prune.schedule != "none"
    with strategy.scope():
        model = create_model(
            config.model.name,
            data.num_classes,
            zero_init_residual=config.model.zero_init_residual,
        )
        if config.prune.from_run:
            # Fine-tuning: dense weights first, then the pruning wrappers, then a fresh optimizer.
            dense = keras.models.load_model(prune.resolve_pretrained(config.prune.from_run))
            _copy_weights(dense, model)
        model = prune.wrap(model, config.prune, steps_per_epoch, config.train.epochs)
        schedule = train.learning_rate_schedule(config.train, steps_per_epoch, peak_lr)
        train.compile_model(model, config.train, train.build_optimizer(config.train, schedule))

    write_dir, cleanup = distribute.worker_run_dir(run_dir, strategy)
    save_config(
        config,
        write_dir / "config.yaml",
        resolved={
            "replicas": replicas,
            "global_batch_size": global_batch,
            "learning_rate": peak_lr,
            "precision_policy": policy,
        },
    )

    extra_callbacks = prune.callbacks(str(write_dir / "logs" / "pruning")) if pruned else []
    if pruned and chief:
        prune.write_schedule_csv(
            config.prune, steps_per_epoch, config.train.epochs, write_dir / "pruning_schedule.csv"
        )
    started = time.perf_counter()
    train.fit(
        model,
        train_data,
        epochs=config.train.epochs,
        steps_per_epoch=steps_per_epoch,
        run_dir=run_dir,
        write_dir=write_dir,
        validation_data=validation_data,
        callbacks=extra_callbacks,
        save_freq=config.distribute.save_freq,
        tensorboard=config.output.tensorboard,
        verbose=verbose,
    )
    wall_seconds = time.perf_counter() - started
    history = train.dedupe_history(write_dir / "history.csv")

    model = prune.strip(model)
    # Export in float32 whatever the training precision: rebuild the architecture under the
    # float32 policy and copy the weights (converting bf16/fp16 layers needs Flex ops).
    distribute.set_precision("float32")
    float_model = create_model(config.model.name, data.num_classes)
    _copy_weights(model, float_model)
    if distribute.worker_count(strategy) > 1:
        # Every worker prints it, so anyone can check that the copies trained in lock step.
        fingerprint = distribute.weights_fingerprint(float_model.get_weights())
        print(f"trained weights fingerprint: {fingerprint}")

    metrics: dict[str, Any] = {
        "run": {
            "model": config.model.name,
            "data": config.data.name,
            "num_classes": data.num_classes,
            "strategy": type(strategy).__name__,
            "replicas": replicas,
            "workers": distribute.worker_count(strategy),
            "global_batch_size": global_batch,
            "learning_rate": peak_lr,
            "precision": policy,
        },
        "train": _train_metrics(history, steps_per_epoch, global_batch, wall_seconds, policy),
    }
    if pruned:
        metrics["pruning"] = {
            "schedule": config.prune.schedule,
            "target_sparsity": config.prune.final_sparsity,
            **prune.sparsity_report(float_model),
        }

    if config.quantize.weight_clusters:
        float_model = _cluster_finetune(float_model, config, strategy, train_data, steps_per_epoch)
        metrics["clustering"] = {
            "clusters": config.quantize.weight_clusters,
            **cluster.distinct_values_report(float_model),
        }

    qat_model = None
    if config.quantize.qat:
        qat_model = _quantization_aware_finetune(
            float_model, config, strategy, train_data, steps_per_epoch, pruned
        )

    if chief:
        metrics.update(_export_and_evaluate(float_model, qat_model, config, data, write_dir))
        _atomic_write_text(metrics_path, json.dumps(metrics, indent=2))
        shutil.rmtree(run_dir / "backup", ignore_errors=True)
    else:
        # The other workers export nothing, but report their model's accuracy like the chief.
        keras_metrics = evaluate.evaluate_keras(float_model, data.x_test, data.y_test)
        keras_metrics.pop("predictions")
        metrics.update({"keras": keras_metrics, "tflite": {}})
    cleanup()
    return metrics


def _shard_by_data() -> tf.data.Options:
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return options


def _copy_weights(source, target) -> None:
    """Copies weights between two builds of one architecture (stripped, other policy)."""
    target.set_weights(source.get_weights())


def _train_metrics(history, steps_per_epoch, global_batch, wall_seconds, policy) -> dict[str, Any]:
    seconds = sum(float(row.get("epoch_seconds") or 0.0) for row in history) or wall_seconds
    images = len(history) * steps_per_epoch * global_batch
    last = history[-1] if history else {}
    return {
        "epochs": len(history),
        "steps": len(history) * steps_per_epoch,
        "seconds": round(seconds, 3),
        "images_per_second": round(images / seconds, 1) if seconds else None,
        "final_loss": float(last["loss"]) if "loss" in last else None,
        "final_accuracy": float(last["accuracy"]) if "accuracy" in last else None,
        "precision": policy,
    }


def _cluster_finetune(float_model, config, strategy, train_data, steps):
    """Fine-tunes with shared weight values per layer; returns the float32 model with them."""
    with strategy.scope():
        clustered = cluster.prepare(float_model, config.quantize.weight_clusters)
        optimizer = train.build_optimizer(config.train, config.quantize.cluster_learning_rate)
        train.compile_model(clustered, config.train, optimizer)
    clustered.fit(
        train_data, epochs=config.quantize.cluster_epochs, steps_per_epoch=steps, verbose=2
    )
    float_model.set_weights(cluster.strip(clustered).get_weights())
    return float_model


def _quantization_aware_finetune(float_model, config, strategy, train_data, steps, pruned):
    """Fine-tunes a QAT copy of the model; prune-preserving when the model is sparse."""
    with strategy.scope():
        qat_model = quantize.prepare_qat(float_model, preserve_sparsity=pruned)
        optimizer = train.build_optimizer(config.train, config.quantize.qat_learning_rate)
        train.compile_model(qat_model, config.train, optimizer)
    qat_model.fit(train_data, epochs=config.quantize.qat_epochs, steps_per_epoch=steps, verbose=2)
    return qat_model


def _export_and_evaluate(float_model, qat_model, config, data, write_dir) -> dict[str, Any]:
    """Saves model.keras, exports every format, and measures each file on the test set."""
    keras_metrics = evaluate.evaluate_keras(float_model, data.x_test, data.y_test)
    reference = keras_metrics.pop("predictions")
    keras_metrics["params"] = int(float_model.count_params())
    _atomic_write_text(write_dir / "classes.json", json.dumps(data.class_names))
    temporary = write_dir / "model.tmp.keras"
    float_model.save(temporary)
    os.replace(temporary, write_dir / "model.keras")

    tflite_dir = write_dir / "tflite"
    calibration = _calibration_images(data.x_train, config.quantize.calibration_samples)
    formats = list(config.quantize.formats)
    if qat_model is not None:
        # The QAT model replaces post-training int8: same name, so reports compare like for like.
        formats = [name for name in formats if name != "int8"]
    files = quantize.export(float_model, config.quantize, calibration, tflite_dir, formats=formats)
    if qat_model is not None:
        files.update(
            quantize.export(qat_model, config.quantize, calibration, tflite_dir, formats=["int8"])
        )

    baseline = _dense_float32_sizes(config.model.name, data.num_classes)
    results = {}
    for name in quantize_order(files):
        print(f"evaluating {name}.tflite on {len(data.x_test)} test images")
        result = evaluate.evaluate_tflite(
            files[name],
            data.x_test,
            data.y_test,
            threads=config.output.threads,
            latency_runs=config.output.latency_runs,
            reference_predictions=reference,
        )
        result["path"] = str(Path(files[name]).relative_to(write_dir))
        result["compression_bytes"] = round(baseline["bytes"] / result["bytes"], 3)
        result["compression_gzip"] = round(baseline["gzip_bytes"] / result["gzip_bytes"], 3)
        if name == "int8" and qat_model is not None:
            result["qat"] = True
        results[name] = result
    return {
        "keras": keras_metrics,
        "tflite": results,
        "baseline": {
            "dense_float32_bytes": baseline["bytes"],
            "dense_float32_gzip_bytes": baseline["gzip_bytes"],
        },
    }


def quantize_order(files: dict[str, Any]) -> list[str]:
    """Formats in the canonical order float32, float16, dynamic_int8, int8."""
    return [name for name in EXPORT_FORMATS if name in files]


def _calibration_images(images: np.ndarray, count: int) -> np.ndarray:
    # A seeded spread over the whole training set, not its first classes.
    indices = np.random.default_rng(0).permutation(len(images))[:count]
    return images[np.sort(indices)]


def _dense_float32_sizes(model_name: str, num_classes: int) -> dict[str, int]:
    """Sizes of the dense float32 .tflite of this architecture: the compression baseline.

    Converting it costs as much as a short training run, so the sizes are cached per
    architecture and TensorFlow version under $COMPACTCNN_DATA.
    """
    cache = cache_dir() / "baselines" / f"{model_name}-{num_classes}-tf{tf.__version__}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    dense = create_model(model_name, num_classes)
    with tempfile.TemporaryDirectory() as folder:
        files = quantize.export(dense, QuantizeConfig(), None, Path(folder), formats=["float32"])
        sizes = evaluate.file_sizes(files["float32"])
    cache.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(cache, json.dumps(sizes))
    return sizes


def _atomic_write_text(path: Path, text: str) -> None:
    # A per-process temporary name: parallel sweep runs may write the same cache file.
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
