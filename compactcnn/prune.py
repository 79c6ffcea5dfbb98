"""Magnitude pruning with tfmot: schedules from the config, wrap/strip, and sparsity reports.

The kernels of Conv2D, DepthwiseConv2D, SeparableConv2D and Dense layers are pruned (see
`compactcnn.kernels`). tfmot's step semantics, which everything here follows:
`UpdatePruningStep` sets each wrapper's `pruning_step` to 0 when training starts, and every training
batch increments it before the masks are looked at, so the k-th batch runs at pruning step k. Masks
are recomputed at steps `begin + i * frequency` up to `end`; in between they stay fixed.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras

from compactcnn import allocation, compat, distill, files, kernels
from compactcnn.compat import PruneLowMagnitude
from compactcnn.config import PruneConfig
from compactcnn.errors import UserError

_sparsity = tfmot.sparsity.keras
# The layers whose kernels pruning, clustering and QAT compress (cluster.py reuses this tuple).
PRUNABLE_LAYER_TYPES = kernels.KERNEL_LAYER_TYPES
# tfmot's prune registry lists these with no (or not all) kernels to prune; compactcnn names them.
_OWN_KERNEL_TYPES = (keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)


def _step_range(prune_config: PruneConfig, steps_per_epoch: int, epochs: int) -> tuple[int, int]:
    """Returns tfmot's (begin_step, end_step) for the config.

    The end is moved back onto the last mask update, `begin + n * frequency`, as in Zhu & Gupta:
    tfmot only prunes at those steps, so an end between two of them would leave the final masks
    short of `final_sparsity`.
    """
    end_epoch = prune_config.end_epoch if prune_config.end_epoch is not None else 0.75 * epochs
    begin_step = round(prune_config.begin_epoch * steps_per_epoch)
    end_step = round(end_epoch * steps_per_epoch)
    updates = (end_step - begin_step) // prune_config.frequency
    # Training never runs step 0 (the first batch is step 1), so a lone update at step 0 is lost.
    if updates < 1 and (prune_config.schedule == "polynomial" or begin_step < 1):
        raise UserError(
            f"prune.frequency ({prune_config.frequency} steps) is longer than the pruning window "
            f"(steps {begin_step} to {end_step} at {steps_per_epoch} steps per epoch); "
            "lower prune.frequency or widen begin_epoch..end_epoch"
        )
    return begin_step, begin_step + updates * prune_config.frequency


def make_schedule(
    prune_config: PruneConfig, steps_per_epoch: int, epochs: int
) -> _sparsity.PruningSchedule | None:
    """Builds the tfmot pruning schedule of the config.

    Args:
        prune_config: The `prune` section.
        steps_per_epoch: Training steps (batches) per epoch.
        epochs: Training epochs; `end_epoch` None means 0.75 of them.

    Returns:
        `ConstantSparsity` or `PolynomialDecay` with begin/end steps at
        `round(epoch * steps_per_epoch)` (the end moved back onto the last mask update), or None
        for the `none` schedule.

    Raises:
        UserError: When no mask update would fall inside the pruning window.
    """
    if prune_config.schedule == "none":
        return None
    begin_step, end_step = _step_range(prune_config, steps_per_epoch, epochs)
    if prune_config.schedule == "constant":
        return _sparsity.ConstantSparsity(
            prune_config.final_sparsity,
            begin_step=begin_step,
            end_step=end_step,
            frequency=prune_config.frequency,
        )
    return _sparsity.PolynomialDecay(
        initial_sparsity=prune_config.initial_sparsity,
        final_sparsity=prune_config.final_sparsity,
        begin_step=begin_step,
        end_step=end_step,
        power=prune_config.power,
        frequency=prune_config.frequency,
    )


def _check_exclude(model: keras.Model, patterns: list[str]) -> None:
    names = [layer.name for layer in model.layers]
    for pattern in patterns:
        try:
            matches = any(re.search(pattern, name) for name in names)
        except re.error as error:
            raise UserError(f"prune.exclude '{pattern}' is not a valid regex: {error}") from None
        if not matches:
            raise UserError(
                f"prune.exclude '{pattern}' matches no layer of {model.name}; "
                f"layer names look like {', '.join(names[1:4])}"
            )


def skipped_layers(model: keras.Model, prune_config: PruneConfig) -> dict[str, str]:
    """The layers with weights that pruning leaves dense, and why.

    Args:
        model: A Functional model, unwrapped.
        prune_config: The `prune` section.

    Returns:
        {layer name: reason}: kernel layers excluded by `prune.exclude` or unable to hold the
        `m_by_n` pattern, and layers whose weights are not kernels compactcnn prunes (other than
        BatchNormalization, which the export folds into the layer before it). Empty for the
        `none` schedule.

    Raises:
        UserError: On an `exclude` pattern that is invalid or matches no layer, or a layer with
            kernels that tfmot cannot wrap (and `exclude` does not keep dense).
    """
    if prune_config.schedule == "none":
        return {}
    _check_exclude(model, prune_config.exclude)
    m_by_n = tuple(prune_config.m_by_n) if prune_config.m_by_n else None
    skipped = {}
    for layer in model.layers:
        pattern = next((p for p in prune_config.exclude if re.search(p, layer.name)), None)
        if pattern is not None and kernels.kernel_weights(layer):
            skipped[layer.name] = f"prune.exclude '{pattern}'"
            continue
        unwrappable = kernels.unwrappable_reason(layer)
        if unwrappable:
            raise UserError(
                f"layer '{layer.name}' ({unwrappable}) has kernels that tfmot cannot wrap for "
                f"pruning; build it from {kernels.KERNEL_LAYER_NAMES} itself, or keep it dense "
                f"with prune.exclude=['^{layer.name}$']"
            )
        if kernels.is_kernel_layer(layer):
            reason = _m_by_n_reason(layer, m_by_n) if m_by_n else None
            if reason:
                skipped[layer.name] = reason
        elif layer.trainable_weights and not isinstance(layer, keras.layers.BatchNormalization):
            skipped[layer.name] = (
                f"prune: a {type(layer).__name__} has no kernel compactcnn prunes "
                f"({kernels.KERNEL_LAYER_NAMES})"
            )
    return skipped


def _m_by_n_reason(layer: keras.layers.Layer, m_by_n: tuple[int, int]) -> str | None:
    """Why a kernel layer cannot hold the m:n pattern, or None when it can."""
    if isinstance(layer, _OWN_KERNEL_TYPES):
        return "prune.m_by_n applies to Conv2D and Dense kernels only"
    # Conv2D kernels are [height, width, in, out], Dense kernels [in, out].
    channels = int(layer.kernel.shape[-2])
    if channels % m_by_n[1]:
        return f"prune.m_by_n: {channels} input channels are not a multiple of {m_by_n[1]}"
    return None


def _prunable_copy(layer: keras.layers.Layer) -> keras.layers.Layer:
    """A fresh copy of a kernel layer that tfmot's wrapper prunes every kernel of."""
    copy = layer.__class__.from_config(layer.get_config())
    if isinstance(layer, _OWN_KERNEL_TYPES):
        # tfmot's own way to name a layer's prunable weights (its registry sets this attribute
        # too); read when the wrapper is built, after the copy has its kernels.
        copy.get_prunable_weights = lambda: kernels.kernel_weights(copy)
    return copy


def wrap(
    model: keras.Model, prune_config: PruneConfig, steps_per_epoch: int, epochs: int
) -> keras.Model:
    """Wraps the model's kernel layers for magnitude pruning, keeping its weights.

    The kernel layers are Conv2D, DepthwiseConv2D, SeparableConv2D and Dense (every kernel of
    each). Every other layer is copied as it is, because tfmot cannot wrap some of them (the
    `Rescaling` input layer). Call it inside `strategy.scope()` when training distributed.
    Under a mixed policy the wrapped layers compute in 16 bits like the rest of the model, while
    their master kernels, masks and thresholds stay float32 and are masked in float32
    (`compat.MixedPrecisionPruneLowMagnitude`). `skipped_layers` says which layers stay dense.

    With `m_by_n` = [m, n], tfmot sets the masks once, at step 1, to m zeros in every n input
    channels and ignores the sparsity schedule; layers whose input channels are not a multiple of
    n (the first convolution on RGB) cannot hold that pattern and stay dense, as do depthwise
    and separable convolutions.

    Each wrapped layer gets its own schedule, to the target `prune.allocation` gives it
    (`compactcnn.allocation.layer_targets`, from the model's weights now); `layer_targets`
    reads them back from the wrapped model.

    Args:
        model: A Functional model, freshly built or trained (its weights are kept).
        prune_config: The `prune` section.
        steps_per_epoch: Training steps per epoch.
        epochs: Training epochs.

    Returns:
        A new model with `PruneLowMagnitude` wrappers, or `model` itself for the `none` schedule.
        Train it with `callbacks(...)`.

    Raises:
        UserError: On an `exclude` pattern that is invalid or matches no layer, a layer with
            kernels tfmot cannot wrap, when nothing is left to prune, when the schedule has
            no mask update, or when the allocation cannot reach the target (caps, sensitivity
            file).
    """
    schedule = make_schedule(prune_config, steps_per_epoch, epochs)
    if schedule is None:
        return model
    skipped = skipped_layers(model, prune_config)
    m_by_n = tuple(prune_config.m_by_n) if prune_config.m_by_n else None
    copies: dict[str, keras.layers.Layer] = {}
    names = [
        layer.name
        for layer in model.layers
        if kernels.is_kernel_layer(layer) and layer.name not in skipped
    ]
    # One target per layer (prune.allocation), from the weights pruning starts from.
    targets = allocation.layer_targets(model, prune_config, names) if names else {}

    def clone_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
        if layer.name in targets:
            inner = _prunable_copy(layer)
            # tfmot's wrapper (what `prune_low_magnitude` returns for one layer), with the mask
            # update kept in float32 so the wrapper can take the layer's own policy: the layer
            # computes in it (a float32 output layer in float32) and its kernel is never rounded.
            copy = compat.MixedPrecisionPruneLowMagnitude(
                inner,
                pruning_schedule=_layer_schedule(
                    schedule, prune_config, steps_per_epoch, epochs, targets[layer.name]
                ),
                sparsity_m_by_n=m_by_n,
                dtype=inner.dtype_policy,
            )
        else:
            copy = layer.__class__.from_config(layer.get_config())
        copies[layer.name] = copy
        return copy

    wrapped = keras.models.clone_model(model, clone_function=clone_layer)
    if not any(isinstance(layer, PruneLowMagnitude) for layer in wrapped.layers):
        raise UserError(
            f"no {kernels.KERNEL_LAYER_NAMES} layer of {model.name} is left to prune; "
            "loosen prune.exclude (or prune.m_by_n)"
        )
    for layer in model.layers:
        if layer.weights:
            # A wrapper's set_weights sets its inner layer's weights, leaving the masks at ones.
            copies[layer.name].set_weights(layer.get_weights())
    return wrapped


def _layer_schedule(
    schedule: _sparsity.PruningSchedule,
    prune_config: PruneConfig,
    steps_per_epoch: int,
    epochs: int,
    target: float,
) -> _sparsity.PruningSchedule:
    """The schedule of a layer whose final target is `target`: `schedule` scaled to it.

    The polynomial's initial sparsity is scaled by the same factor, so at every step the
    parameter-weighted mean over the layers follows the global curve (pruning_schedule.csv).
    """
    final = prune_config.final_sparsity
    if target == final:
        return schedule
    scale = target / final if final else 1.0
    layer_config = dataclasses.replace(
        prune_config,
        final_sparsity=target,
        initial_sparsity=min(prune_config.initial_sparsity * scale, target),
    )
    return make_schedule(layer_config, steps_per_epoch, epochs)


def layer_targets(model: keras.Model) -> dict[str, float]:
    """The final target sparsity of each wrapped layer, read from its tfmot schedule.

    Returns:
        {layer name: target}: the schedule's `final_sparsity` (polynomial) or
        `target_sparsity` (constant), or m/n with `m_by_n`; {} for a model without wrappers.
    """
    targets = {}
    for layer in _pruning_layers(model):
        if layer.sparsity_m_by_n:
            m, n = layer.sparsity_m_by_n
            targets[layer.layer.name] = m / n
            continue
        values = layer.pruning_schedule.get_config()["config"]
        targets[layer.layer.name] = float(
            values.get("final_sparsity", values.get("target_sparsity"))
        )
    return targets


def _pruning_layers(model: keras.Model) -> list[PruneLowMagnitude]:
    return [layer for layer in model.layers if isinstance(layer, PruneLowMagnitude)]


class SparsityLogger(keras.callbacks.Callback):
    """Adds `sparsity` (of the prunable kernels) and `pruning_step` to the epoch logs.

    Place it after `UpdatePruningStep` (which re-masks the kernels at the epoch end) and before a
    CSVLogger, which then records both columns.
    """

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is None:
            return
        model = distill.student_of(self.model)  # a Distiller reports on its student
        logs["sparsity"] = sparsity_report(model)["overall_sparsity"]
        wrappers = _pruning_layers(model)
        if wrappers:
            logs["pruning_step"] = int(keras.backend.get_value(wrappers[0].pruning_step))


def callbacks(log_dir: str | os.PathLike | None) -> list[keras.callbacks.Callback]:
    """Returns the callbacks a pruned model's `fit` needs, in the order they must run.

    Args:
        log_dir: TensorBoard folder for the pruning summaries, or None for none.
            `PruningSummaries` is itself a TensorBoard callback (it also writes the train and
            validation scalars), so give it a folder of its own, e.g. `<run>/logs/pruning`.

    Returns:
        `UpdatePruningStep`, `PruningSummaries` and a `SparsityLogger`; put them before the
        CSVLogger so `history.csv` gets the `sparsity` and `pruning_step` columns.
    """
    summaries = [] if log_dir is None else [_sparsity.PruningSummaries(log_dir=str(log_dir))]
    return [_sparsity.UpdatePruningStep(), *summaries, SparsityLogger()]


def strip(model: keras.Model) -> keras.Model:
    """Removes the pruning wrappers, keeping the pruned (zeroed) kernels.

    Returns:
        The model with plain layers, sharing their weights with `model`.
    """
    return _sparsity.strip_pruning(model)


def sparsity_report(model: keras.Model, targets: dict[str, float] | None = None) -> dict:
    """Counts zeros in a wrapped or stripped model.

    Args:
        model: A model with or without pruning wrappers.
        targets: Per-layer target sparsities (`layer_targets` of the wrapped model), added to
            their layers' entries as `target`.

    Returns:
        `{"overall_sparsity", "total_params", "nonzero_params", "layers": {name: {"params",
        "zeros", "sparsity"[, "target"]}}}`. `overall_sparsity` and `layers` cover the kernels
        of the kernel layers (see `compactcnn.kernels`; a SeparableConv2D's two kernels
        together), named by their layer, wrapped or not; `total_params`/`nonzero_params` count
        every weight of the model except the wrappers' masks, thresholds and steps, so a wrapped
        model and its stripped copy report the same numbers. Plain ints and floats.
    """
    layers = []
    for layer in model.layers:
        inner = layer.layer if isinstance(layer, PruneLowMagnitude) else layer
        layers.append(inner)
    all_weights = [weight for layer in layers for weight in layer.weights]
    arrays = keras.backend.batch_get_value(all_weights)
    values = dict(zip(map(id, all_weights), arrays, strict=True))
    total = sum(int(value.size) for value in values.values())
    nonzero = sum(int(np.count_nonzero(value)) for value in values.values())
    per_layer = {}
    for layer in layers:
        if kernels.is_kernel_layer(layer):
            arrays = [values[id(kernel)] for kernel in kernels.kernel_weights(layer)]
            size = sum(int(array.size) for array in arrays)
            zeros = size - sum(int(np.count_nonzero(array)) for array in arrays)
            per_layer[layer.name] = {"params": size, "zeros": zeros, "sparsity": zeros / size}
            if targets and layer.name in targets:
                per_layer[layer.name]["target"] = targets[layer.name]
    kernel_params = sum(entry["params"] for entry in per_layer.values())
    kernel_zeros = sum(entry["zeros"] for entry in per_layer.values())
    return {
        "overall_sparsity": kernel_zeros / kernel_params if kernel_params else 0.0,
        "total_params": total,
        "nonzero_params": nonzero,
        "layers": per_layer,
    }


def write_schedule_csv(
    prune_config: PruneConfig, steps_per_epoch: int, epochs: int, path: str | os.PathLike
) -> None:
    """Writes `step,target_sparsity`: the sparsity the masks are set to at each update.

    Rows are step 0 (no pruning yet), every mask update, and the last training step (holding the
    last update's target). With `m_by_n` the masks are set once, at step 1, to m/n.

    Args:
        prune_config: The `prune` section (`none` writes nothing).
        steps_per_epoch: Training steps per epoch.
        epochs: Training epochs.
        path: The CSV file, written atomically.
    """
    schedule = make_schedule(prune_config, steps_per_epoch, epochs)
    if schedule is None:
        return
    last_step = steps_per_epoch * epochs
    if prune_config.m_by_n:
        m, n = prune_config.m_by_n
        rows = [(0, 0.0), (1, m / n), (last_step, m / n)]
    else:
        begin_step, end_step = schedule.begin_step, schedule.end_step
        steps = np.arange(begin_step, min(end_step, last_step) + 1, prune_config.frequency)
        steps = steps[steps >= 1]  # Step 0 never runs in training.
        _, targets = schedule(tf.constant(steps, tf.int64))
        targets = np.broadcast_to(targets.numpy(), steps.shape)
        rows = [(0, 0.0)] + [(int(s), float(t)) for s, t in zip(steps, targets, strict=True)]
        if rows[-1][0] < last_step:
            rows.append((last_step, rows[-1][1]))
    with files.atomic_path(path) as temporary, temporary.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["step", "target_sparsity"])
        writer.writerows((step, f"{target:.6f}") for step, target in rows)
