"""The plain tf_keras baseline: ResNet-20 v1 trained the way a competent Keras user trains it.

Two recipes, both plain tf_keras with nothing imported from compactcnn's model, pipeline,
training, compression or evaluation code (only its loader of the shared images):

- `strong` (the default, and the one every "vs plain Keras" claim compares against): the He et
  al. 2016 CIFAR recipe as a competent user writes it today: SGD 0.1 with Nesterov momentum 0.9
  at batch 128, cosine decay after a 1-epoch linear warm-up, L2 5e-4 kernel regularizers, pad-4
  random crop and flip.
- `keras-example`: the Keras CIFAR-10 ResNet example's recipe (Adam 1e-3, constant, L2 1e-4),
  kept as a second, clearly named row.

The model is the Keras example's (a `resnet_layer` helper, biases, projection shortcuts with BN),
and the input pipeline is the tf.data guide's per-image `map`. Only the layer list matches
compactcnn's ResNet-20, so differences come from how the training is fed and compiled.

Plain tfmot (`--prune-sparsity S`): the dense model, then what the tfmot and TFLite guides
teach. `prune_low_magnitude` on every Conv2D and Dense (through `clone_model`, the pruning
guide's way to prune some layers: the `Rescaling` input layer is not prunable) with a
`PolynomialDecay` from 0 to S that begins at step 0 and ends at the last step of the fine-tuning,
as the pruning guide's `end_step = steps per epoch * epochs` does; mask updates every 100 steps
(tfmot's default); fine-tuning for `--prune-epochs` with SGD Nesterov momentum 0.9 like the strong
recipe, at a tenth of its rate, cosine from 0.01 to 0, with `UpdatePruningStep`; then
`strip_pruning`, and full-integer int8 with `TFLiteConverter` as the post-training integer
quantization guide does it (`Optimize.DEFAULT`, a representative dataset of training images,
`TFLITE_BUILTINS_INT8`, uint8 input and output). The .tflite is evaluated on the test images with
LiteRT one image at a time (the guide's loop), and its int8 weight zeros are counted from the
flatbuffer.

    python -m bench.baseline --epochs 10 --out bench/cache/baseline-strong-e10
    python -m bench.baseline --epochs 10 --dense-dir bench/cache/baseline-strong-e10 \\
        --prune-sparsity 0.7 --prune-epochs 5 --out bench/cache/tfmot70-e10-p5

The dense model is kept in `--dense-dir` (model.keras and metrics.json), and reused from there by
every sparsity.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras
from ai_edge_litert.interpreter import Interpreter
from tensorflow.lite.python import schema_py_generated as tflite_schema
from tensorflow.lite.tools import flatbuffer_utils

from bench import common

PADDED_SIZE = 40
RECIPES = ("strong", "keras-example")
# Kernel L2 coefficient per recipe (Keras `l2(c)` adds c * sum(w^2) to the loss).
L2 = {"strong": 5e-4, "keras-example": 1e-4}
# The operators whose input 1 is a weight (filter) tensor: the ones pruning zeroes.
WEIGHT_OPS = {
    tflite_schema.BuiltinOperator.CONV_2D,
    tflite_schema.BuiltinOperator.DEPTHWISE_CONV_2D,
    tflite_schema.BuiltinOperator.FULLY_CONNECTED,
}
LATENCY_WARMUP_RUNS = 5
# What a kept dense model folder holds (metrics.json written last).
DENSE_FILES = ("model.keras", "metrics.json")


def resnet_layer(inputs, filters=16, kernel_size=3, strides=1, activation="relu", l2=1e-4):
    """Conv2D -> BatchNormalization -> activation, as in the Keras CIFAR-10 ResNet example."""
    x = keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        kernel_initializer="he_normal",
        kernel_regularizer=keras.regularizers.l2(l2),
    )(inputs)
    x = keras.layers.BatchNormalization()(x)
    if activation is not None:
        x = keras.layers.Activation(activation)(x)
    return x


def build_resnet20(num_classes: int = 10, l2: float = 1e-4) -> keras.Model:
    """ResNet-20 v1 (He et al. 2016) taking raw pixels 0-255, softmax output."""
    inputs = keras.Input(shape=(32, 32, 3))
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)(inputs)
    x = resnet_layer(x, l2=l2)
    filters = 16
    for stack in range(3):
        for block in range(3):
            strides = 2 if stack > 0 and block == 0 else 1
            y = resnet_layer(x, filters, strides=strides, l2=l2)
            y = resnet_layer(y, filters, activation=None, l2=l2)
            if stack > 0 and block == 0:
                x = resnet_layer(x, filters, kernel_size=1, strides=strides, activation=None, l2=l2)
            x = keras.layers.add([x, y])
            x = keras.layers.Activation("relu")(x)
        filters *= 2
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", kernel_initializer="he_normal")(
        x
    )
    return keras.Model(inputs, outputs, name="baseline_resnet20")


def compile_baseline(
    model: keras.Model, recipe: str = "strong", steps_per_epoch: int = 390, epochs: int = 10
) -> None:
    """Compiles on integer labels with the recipe's optimizer and learning-rate schedule."""
    if recipe == "strong":
        warmup = steps_per_epoch  # one epoch
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0,
            decay_steps=max(1, epochs * steps_per_epoch - warmup),
            warmup_target=0.1,
            warmup_steps=warmup,
        )
        optimizer = keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True)
    else:
        optimizer = keras.optimizers.Adam(learning_rate=1e-3)
    model.compile(
        optimizer=optimizer,
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )


def augment(image, label):
    """Pad to 40x40, crop a random 32x32 window, flip at random: one image at a time."""
    image = tf.image.resize_with_crop_or_pad(image, PADDED_SIZE, PADDED_SIZE)
    image = tf.image.random_crop(image, size=(32, 32, 3))
    image = tf.image.random_flip_left_right(image)
    return tf.cast(image, tf.float32), label


def train_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """Shuffle, repeat, per-image augmentation map, batch, prefetch (the tf.data guide's recipe)."""
    dataset = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32)))
    return (
        dataset.shuffle(len(images))
        .repeat()
        .map(augment, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def train_dense(args: argparse.Namespace, data, steps: int) -> tuple[keras.Model, dict[str, Any]]:
    """Trains the dense baseline for `args.epochs`; returns it and its metrics."""
    keras.utils.set_random_seed(args.seed)
    model = build_resnet20(data.num_classes, l2=L2[args.recipe])
    compile_baseline(model, args.recipe, steps, args.epochs)
    started = time.perf_counter()
    history = model.fit(
        train_dataset(data.x_train, data.y_train, args.batch_size),
        epochs=args.epochs,
        steps_per_epoch=steps,
        verbose=2,
    )
    seconds = time.perf_counter() - started
    _, accuracy = model.evaluate(
        data.x_test.astype(np.float32), data.y_test, batch_size=256, verbose=0
    )
    metrics = {
        "recipe": args.recipe,
        "seed": args.seed,
        "test_accuracy": float(accuracy),
        "final_train_accuracy": float(history.history["accuracy"][-1]),
        "epochs": args.epochs,
        "steps": args.epochs * steps,
        "batch_size": args.batch_size,
        "seconds": round(seconds, 2),
        "images_per_second": round(args.epochs * steps * args.batch_size / seconds, 1),
        "params": int(model.count_params()),
    }
    return model, metrics


def dense_model(args: argparse.Namespace, data, steps: int) -> tuple[keras.Model, dict[str, Any]]:
    """The dense model of `--dense-dir` when it holds one of these settings, else trained (and
    kept there, when given)."""
    folder = args.dense_dir
    if folder is not None and all((folder / name).exists() for name in DENSE_FILES):
        metrics = json.loads((folder / "metrics.json").read_text())
        wanted = {"recipe": args.recipe, "seed": args.seed, "epochs": args.epochs}
        wanted.update(steps=args.epochs * steps, batch_size=args.batch_size)
        found = {key: metrics.get(key) for key in wanted}
        if found != wanted:
            raise SystemExit(f"{folder} holds a dense model of {found}, not {wanted}")
        print(f"reusing the dense model of {folder}")
        return keras.models.load_model(folder / "model.keras", compile=False), metrics
    model, metrics = train_dense(args, data, steps)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        # model.keras first: metrics.json marks the folder finished.
        temporary = folder / "model.tmp.keras"
        model.save(temporary)
        os.replace(temporary, folder / "model.keras")
        _write_json(folder / "metrics.json", metrics)
    return model, metrics


def prune_low_magnitude(
    model: keras.Model, sparsity: float, end_step: int, frequency: int
) -> keras.Model:
    """Wraps every Conv2D and Dense for magnitude pruning from 0 to `sparsity` by `end_step`."""
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0,
        final_sparsity=sparsity,
        begin_step=0,
        end_step=end_step,
        frequency=frequency,
    )

    def apply_pruning(layer):
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    return keras.models.clone_model(model, clone_function=apply_pruning)


def prune_and_finetune(args: argparse.Namespace, model: keras.Model, data, steps: int):
    """Fine-tunes `model` while pruning it; returns the stripped model and the fit's seconds."""
    keras.utils.set_random_seed(args.seed)
    total_steps = args.prune_epochs * steps
    pruned = prune_low_magnitude(model, args.prune_sparsity, total_steps, args.prune_frequency)
    schedule = keras.optimizers.schedules.CosineDecay(
        args.prune_learning_rate, decay_steps=total_steps
    )
    pruned.compile(
        optimizer=keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    started = time.perf_counter()
    pruned.fit(
        train_dataset(data.x_train, data.y_train, args.batch_size),
        epochs=args.prune_epochs,
        steps_per_epoch=steps,
        callbacks=[tfmot.sparsity.keras.UpdatePruningStep()],
        verbose=2,
    )
    seconds = time.perf_counter() - started
    return tfmot.sparsity.keras.strip_pruning(pruned), seconds


def kernel_sparsity(model: keras.Model) -> float:
    """The fraction of zeros in the Conv2D and Dense kernels."""
    kernels = [
        layer.kernel.numpy()
        for layer in model.layers
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))
    ]
    return sum(int(np.sum(k == 0)) for k in kernels) / sum(k.size for k in kernels)


def convert_int8(model: keras.Model, images: np.ndarray, samples: int, seed: int) -> bytes:
    """Full-integer int8 with uint8 input and output, calibrated on `samples` training images."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    chosen = np.random.default_rng(seed).choice(len(images), min(samples, len(images)), False)

    def representative_dataset():
        for image in images[chosen]:
            yield [image[None].astype(np.float32)]

    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8
    return converter.convert()


def file_sizes(path: Path) -> dict[str, int]:
    """Bytes on disk and gzip level-9 bytes (what a download costs)."""
    content = path.read_bytes()
    return {"bytes": len(content), "gzip_bytes": len(gzip.compress(content, compresslevel=9))}


def dense_float32_sizes(num_classes: int) -> dict[str, int]:
    """Sizes of the dense float32 .tflite of this architecture (freshly built): the baseline of
    the compression ratios."""
    converter = tf.lite.TFLiteConverter.from_keras_model(build_resnet20(num_classes))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "float32.tflite"
        path.write_bytes(converter.convert())
        return file_sizes(path)


def _quantized(image: np.ndarray, input_details: dict[str, Any]) -> np.ndarray:
    """One raw-pixel image as the file's input type (the guide: x / scale + zero point)."""
    dtype = input_details["dtype"]
    scale, zero_point = input_details["quantization"]
    if np.issubdtype(dtype, np.integer) and scale:
        image = np.round(image.astype(np.float32) / scale + zero_point)
        limits = np.iinfo(dtype)
        image = np.clip(image, limits.min, limits.max)
    return image[None].astype(dtype)


def tflite_accuracy(path: Path, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of the .tflite on raw-pixel images, one image at a time."""
    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    input_details = interpreter.get_input_details()[0]
    output_index = interpreter.get_output_details()[0]["index"]
    correct = 0
    for image, label in zip(images, labels, strict=True):
        interpreter.set_tensor(input_details["index"], _quantized(image, input_details))
        interpreter.invoke()
        correct += int(np.argmax(interpreter.get_tensor(output_index)[0]) == label)
    return correct / len(images)


def latency_ms(path: Path, image: np.ndarray, runs: int, threads: int = 1) -> float:
    """Median milliseconds of one batch-1 invocation, after a warm-up."""
    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    input_details = interpreter.get_input_details()[0]
    interpreter.set_tensor(input_details["index"], _quantized(image, input_details))
    for _ in range(LATENCY_WARMUP_RUNS):
        interpreter.invoke()
    durations = []
    for _ in range(runs):
        started = time.perf_counter()
        interpreter.invoke()
        durations.append(time.perf_counter() - started)
    return 1000.0 * statistics.median(durations)


def int8_weight_zeros(path: Path) -> dict[str, Any]:
    """Counts the zeros among the weights of the conv and fully-connected operators, read from
    the flatbuffer (a weight tensor's zero point is 0 in TFLite's int8 scheme)."""
    model = flatbuffer_utils.read_model(str(path))
    weights = zeros = 0
    for subgraph in model.subgraphs:
        seen = set()
        for operator in subgraph.operators:
            code = model.operatorCodes[operator.opcodeIndex]
            if max(code.builtinCode, code.deprecatedBuiltinCode) not in WEIGHT_OPS:
                continue
            index = operator.inputs[1]
            if index in seen:
                continue
            seen.add(index)
            tensor = subgraph.tensors[index]
            values = np.asarray(model.buffers[tensor.buffer].data, np.uint8).view(np.int8)
            zero_points = tensor.quantization.zeroPoint
            zero = int(zero_points[0]) if zero_points is not None and len(zero_points) else 0
            weights += values.size
            zeros += int(np.sum(values == zero))
    return {"weights": weights, "zeros": zeros, "zeros_fraction": zeros / weights}


def plain_tfmot(args: argparse.Namespace, data, steps: int) -> dict[str, Any]:
    """Dense (kept or reused), then pruned, stripped, int8-converted and measured."""
    model, dense = dense_model(args, data, steps)
    stripped, seconds = prune_and_finetune(args, model, data, steps)
    stripped.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    _, accuracy = stripped.evaluate(
        data.x_test.astype(np.float32), data.y_test, batch_size=256, verbose=0
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "int8.tflite"
    path.write_bytes(convert_int8(stripped, data.x_train, args.calibration_samples, args.seed))
    input_dtype = Interpreter(model_path=str(path)).get_input_details()[0]["dtype"]
    int8 = {
        "path": path.name,
        "accuracy": tflite_accuracy(path, data.x_test, data.y_test),
        **file_sizes(path),
        "zeros_fraction": int8_weight_zeros(path)["zeros_fraction"],
        "latency_ms": latency_ms(path, data.x_test[0], args.latency_runs),
        "latency_threads": 1,
        "latency_runs": args.latency_runs,
        "input_dtype": np.dtype(input_dtype).name,
    }
    dense_float32 = dense_float32_sizes(data.num_classes)
    int8["compression_gzip"] = round(dense_float32["gzip_bytes"] / int8["gzip_bytes"], 3)
    return {
        "recipe": args.recipe,
        "seed": args.seed,
        "epochs": args.epochs,
        "prune_epochs": args.prune_epochs,
        "total_epochs": args.epochs + args.prune_epochs,
        "dense": {
            "dir": str(args.dense_dir) if args.dense_dir else None,
            "test_accuracy": dense["test_accuracy"],
        },
        "prune": {
            "sparsity": args.prune_sparsity,
            "schedule": "PolynomialDecay 0 -> sparsity, power 3, begin_step 0, end_step = last "
            "fine-tuning step (the tfmot pruning guide's)",
            "frequency": args.prune_frequency,
            "optimizer": f"SGD Nesterov momentum 0.9, cosine from {args.prune_learning_rate} to 0",
            "steps": args.prune_epochs * steps,
            "seconds": round(seconds, 2),
        },
        "test_accuracy": float(accuracy),
        "kernel_sparsity": kernel_sparsity(stripped),
        "tflite": {"int8": int8},
        "dense_float32": dense_float32,
        "calibration_samples": args.calibration_samples,
    }


def main(argv: list[str] | None = None) -> int:
    """Trains the baseline (and prunes it, with `--prune-sparsity`); writes `<out>/metrics.json`."""
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("--epochs", type=int, default=10, help="dense epochs")
    arguments.add_argument("--recipe", choices=RECIPES, default="strong")
    arguments.add_argument("--seed", type=int, default=0)
    arguments.add_argument("--batch-size", type=int, default=128)
    arguments.add_argument("--steps-per-epoch", type=int, default=0, help="0 means a full pass")
    arguments.add_argument("--out", type=Path, required=True, help="folder for metrics.json")
    arguments.add_argument("--quick", action="store_true", help="the bundled sample")
    arguments.add_argument(
        "--prune-sparsity",
        type=float,
        default=0.0,
        help="plain tfmot: prune the dense model to this fraction of zeros, export int8 (0: off)",
    )
    arguments.add_argument("--prune-epochs", type=int, default=5, help="pruning fine-tune epochs")
    # The strong recipe's own peak rate: at 0.01 plain tfmot scored 0.4 / 0.9 / 2.5 pt less at
    # 70 / 80 / 90% zeros (bench/README.md), and the baseline must be the strongest plain recipe.
    arguments.add_argument("--prune-learning-rate", type=float, default=0.1)
    arguments.add_argument(
        "--prune-frequency", type=int, default=100, help="steps between mask updates"
    )
    arguments.add_argument(
        "--dense-dir", type=Path, help="keep the dense model here, or reuse the one kept there"
    )
    arguments.add_argument("--calibration-samples", type=int, default=500)
    arguments.add_argument("--latency-runs", type=int, default=100)
    common.data_arguments(arguments)
    args = arguments.parse_args(argv)
    metrics_path = args.out / "metrics.json"
    if metrics_path.exists():
        print(f"{args.out} is already finished")
        return 0
    data = common.load_images(args.quick, args.data_path)
    steps = args.steps_per_epoch or len(data.x_train) // args.batch_size
    if args.prune_sparsity:
        metrics = plain_tfmot(args, data, steps)
        _write_json(metrics_path, metrics)
    else:
        args.dense_dir = args.out  # model.keras beside metrics.json, for plain tfmot to reuse
        _, metrics = dense_model(args, data, steps)
    print(json.dumps(metrics, indent=2))
    return 0


def _write_json(path: Path, values: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(values, indent=2))
    os.replace(temporary, path)


if __name__ == "__main__":
    raise SystemExit(main())
