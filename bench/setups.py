"""compactcnn's training set-up, built by the phase `compactcnn run` uses (`run.build_training`).

Benchmarks time `model.fit` on this set-up directly, leaving out run.py's per-epoch file writing
(CSV history, backups, TensorBoard), which costs nothing per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import tensorflow as tf

from bench import common
from compactcnn import distribute, run
from compactcnn.config import load_config

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
    """Builds compactcnn's ResNet-20 training on `data` with the JPEG config's recipe.

    Args:
        data: A `compactcnn.data.ImageData`.
        batch_size: Images per replica per step (`train.batch_size`); the global batch and the
            learning rate scale with the strategy's replicas as in `compactcnn run`.
        precision: float32, mixed_float16, mixed_bfloat16 or auto.
        pruning: Wrap for polynomial pruning to 70%, mask updates every `frequency` steps.
        frequency: Steps between mask updates.
        strategy: Build inside this strategy's scope (default: TensorFlow's default strategy).

    Returns:
        The set-up (its `batch_size` is the global batch); the global precision policy is
        float32 again afterwards.
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
    try:
        built = run.build_training(
            config, strategy=strategy or tf.distribute.get_strategy(), data=data
        )
    finally:
        distribute.set_precision("float32")
    return Training(built.model, built.train_stream(), built.callbacks, built.global_batch)
