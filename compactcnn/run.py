"""One run, start to finish: the whole compactcnn pipeline in one place.

    config -> data -> model -> prune.wrap -> train -> prune.strip -> [cluster] -> [QAT]
           -> export -> evaluate

`run()` reads as that pipeline; each phase below it is a plain function that can be called alone
(the benchmarks build their training through `build_training`). Everything a run produces lands
in its run directory (see docs/DESIGN.md); `metrics.json` is written last, so its presence means
the run finished and a re-run returns at once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tensorflow as tf
import tf_keras as keras

from compactcnn import (
    cluster,
    distill,
    distribute,
    evaluate,
    files,
    ownership,
    pretrained,
    prune,
    quantize,
    train,
)
from compactcnn.config import EXPORT_FORMATS, Config, QuantizeConfig, save_config
from compactcnn.data import ImageData, cache_dir, load_data, pipeline
from compactcnn.errors import UserError
from compactcnn.models import ModelPlan, resolve
from compactcnn.models.graph import with_policy

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
    # Before anything is written: one process and one config per run directory.
    with ownership.claim(run_dir, config) as claim:
        if claim.finished:
            print(f"{run_dir} {ownership.ALREADY_FINISHED}")
            return claim.metrics
        training = build_training(config)
        write_dir, cleanup = distribute.worker_run_dir(run_dir, training.strategy)
        record_config(config, training, write_dir)
        metrics = fit(config, training, run_dir, write_dir, verbose)
        float_model, qat_model = compress(config, training, metrics)
        if distribute.is_chief(training.strategy):
            metrics.update(
                export_and_measure(
                    config, training.data, float_model, qat_model, write_dir, plan=training.plan
                )
            )
            files.write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2))
            shutil.rmtree(run_dir / "backup", ignore_errors=True)
        else:
            # The other workers export nothing, but report their model's accuracy like the chief.
            metrics.update({"keras": measure_keras(float_model, training.data), "tflite": {}})
        cleanup()
    return metrics


@dataclass
class Training:
    """Everything `fit` needs, built by `build_training` inside the strategy's scope.

    Attributes:
        strategy: The tf.distribute strategy the model was built under.
        precision_policy: The global Keras precision policy training runs under.
        precision_reason: Why that policy (the config, or what `auto` found on the hardware).
        data: The loaded images.
        train_stream: Builds a new endless stream of the run's augmented (images, one-hot
            labels) global batches, from its first batch. Every pass (training, BN
            recalibration, fine-tuning) takes a new one: the iterators of one dataset share its
            reshuffling state, which their background prefetching advances by a timing-dependent
            amount, so a second pass over the same dataset would start at an order that differs
            between workers and between runs.
        validation_data: The held-out validation batches, or None.
        model: The compiled model, pruning wrappers included when pruning; when distilling, a
            `distill.Distiller` holding it (`distill.student_of` gives the model itself).
        callbacks: Callbacks `fit` needs besides logging and backups (the pruning step).
        steps_per_epoch: Optimizer steps per epoch.
        global_batch: Images per step over all replicas.
        learning_rate: The peak rate, scaled for the global batch.
        plan: What `model.name` points at, and the image size.
        model_report: How the model was built (source, normalization, ...) and the layers the
            compression stages leave alone (`skipped_layers`), for metrics.json.
        teacher: The frozen `distill.teacher` model, or None when not distilling.
    """

    strategy: tf.distribute.Strategy
    precision_policy: str
    precision_reason: str
    data: ImageData
    train_stream: Callable[[], tf.data.Dataset]
    validation_data: tf.data.Dataset | None
    model: keras.Model
    callbacks: list[keras.callbacks.Callback]
    steps_per_epoch: int
    global_batch: int
    learning_rate: float
    plan: ModelPlan | None = None
    model_report: dict[str, Any] = dataclasses.field(default_factory=dict)
    teacher: keras.Model | None = None


def build_training(
    config: Config,
    strategy: tf.distribute.Strategy | None = None,
    data: ImageData | None = None,
) -> Training:
    """Builds the strategy, data stream, model, pruning wrappers and optimizer of a run.

    Data, model and pruning errors are the commonest user mistakes: they all surface here, before
    anything is written, so a rejected run leaves nothing behind. That includes a layer that the
    configured clustering or QAT (which run after training) could not wrap.

    Args:
        config: The resolved configuration.
        strategy: Build under this strategy instead of the configured one (benchmarks).
        data: Use these images instead of loading `config.data` (benchmarks).

    Returns:
        The training, with the global precision policy set to `config.train.precision`.
    """
    # The strategy must exist before any other TensorFlow op runs (collectives, logical devices).
    strategy = strategy or distribute.create_strategy(config.distribute)
    precision, reason = distribute.choose_precision(config.train.precision)
    print(f"precision: {precision} ({reason})")
    policy = distribute.set_precision(precision)
    global_batch = config.train.batch_size * strategy.num_replicas_in_sync
    peak_lr = distribute.scaled_learning_rate(
        config.train.learning_rate, global_batch, REFERENCE_BATCH, config.train.scale_learning_rate
    )
    # The model decides the image size (its own input, or data.image_size), so it comes first.
    plan = resolve(config.model, config.data)
    sized = dataclasses.replace(config.data, image_size=list(plan.image_size))
    data = data or load_data(sized, seed=config.train.seed)
    if tuple(data.x_train.shape[1:3]) != plan.image_size:
        raise UserError(
            f"the images are {data.x_train.shape[1]}x{data.x_train.shape[2]}, but the model "
            f"takes {plan.image_size[0]}x{plan.image_size[1]}; set data.image_size to match"
        )
    steps_per_epoch = config.train.steps_per_epoch or len(data.x_train) // global_batch
    if steps_per_epoch < 1:
        raise UserError(
            f"{len(data.x_train)} training images make no full batch of {global_batch}; "
            "lower train.batch_size"
        )
    keras.utils.set_random_seed(config.train.seed)

    def train_stream() -> tf.data.Dataset:
        augmented = pipeline.train_dataset(
            data.x_train,
            data.y_train,
            global_batch,
            augment=config.data.augment,
            cutout=config.data.cutout if config.data.augment else 0,
            seed=config.train.seed,
        )
        # In-memory data has no files to split, so shard by element: under multi-worker
        # training TensorFlow rebatches each global batch and hands every worker its own slice.
        return train.one_hot(augmented, data.num_classes).with_options(_shard_by_data())

    validation_data = None
    if len(data.x_val):
        validation = pipeline.eval_dataset(data.x_val, data.y_val, global_batch)
        validation_data = train.one_hot(validation, data.num_classes)

    with strategy.scope():
        model, model_report = plan.build(data.num_classes, config.data.normalize, policy)
        if config.prune.from_run:
            # Fine-tuning: dense weights first, then the pruning wrappers, then a fresh optimizer.
            _load_pretrained(config.prune.from_run, model)
        model_report["skipped_layers"] = skipped_layers(model, config)
        model = prune.wrap(model, config.prune, steps_per_epoch, config.train.epochs)
        # Built in the scope too, so its variables are mirrored like the student's.
        teacher = distill.load_teacher(config.distill, data.num_classes, plan.image_size)
        model = distill.wrap(model, teacher, config.distill)
        schedule = train.learning_rate_schedule(config.train, steps_per_epoch, peak_lr)
        train.compile_model(model, config.train, train.build_optimizer(config.train, schedule))
    pruned = config.prune.schedule != "none"
    return Training(
        strategy=strategy,
        precision_policy=policy,
        precision_reason=reason,
        data=data,
        train_stream=train_stream,
        validation_data=validation_data,
        model=model,
        callbacks=prune.callbacks(None) if pruned else [],
        steps_per_epoch=steps_per_epoch,
        global_batch=global_batch,
        learning_rate=peak_lr,
        plan=plan,
        model_report=model_report,
        teacher=teacher,
    )


def skipped_layers(model: keras.Model, config: Config) -> dict[str, str]:
    """The layers with weights that the configured compression leaves alone, and why.

    Checks every configured stage before training, so a layer that clustering or QAT could not
    wrap is a one-line error now rather than after training.

    Returns:
        {layer name: reasons, `; `-joined, each naming its stage}.

    Raises:
        UserError: On a layer with kernels tfmot cannot wrap for a configured stage.
    """
    reasons: dict[str, list[str]] = {}
    stages = [prune.skipped_layers(model, config.prune)]
    if config.quantize.weight_clusters:
        stages.append(cluster.skipped_layers(model, config.quantize.weight_clusters))
    if config.quantize.qat:
        quantize.check_qat(model)
    for stage in stages:
        for name, reason in stage.items():
            reasons.setdefault(name, []).append(reason)
    return {name: "; ".join(found) for name, found in reasons.items()}


def record_config(config: Config, training: Training, write_dir: Path) -> None:
    """Writes config.yaml with the values derived at run time, and the pruning schedule."""
    resolved = {
        "replicas": training.strategy.num_replicas_in_sync,
        "global_batch_size": training.global_batch,
        "learning_rate": training.learning_rate,
        "precision_policy": training.precision_policy,
        "precision_reason": training.precision_reason,
        "image_size": _image_size(training),
    }
    if training.teacher is not None:
        teacher_file = pretrained.resolve(config.distill.teacher, "distill.teacher")
        resolved["distill_teacher"] = str(teacher_file)
    save_config(config, write_dir / "config.yaml", resolved=resolved)
    if config.prune.schedule != "none" and distribute.is_chief(training.strategy):
        prune.write_schedule_csv(
            config.prune,
            training.steps_per_epoch,
            config.train.epochs,
            write_dir / "pruning_schedule.csv",
        )


def fit(
    config: Config, training: Training, run_dir: Path, write_dir: Path, verbose: int = 1
) -> dict[str, Any]:
    """Trains (resuming from the last backup) and strips the pruning wrappers.

    Returns:
        The first metrics of the run: `run` (where and how it trained), `train` (time, loss,
        throughput) and, when pruned, `pruning` (the sparsity reached per layer).
    """
    callbacks = training.callbacks
    if config.prune.schedule != "none":
        # The same pruning step callback, now with its TensorBoard summaries in the run.
        callbacks = prune.callbacks(str(write_dir / "logs" / "pruning"))
    started = time.perf_counter()
    train.fit(
        training.model,
        training.train_stream(),
        epochs=config.train.epochs,
        steps_per_epoch=training.steps_per_epoch,
        run_dir=run_dir,
        write_dir=write_dir,
        validation_data=training.validation_data,
        callbacks=callbacks,
        save_freq=config.distribute.save_freq,
        tensorboard=config.output.tensorboard,
        verbose=verbose,
    )
    wall_seconds = time.perf_counter() - started
    history = train.dedupe_history(write_dir / "history.csv")
    training.model = distill.student_of(training.model)  # what is exported: never the teacher
    targets = prune.layer_targets(training.model)  # Per-layer (prune.allocation), before strip.
    training.model = prune.strip(training.model)
    strategy = training.strategy
    metrics: dict[str, Any] = {
        "run": {
            "model": config.model.name,
            "data": config.data.name,
            "num_classes": training.data.num_classes,
            "strategy": type(strategy).__name__,
            "replicas": strategy.num_replicas_in_sync,
            "workers": distribute.worker_count(strategy),
            "global_batch_size": training.global_batch,
            "learning_rate": training.learning_rate,
            "precision": training.precision_policy,
            "precision_reason": training.precision_reason,
            "image_size": _image_size(training),
        },
        "model": training.model_report,
        "train": _train_metrics(history, training, wall_seconds),
    }
    if config.prune.schedule != "none":
        metrics["pruning"] = {
            "schedule": config.prune.schedule,
            "allocation": config.prune.allocation,
            "target_sparsity": config.prune.final_sparsity,
            **prune.sparsity_report(training.model, targets),
        }
    if training.teacher is not None:
        metrics["distill"] = distill.report(
            config.distill, training.teacher, training.data.x_test, training.data.y_test
        )
    return metrics


def compress(
    config: Config, training: Training, metrics: dict[str, Any]
) -> tuple[keras.Model, keras.Model | None]:
    """Rebuilds the trained model in float32, then clusters and QAT fine-tunes it as configured.

    Adds `clustering` to `metrics` when weights are clustered.

    Returns:
        The float32 model every format but QAT int8 is exported from, and the QAT model or None.
    """
    # Export in float32 whatever the training precision: rebuild the model with every layer
    # under the float32 policy and copy the weights (converting bf16/fp16 layers needs Flex
    # ops). Rebuilt from the model itself, so a user's model needs no builder.
    distribute.set_precision("float32")
    float_model = with_policy(training.model, "float32")
    if config.quantize.weight_clusters:
        float_model = _cluster_finetune(float_model, config, training)
        metrics["clustering"] = {
            "clusters": config.quantize.weight_clusters,
            **cluster.distinct_values_report(float_model),
        }
    # With the final weights (after clustering), so the exported file and QAT start from them,
    # on the augmented training batches (the run's own stream, read from its start: the same
    # batches on every worker).
    train.recalibrate_batchnorm(
        float_model, training.train_stream(), config.train.bn_recalibration_batches
    )
    if distribute.worker_count(training.strategy) > 1:
        # Every worker prints it, so anyone can check that the copies trained in lock step.
        fingerprint = distribute.weights_fingerprint(float_model.get_weights())
        print(f"trained weights fingerprint: {fingerprint}")
    qat_model = None
    if config.quantize.qat:
        qat_model = _quantization_aware_finetune(float_model, config, training)
    return float_model, qat_model


def export_and_measure(
    config: Config,
    data: ImageData,
    float_model: keras.Model,
    qat_model: keras.Model | None,
    write_dir: Path,
    plan: ModelPlan | None = None,
) -> dict[str, Any]:
    """Saves model.keras, exports every format, and measures each file on the test set.

    Args:
        config: The resolved configuration.
        data: The run's images.
        float_model: The float32 model to export.
        qat_model: The QAT model the int8 file comes from, or None.
        write_dir: The run directory (of this worker).
        plan: What `model.name` points at (resolved again from the config when None).

    Returns:
        `keras` (the float model's test metrics), `tflite` (per format) and `baseline` (the
        dense float32 sizes the compression ratios divide).
    """
    keras_metrics = evaluate.evaluate_keras(float_model, data.x_test, data.y_test)
    reference = keras_metrics.pop("predictions")
    keras_metrics["params"] = int(float_model.count_params())
    if len(data.x_val):
        validation = evaluate.evaluate_keras(float_model, data.x_val, data.y_val)
        keras_metrics["validation_accuracy"] = validation["test_accuracy"]
    files.write_text(write_dir / "classes.json", json.dumps(data.class_names))
    with files.atomic_path(write_dir / "model.keras") as temporary:
        float_model.save(temporary)

    tflite_dir = write_dir / "tflite"
    calibration = data.x_train  # export draws its calibration sample from these
    formats = list(config.quantize.formats)
    if qat_model is not None:
        # The QAT model replaces post-training int8: same name, so reports compare like for like.
        formats = [name for name in formats if name != "int8"]
    exported = quantize.export(float_model, config.quantize, calibration, tflite_dir, formats)
    if qat_model is not None:
        exported.update(
            quantize.export(qat_model, config.quantize, calibration, tflite_dir, formats=["int8"])
        )

    plan = plan or resolve(config.model, config.data)
    baseline = _dense_float32_sizes(plan, float_model, data.num_classes)
    results = {}
    for name in quantize_order(exported):
        print(f"evaluating {name}.tflite on {len(data.x_test)} test images")
        result = evaluate.evaluate_tflite(
            exported[name],
            data.x_test,
            data.y_test,
            threads=config.output.threads,
            latency_runs=config.output.latency_runs,
            reference_predictions=reference,
        )
        result["path"] = str(Path(exported[name]).relative_to(write_dir))
        result["compression_bytes"] = round(baseline["bytes"] / result["bytes"], 3)
        result["compression_gzip"] = round(baseline["gzip_bytes"] / result["gzip_bytes"], 3)
        if name == "int8":
            # What clustering bounds: values per quantization scale (evaluate.py), zero included.
            counts = evaluate.distinct_values_per_tensor(exported[name]).values()
            result["max_distinct_values"] = max((c["per_scale"] for c in counts), default=0)
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


def measure_keras(model: keras.Model, data: ImageData) -> dict[str, Any]:
    """The Keras model's test metrics, without the per-image predictions."""
    result = evaluate.evaluate_keras(model, data.x_test, data.y_test)
    result.pop("predictions")
    return result


def quantize_order(files_by_format: dict[str, Any]) -> list[str]:
    """Formats in the canonical order float32, float16, dynamic_int8, int8."""
    return [name for name in EXPORT_FORMATS if name in files_by_format]


def _shard_by_data() -> tf.data.Options:
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return options


def _load_pretrained(from_run: str, model: keras.Model) -> None:
    """Copies the weights of the `prune.from_run` model into `model`, which must match it."""
    path = pretrained.resolve(from_run, "prune.from_run")
    source = keras.models.load_model(path, compile=False)
    wanted = (tuple(model.input_shape[1:]), model.output_shape[-1])
    found = (tuple(source.input_shape[1:]), source.output_shape[-1])
    if found != wanted:
        raise UserError(
            f"prune.from_run model '{path}' takes {found[0]} images with {found[1]} classes, "
            f"but this run builds one for {wanted[0]} images with {wanted[1]} classes; fine-tune "
            "a model trained on the same data and image size"
        )
    try:
        _copy_weights(source, model)
    except ValueError:
        raise UserError(
            f"prune.from_run model '{path}' ({source.name}) is another architecture than "
            f"model.name ({model.name}); set model.name to the one it was trained as"
        ) from None


def _copy_weights(source, target) -> None:
    """Copies weights between two builds of one architecture (stripped, other policy)."""
    target.set_weights(source.get_weights())


def _image_size(training: Training) -> list[int]:
    """(height, width) of the run's images."""
    return [int(side) for side in training.data.x_train.shape[1:3]]


def _train_metrics(history, training: Training, wall_seconds: float) -> dict[str, Any]:
    seconds = sum(float(row.get("epoch_seconds") or 0.0) for row in history) or wall_seconds
    images = len(history) * training.steps_per_epoch * training.global_batch
    last = history[-1] if history else {}
    return {
        "epochs": len(history),
        "steps": len(history) * training.steps_per_epoch,
        "seconds": round(seconds, 3),
        "images_per_second": round(images / seconds, 1) if seconds else None,
        "final_loss": float(last["loss"]) if "loss" in last else None,
        "final_accuracy": float(last["accuracy"]) if "accuracy" in last else None,
        "precision": training.precision_policy,
    }


def _cluster_finetune(float_model, config: Config, training: Training):
    """Fine-tunes with shared weight values per layer; returns the float32 model with them.

    In the training precision, as training was: the clustered layers compute in its 16 bits
    while kernels and centroids stay float32 (`compat.MixedPrecisionClusterWeights`).
    """
    policy = distribute.set_precision(training.precision_policy)
    try:
        with training.strategy.scope():
            clustered = cluster.prepare(
                with_policy(float_model, policy),
                config.quantize.weight_clusters,
                config.quantize.cluster_gradient,
            )
        _finetune(
            clustered,
            config,
            training,
            config.quantize.cluster_learning_rate,
            config.quantize.cluster_epochs,
        )
    finally:
        distribute.set_precision("float32")
    float_model.set_weights(cluster.strip(clustered).get_weights())
    return float_model


def _quantization_aware_finetune(float_model, config: Config, training: Training):
    """Fine-tunes a QAT copy of the model; prune-preserving when the model is sparse.

    A clustered model gets cluster-preserving QAT: sparsity-preserving too (PCQAT), whether or
    not it was pruned, since its clustering keeps a zero cluster (`cluster.prepare`).
    """
    clustered = bool(config.quantize.weight_clusters)
    sparse = config.prune.schedule != "none" or clustered
    with training.strategy.scope():
        qat_model = quantize.prepare_qat(
            float_model, preserve_sparsity=sparse, preserve_clusters=clustered
        )
    # tfmot's prune- and cluster-preserving QAT keep every zero (and shared value) but those of
    # depthwise kernels.
    if clustered:
        callbacks = [quantize.KeepClusters(qat_model)]
    else:
        callbacks = [quantize.KeepZeros(qat_model)] if sparse else []
    _finetune(
        qat_model,
        config,
        training,
        config.quantize.qat_learning_rate,
        config.quantize.qat_epochs,
        callbacks,
    )
    # The fine-tune leaves BN moving statistics that lag behind the weights it moved (momentum
    # 0.99, a constant rate): on a 70%-sparse 16-cluster ResNet-20 the QAT model scored 82.3%
    # with them and 83.6% recalibrated (bench/README.md). Done on a copy built outside the
    # strategy: reading the distributed weights is the last collective step, after which every
    # worker recalibrates alone on the same batches, and the chief exports a plain model.
    local = quantize.prepare_qat(float_model, preserve_sparsity=sparse, preserve_clusters=clustered)
    local.set_weights(qat_model.get_weights())
    train.recalibrate_batchnorm(
        local, training.train_stream(), config.train.bn_recalibration_batches
    )
    if clustered:
        # One range per kernel, so a shared value is one int8 code in every channel: an
        # 80%-sparse ResNet-20 gzipped 1.14x smaller, its int8 accuracy +0.18 pt (bench/README.md).
        quantize.share_kernel_ranges(local, config.quantize.weight_clusters)
    return local


def _finetune(
    model,
    config: Config,
    training: Training,
    learning_rate: float,
    epochs: int,
    callbacks: list[keras.callbacks.Callback] | None = None,
):
    """A short fine-tune at a constant rate, with the run's optimizer, decay and loss.

    With a teacher, `model` is trained in place through a `distill.Distiller`.
    """
    with training.strategy.scope():
        optimizer = train.build_optimizer(config.train, learning_rate)
        model = distill.wrap(model, training.teacher, config.distill)
        train.compile_model(model, config.train, optimizer)
    model.fit(
        training.train_stream(),
        epochs=epochs,
        steps_per_epoch=training.steps_per_epoch,
        callbacks=callbacks or [],
        verbose=2,
    )


def _dense_float32_sizes(
    plan: ModelPlan, float_model: keras.Model, num_classes: int
) -> dict[str, int]:
    """Sizes of the dense float32 .tflite of this architecture: the compression baseline.

    Converting it costs as much as a short training run, so the sizes are cached per
    architecture (a registered model's name, classes, size and width; a digest of a user
    model's architecture) and TensorFlow version under $COMPACTCNN_DATA.
    """
    key = plan.baseline_key(float_model, num_classes)
    cache = cache_dir() / "baselines" / f"{key}-tf{tf.__version__}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    dense = plan.dense_baseline(float_model, num_classes)
    with tempfile.TemporaryDirectory() as folder:
        exported = quantize.export(dense, QuantizeConfig(), None, Path(folder), formats=["float32"])
        sizes = evaluate.file_sizes(exported["float32"])
    cache.parent.mkdir(parents=True, exist_ok=True)
    files.write_text(cache, json.dumps(sizes))
    return sizes
