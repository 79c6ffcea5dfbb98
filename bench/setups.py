"""compactcnn's training set-up, built from its own stages the way `compactcnn/run.py` builds it.

Benchmarks time `model.fit` on this set-up directly, leaving out run.py's per-epoch file writing
(CSV history, backups, TensorBoard), which costs nothing per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import tensorflow as tf

from bench import common
from compactcnn import distribute, prune, train
from compactcnn.config import load_config
from compactcnn.data import pipeline
from compactcnn.models import create_model

# Pruning benchmarks use the schedule of configs/pruning/*: polynomial, a mask update every 100
# steps, here over a 10-epoch run so the timed steps fall inside the pruning window.
PRUNE_EPOCHS = 10


@dataclass
class Training:
    """A compiled model, its endless training stream and the callbacks its `fit` needs."""

    model: Any
    dataset: tf.data.Dataset
    callbacks: list
    batch_size: int


def compactcnn_training(
    data,
    batch_size: int,
    precision: str = "float32",
    pruning: bool = False,
    frequency: int = 100,
    strategy: tf.distribute.Strategy | None = None,
) -> Training:
    """Builds compactcnn's ResNet-20 training on `data` with the JPEG config's hyperparameters.

    Args:
        data: A `compactcnn.data.ImageData`.
        batch_size: Global batch (images per step over all replicas).
        precision: float32, mixed_float16 or mixed_bfloat16.
        pruning: Wrap for polynomial pruning to 70%, mask updates every `frequency` steps.
        frequency: Steps between mask updates.
        strategy: Build inside this strategy's scope (default: TensorFlow's default strategy).

    Returns:
        The set-up; the global precision policy is float32 again afterwards.
    """
    overrides = [f"train.batch_size={batch_size}", f"train.precision={precision}"]
    if pruning:
        overrides += [
            "prune.schedule=polynomial",
            "prune.final_sparsity=0.7",
            f"prune.frequency={frequency}",
            f"train.epochs={PRUNE_EPOCHS}",
        ]
    config = load_config(common.resolve(common.JPEG_CONFIG), overrides)
    strategy = strategy or tf.distribute.get_strategy()
    steps_per_epoch = max(1, len(data.x_train) // batch_size)
    dataset = train.one_hot(
        pipeline.train_dataset(
            data.x_train, data.y_train, batch_size, augment=True, seed=config.train.seed
        ),
        data.num_classes,
    )
    distribute.set_precision(precision)
    try:
        with strategy.scope():
            model = create_model(config.model.name, data.num_classes)
            model = prune.wrap(model, config.prune, steps_per_epoch, config.train.epochs)
            schedule = train.learning_rate_schedule(
                config.train, steps_per_epoch, config.train.learning_rate
            )
            train.compile_model(model, config.train, train.build_optimizer(config.train, schedule))
    finally:
        distribute.set_precision("float32")
    callbacks = prune.callbacks(None) if pruning else []
    return Training(model, dataset, callbacks, batch_size)
