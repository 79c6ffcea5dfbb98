"""The plain tf_keras baseline: ResNet-20 v1 trained the way a competent Keras user trains it.

Two recipes, both plain tf_keras with nothing imported from compactcnn's model, pipeline or
training code:

- `strong` (the default, and the one every "vs plain Keras" claim compares against): the He et
  al. 2016 CIFAR recipe as a competent user writes it today: SGD 0.1 with Nesterov momentum 0.9
  at batch 128, cosine decay after a 1-epoch linear warm-up, L2 5e-4 kernel regularizers, pad-4
  random crop and flip.
- `keras-example`: the Keras CIFAR-10 ResNet example's recipe (Adam 1e-3, constant, L2 1e-4),
  kept as a second, clearly named row.

The model is the Keras example's (a `resnet_layer` helper, biases, projection shortcuts with BN),
and the input pipeline is the tf.data guide's per-image `map`. Only the layer list matches
compactcnn's ResNet-20, so differences come from how the training is fed and compiled.

Run alone, it trains for a few epochs and writes the test accuracy:

    python -m bench.baseline --epochs 10 --out bench/cache/baseline-strong-e10
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras as keras

from bench import common

PADDED_SIZE = 40
RECIPES = ("strong", "keras-example")
# Kernel L2 coefficient per recipe (Keras `l2(c)` adds c * sum(w^2) to the loss).
L2 = {"strong": 5e-4, "keras-example": 1e-4}


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


def main(argv: list[str] | None = None) -> int:
    """Trains the baseline and writes `<out>/metrics.json` (test accuracy, seconds)."""
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("--epochs", type=int, default=10)
    arguments.add_argument("--recipe", choices=RECIPES, default="strong")
    arguments.add_argument("--seed", type=int, default=0)
    arguments.add_argument("--batch-size", type=int, default=128)
    arguments.add_argument("--steps-per-epoch", type=int, default=0, help="0 means a full pass")
    arguments.add_argument("--out", type=Path, required=True, help="folder for metrics.json")
    arguments.add_argument("--quick", action="store_true", help="the bundled sample")
    common.data_arguments(arguments)
    args = arguments.parse_args(argv)
    metrics_path = args.out / "metrics.json"
    if metrics_path.exists():
        print(f"{args.out} is already finished")
        return 0
    data = common.load_images(args.quick, args.data_path)
    keras.utils.set_random_seed(args.seed)
    steps = args.steps_per_epoch or len(data.x_train) // args.batch_size
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
        "seconds": round(seconds, 2),
        "images_per_second": round(args.epochs * steps * args.batch_size / seconds, 1),
        "params": int(model.count_params()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    temporary = metrics_path.with_name(metrics_path.name + ".tmp")
    temporary.write_text(json.dumps(metrics, indent=2))
    os.replace(temporary, metrics_path)
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
