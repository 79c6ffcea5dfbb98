"""Knowledge distillation (Hinton et al. 2015): the student also learns the teacher's soft targets.

    loss = (1 - alpha) * CE(labels, p_s) + alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))

CE is the run's own loss (label smoothing included). Every compactcnn model ends in a softmax, so
the logits are taken as z = log(p): a softmax does not change when a constant is added to all
logits, and log(p) = z - logsumexp(z), so softmax(log(p) / T) = softmax(z / T) exactly. The T^2
keeps the soft-target gradients as large as the hard-target ones whatever T is (Hinton et al.).

`Distiller` is a Keras model holding the student; its `train_step` runs the frozen teacher in
inference mode on the same augmented batch. Callbacks see the Distiller as their model: tfmot's
pruning callbacks find the student's wrappers through it (they search sub-models). The teacher
is kept out of Keras' attribute tracking, so it is in neither the Distiller's weights nor the
training backups: a resumed run loads it again from `distill.teacher`. Whatever trains the
student (pruning, the clustering and QAT fine-tunes) exports the student alone (`student_of`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from compactcnn import pretrained
from compactcnn.config import DistillConfig
from compactcnn.errors import UserError

# log(p) of a probability that underflowed to 0 would be -inf (and its KL term NaN): probabilities
# are floored at the smallest normal float32, a logit 87 below the top class, which at T >= 1
# leaves a soft target below 1e-9 of the top one.
_SMALLEST_PROBABILITY = float(np.finfo(np.float32).tiny)
# Images per teacher call when its test accuracy is measured.
_EVALUATION_BATCH = 256


def enabled(distill_config: DistillConfig) -> bool:
    """Whether the config distills (`distill.teacher` set, not null or "")."""
    return bool(distill_config.teacher)


def log_probabilities(probabilities: tf.Tensor) -> tf.Tensor:
    """log(p) in float32, with p floored so that a probability of 0 gives a finite logit."""
    probabilities = tf.cast(probabilities, tf.float32)
    return tf.math.log(tf.maximum(probabilities, _SMALLEST_PROBABILITY))


def distillation_loss(
    teacher_probabilities: tf.Tensor, student_probabilities: tf.Tensor, temperature: float
) -> tf.Tensor:
    """The per-example distillation term T^2 * KL(softmax(z_t / T) || softmax(z_s / T)).

    Args:
        teacher_probabilities: The teacher's softmax outputs, [batch, classes].
        student_probabilities: The student's softmax outputs, [batch, classes].
        temperature: T > 0; higher softens both distributions.

    Returns:
        One float32 value per example, [batch].
    """
    teacher = tf.nn.log_softmax(log_probabilities(teacher_probabilities) / temperature)
    student = tf.nn.log_softmax(log_probabilities(student_probabilities) / temperature)
    divergence = tf.reduce_sum(tf.exp(teacher) * (teacher - student), axis=-1)
    return temperature**2 * divergence


class _Untracked:
    """Holds a model where Keras' attribute tracking does not look (it is not a Trackable)."""

    def __init__(self, model: keras.Model):
        self.model = model


class Distiller(keras.Model):
    """Trains `student` on its loss plus the distillation term; `teacher` stays frozen.

    Compile it as the student would be compiled (`train.compile_model`): its `loss` is the
    cross-entropy part. `fit` logs `loss` (the whole objective), `student_loss` (the compiled
    loss and the student's regularization losses), `distillation_loss` (T^2 * KL) and the
    compiled metrics of the student's predictions; validation logs the same with `val_`.

    Args:
        student: The model trained (pruning, clustering or QAT wrappers included).
        teacher: A trained model with the student's input and classes; set non-trainable here.
        alpha: Weight of the distillation term, in [0, 1].
        temperature: Softmax temperature T > 0.
    """

    def __init__(
        self, student: keras.Model, teacher: keras.Model, alpha: float, temperature: float
    ):
        super().__init__(name=f"{student.name}_distiller")
        self.student = student
        teacher.trainable = False
        self._teacher = _Untracked(teacher)
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.student_loss_tracker = keras.metrics.Mean(name="student_loss")
        self.distillation_loss_tracker = keras.metrics.Mean(name="distillation_loss")

    @property
    def teacher(self) -> keras.Model:
        """The frozen teacher."""
        return self._teacher.model

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        trackers = [self.loss_tracker, self.student_loss_tracker, self.distillation_loss_tracker]
        compiled = self.compiled_metrics.metrics if self.compiled_metrics is not None else []
        return [*trackers, *compiled]

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def per_example_losses(
        self, labels: tf.Tensor, student_probabilities: tf.Tensor, teacher_probabilities: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """(objective, cross-entropy, distillation term), one value per example each.

        The cross-entropy is the compiled loss's own per-example value (its label smoothing
        included); the student's regularization losses are added by the steps, once per batch.
        """
        cross_entropy = tf.cast(self.loss.call(labels, student_probabilities), tf.float32)
        distillation = distillation_loss(
            teacher_probabilities, student_probabilities, self.temperature
        )
        objective = (1.0 - self.alpha) * cross_entropy + self.alpha * distillation
        return objective, cross_entropy, distillation

    def _teacher_probabilities(self, x) -> tf.Tensor:
        # The same (augmented) batch as the student, in inference mode: BN uses its moving
        # statistics and dropout is off.
        return tf.stop_gradient(self.teacher(x, training=False))

    def _step_losses(
        self, x, y, sample_weight, teacher_probabilities, training: bool
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """Runs the student and updates the loss trackers; returns (loss to minimize, y_pred)."""
        y_pred = self.student(x, training=training)
        objective, cross_entropy, distillation = self.per_example_losses(
            y, y_pred, teacher_probabilities
        )
        losses = [tf.cast(loss, tf.float32) for loss in self.losses]  # the student's
        regularization = tf.add_n(losses) if losses else tf.constant(0.0)
        # Averaged over the global batch, as Keras scales its compiled loss under a strategy:
        # the gradients summed over replicas are then those of the global mean.
        loss = tf.nn.compute_average_loss(objective, sample_weight=sample_weight)
        loss += regularization / tf.distribute.get_strategy().num_replicas_in_sync
        self.loss_tracker.update_state(objective + regularization, sample_weight)
        self.student_loss_tracker.update_state(cross_entropy + regularization, sample_weight)
        self.distillation_loss_tracker.update_state(distillation, sample_weight)
        return loss, y_pred

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        teacher_probabilities = self._teacher_probabilities(x)  # outside the tape
        with tf.GradientTape() as tape:
            loss, y_pred = self._step_losses(
                x, y, sample_weight, teacher_probabilities, training=True
            )
        # The student's variables only (the teacher is frozen); a LossScaleOptimizer scales the
        # loss itself when given the tape, as in Keras' own train_step.
        self.optimizer.minimize(loss, self.student.trainable_variables, tape=tape)
        return self.compute_metrics(x, y, y_pred, sample_weight)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        teacher_probabilities = self._teacher_probabilities(x)
        _, y_pred = self._step_losses(x, y, sample_weight, teacher_probabilities, training=False)
        return self.compute_metrics(x, y, y_pred, sample_weight)


def wrap(model: keras.Model, teacher: keras.Model | None, distill_config: DistillConfig):
    """The model to compile and fit: a `Distiller` around `model`, or `model` without a teacher.

    Call it inside `strategy.scope()` when training distributed (the Distiller owns metrics).
    """
    if teacher is None:
        return model
    return Distiller(model, teacher, distill_config.alpha, distill_config.temperature)


def student_of(model: keras.Model) -> keras.Model:
    """The model being trained: a Distiller's student, or `model` itself."""
    return model.student if isinstance(model, Distiller) else model


def load_teacher(
    distill_config: DistillConfig, num_classes: int, image_size: tuple[int, int]
) -> keras.Model | None:
    """Loads and checks the teacher, frozen; call it inside `strategy.scope()`.

    Args:
        distill_config: The `distill` section.
        num_classes: The run's classes.
        image_size: The run's (height, width).

    Returns:
        The non-trainable teacher, or None when the config does not distill.

    Raises:
        UserError: When the file is missing or does not load, or the teacher takes other
            images, has another number of classes, or does not end in a softmax.
    """
    if not enabled(distill_config):
        return None
    path = pretrained.resolve(distill_config.teacher, "distill.teacher")
    try:
        teacher = keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Loaders raise many types for a damaged or foreign file.
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise UserError(
            f"distill.teacher '{path}' does not load as a tf_keras model ({reason}); pass a "
            "model.keras saved by compactcnn or tf_keras"
        ) from None
    if not isinstance(teacher.input_shape, tuple) or not isinstance(teacher.output_shape, tuple):
        raise UserError(f"distill.teacher '{path}' must have one input and one output")
    wanted = (*image_size, 3)
    found = tuple(teacher.input_shape[1:])
    if len(found) != 3 or any(
        side not in (None, want) for side, want in zip(found, wanted, strict=True)
    ):
        raise UserError(
            f"distill.teacher '{path}' takes {found} images, but this run feeds {wanted}; "
            "use a teacher trained at the run's image size (data.image_size)"
        )
    classes = teacher.output_shape[-1]
    if len(teacher.output_shape) != 2 or classes != num_classes:
        raise UserError(
            f"distill.teacher '{path}' outputs {classes} classes, but the data has "
            f"{num_classes}; use a teacher trained on the same data (and data.label_mode)"
        )
    if not _ends_in_softmax(teacher):
        raise UserError(
            f"distill.teacher '{path}' does not end in a softmax; distillation reads class "
            "probabilities, as every compactcnn model.keras outputs"
        )
    teacher.trainable = False
    return teacher


def _ends_in_softmax(model: keras.Model) -> bool:
    output = model.get_layer(model.output_names[0])
    if isinstance(output, keras.layers.Softmax):
        return True
    activation = getattr(output, "activation", None)
    function = keras.activations.serialize(activation) if activation is not None else None
    if isinstance(function, dict):
        function = function.get("config", function.get("class_name"))
    return function == "softmax"


def report(
    distill_config: DistillConfig, teacher: keras.Model, images: np.ndarray, labels: np.ndarray
) -> dict[str, Any]:
    """The distillation settings and the teacher's test accuracy, for metrics.json."""
    correct = 0
    for start in range(0, len(images), _EVALUATION_BATCH):
        batch = images[start : start + _EVALUATION_BATCH].astype(np.float32)
        # Called directly, not through predict: under a multi-worker strategy the teacher's
        # variables are mirrored, and this needs no collective op.
        probabilities = teacher(batch, training=False)
        predicted = np.argmax(np.asarray(probabilities), axis=-1)
        correct += int(np.sum(predicted == labels[start : start + _EVALUATION_BATCH]))
    return {
        "teacher": str(pretrained.resolve(distill_config.teacher, "distill.teacher")),
        "alpha": distill_config.alpha,
        "temperature": distill_config.temperature,
        "teacher_test_accuracy": correct / len(images) if len(images) else None,
    }
