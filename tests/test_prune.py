"""Tests of the prune stage on a tiny ResNet-shaped model and random data."""

import csv

import compactcnn  # noqa: F401  (must precede any TensorFlow import)

# isort: split
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from compactcnn import prune
from compactcnn.config import PruneConfig
from compactcnn.errors import UserError
from tests.tiny import build_tiny_model

STEPS_PER_EPOCH = 4
EPOCHS = 3
BATCH_SIZE = 8
# Masks update at steps 2, 4, 6, 8; the target is reached at step 8 (end of epoch 2).
POLYNOMIAL = dict(
    schedule="polynomial", initial_sparsity=0.0, final_sparsity=0.6, end_epoch=2.0, frequency=2
)


def tiny_model(channels: int = 8) -> keras.Model:
    return build_tiny_model(width=channels, num_classes=10, size=8)


def random_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    generator = np.random.default_rng(seed)
    images = generator.integers(0, 256, (STEPS_PER_EPOCH * BATCH_SIZE, 8, 8, 3)).astype("float32")
    labels = generator.integers(0, 10, STEPS_PER_EPOCH * BATCH_SIZE).astype("int32")
    return images, labels


def fit(model, log_dir, epochs, initial_epoch=0, extra_callbacks=()):
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        loss="sparse_categorical_crossentropy",
    )
    images, labels = random_data()
    model.fit(
        images,
        labels,
        batch_size=BATCH_SIZE,
        epochs=epochs,
        initial_epoch=initial_epoch,
        shuffle=False,
        verbose=0,
        callbacks=prune.callbacks(log_dir) + list(extra_callbacks),
    )


def wrapped_names(model):
    return {
        layer.layer.name for layer in model.layers if isinstance(layer, prune.PruneLowMagnitude)
    }


def step_value(model):
    return int(next(iter(prune._pruning_layers(model))).pruning_step.numpy())


def zhu_gupta(step, initial, final, begin, updates, frequency, power):
    progress = min(1.0, max(0.0, (step - begin) / (updates * frequency)))
    return final + (initial - final) * (1 - progress) ** power


# Schedules ------------------------------------------------------------------------------------


@pytest.mark.parametrize("step", [0, 9, 10, 11, 14, 15, 20, 25, 29, 30, 31, 35, 40])
def test_polynomial_schedule_is_zhu_gupta_with_updates_every_frequency(step):
    config = PruneConfig(
        schedule="polynomial",
        initial_sparsity=0.1,
        final_sparsity=0.8,
        begin_epoch=1.0,
        end_epoch=3.0,
        frequency=5,
        power=3.0,
    )
    schedule = prune.make_schedule(config, steps_per_epoch=10, epochs=4)
    should_prune, sparsity = schedule(tf.constant(step, tf.int64))
    assert bool(should_prune) == (step in (10, 15, 20, 25, 30))
    expected = zhu_gupta(step, 0.1, 0.8, begin=10, updates=4, frequency=5, power=3.0)
    assert float(sparsity) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("step", [0, 3, 4, 5, 7, 8, 10, 12, 13, 16])
def test_constant_schedule_prunes_only_inside_window_every_frequency(step):
    config = PruneConfig(schedule="constant", final_sparsity=0.7, begin_epoch=0.5, frequency=4)
    # 8 steps/epoch, 2 epochs: begin 4, end 0.75 * 16 = 12.
    schedule = prune.make_schedule(config, steps_per_epoch=8, epochs=2)
    should_prune, sparsity = schedule(tf.constant(step, tf.int64))
    assert bool(should_prune) == (step in (4, 8, 12))
    assert float(sparsity) == pytest.approx(0.7)


def test_end_moves_back_to_last_update_so_target_is_reached():
    config = PruneConfig(schedule="polynomial", final_sparsity=0.5, end_epoch=3.2, frequency=5)
    schedule = prune.make_schedule(config, steps_per_epoch=10, epochs=4)  # End 32 -> 30.
    assert (schedule.begin_step, schedule.end_step) == (0, 30)
    should_prune, sparsity = schedule(tf.constant(30, tf.int64))
    assert bool(should_prune) and float(sparsity) == pytest.approx(0.5)


def test_window_shorter_than_frequency_is_a_user_error():
    config = PruneConfig(schedule="polynomial", frequency=100)
    with pytest.raises(UserError, match="prune.frequency"):
        prune.make_schedule(config, steps_per_epoch=10, epochs=3)


def test_none_schedule_leaves_model_unchanged():
    model = tiny_model()
    assert prune.make_schedule(PruneConfig(), 10, 3) is None
    assert prune.wrap(model, PruneConfig(), 10, 3) is model


def test_schedule_csv_lists_each_mask_update(tmp_path):
    path = tmp_path / "pruning_schedule.csv"
    prune.write_schedule_csv(PruneConfig(**POLYNOMIAL), STEPS_PER_EPOCH, EPOCHS, path)
    with path.open() as file:
        rows = [(int(row["step"]), float(row["target_sparsity"])) for row in csv.DictReader(file)]
    assert [step for step, _ in rows] == [0, 2, 4, 6, 8, 12]
    for step, target in rows[1:5]:
        assert target == pytest.approx(zhu_gupta(step, 0.0, 0.6, 0, 4, 2, 3.0), abs=1e-6)
    assert rows[0][1] == 0.0 and rows[-1][1] == pytest.approx(0.6)
    assert not list(tmp_path.glob("*.tmp*"))


# A real pruning fit, shared by the tests below ------------------------------------------------


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """A wrapped tiny model trained 3 epochs with conv2 excluded, and its history.csv."""
    folder = tmp_path_factory.mktemp("pruned")
    config = PruneConfig(**POLYNOMIAL, exclude=["^conv2$"])
    model = prune.wrap(tiny_model(), config, STEPS_PER_EPOCH, EPOCHS)
    history = folder / "history.csv"
    fit(model, folder / "logs", EPOCHS, extra_callbacks=[keras.callbacks.CSVLogger(history)])
    with history.open() as file:
        return model, list(csv.DictReader(file))


def test_fit_reaches_final_sparsity(pruned):
    model, _ = pruned
    report = prune.sparsity_report(model)
    assert step_value(model) == STEPS_PER_EPOCH * EPOCHS
    assert wrapped_names(model) == {"conv1", "logits"}
    pruned_layers = {name: report["layers"][name] for name in wrapped_names(model)}
    zeros = sum(entry["zeros"] for entry in pruned_layers.values())
    assert zeros / sum(entry["params"] for entry in pruned_layers.values()) == pytest.approx(
        0.6, abs=0.005
    )
    for entry in pruned_layers.values():
        assert entry["sparsity"] == pytest.approx(0.6, abs=0.01)


def test_sparsity_report_agrees_with_numpy_count(pruned):
    model, _ = pruned
    report = prune.sparsity_report(model)
    kernels = {
        name: model.get_layer(f"prune_low_magnitude_{name}").layer.kernel.numpy()
        for name in ("conv1", "logits")
    }
    kernels["conv2"] = model.get_layer("conv2").kernel.numpy()
    for name, kernel in kernels.items():
        assert report["layers"][name]["zeros"] == int(np.sum(kernel == 0))
        assert report["layers"][name]["params"] == kernel.size
    all_zeros = sum(int(np.sum(kernel == 0)) for kernel in kernels.values())
    all_params = sum(kernel.size for kernel in kernels.values())
    assert report["overall_sparsity"] == pytest.approx(all_zeros / all_params)
    stripped = prune.strip(model)
    assert report["total_params"] == stripped.count_params()
    weights = stripped.get_weights()
    assert report["nonzero_params"] == sum(int(np.count_nonzero(w)) for w in weights)
    assert all(type(value) in (int, float) for value in report["layers"]["conv1"].values())


def test_excluded_layer_stays_dense(pruned):
    model, _ = pruned
    assert not isinstance(model.get_layer("conv2"), prune.PruneLowMagnitude)
    assert prune.sparsity_report(model)["layers"]["conv2"]["zeros"] == 0


def test_history_records_sparsity_and_pruning_step(pruned):
    _, rows = pruned
    assert [int(row["pruning_step"]) for row in rows] == [4, 8, 12]
    sparsities = [float(row["sparsity"]) for row in rows]
    # conv2 (576 of the 872 kernel weights) is excluded, so overall is 0.6 * 296 / 872.
    assert sparsities[0] == pytest.approx(zhu_gupta(4, 0.0, 0.6, 0, 4, 2, 3.0) * 296 / 872, 0.01)
    assert sparsities[1] == pytest.approx(sparsities[2]) == pytest.approx(0.6 * 296 / 872, 0.01)


def test_strip_removes_wrappers_and_keeps_zeros(pruned):
    model, _ = pruned
    stripped = prune.strip(model)
    assert not any(isinstance(layer, prune.PruneLowMagnitude) for layer in stripped.layers)
    assert prune.sparsity_report(stripped) == prune.sparsity_report(model)
    assert stripped.get_layer("conv1").kernel.numpy().size * 0.6 == pytest.approx(
        np.sum(stripped.get_layer("conv1").kernel.numpy() == 0), abs=1
    )


# Other modes ----------------------------------------------------------------------------------


def test_m_by_n_leaves_two_zeros_in_every_four_input_channels(tmp_path):
    config = PruneConfig(**POLYNOMIAL, m_by_n=[2, 4])
    model = prune.wrap(tiny_model(), config, STEPS_PER_EPOCH, 1)
    # conv1 sees 3 RGB channels, which cannot hold 2:4 groups, so it stays dense.
    assert wrapped_names(model) == {"conv2", "logits"}
    fit(model, tmp_path / "logs", epochs=1)
    for name in ("conv2", "logits"):
        kernel = model.get_layer(f"prune_low_magnitude_{name}").layer.kernel.numpy()
        # Input channels are axis -2 of both [h, w, in, out] and [in, out] kernels.
        groups = np.moveaxis(kernel, -2, -1).reshape(-1, 4)
        assert np.all(np.sum(groups == 0, axis=1) == 2), name
    assert prune.sparsity_report(model)["layers"]["conv1"]["zeros"] == 0


def test_wrapping_a_trained_model_keeps_its_weights():
    model = tiny_model()
    generator = np.random.default_rng(1)
    # Random values everywhere, BN moving statistics included, stand in for a trained model.
    model.set_weights(
        [generator.uniform(0.5, 1.5, w.shape).astype("float32") for w in model.get_weights()]
    )
    wrapped = prune.wrap(model, PruneConfig(**POLYNOMIAL), STEPS_PER_EPOCH, EPOCHS)
    for layer in model.layers:
        copy = wrapped.get_layer(
            f"prune_low_magnitude_{layer.name}"
            if layer.name in wrapped_names(wrapped)
            else layer.name
        )
        for original, copied in zip(layer.get_weights(), copy.get_weights(), strict=True):
            np.testing.assert_array_equal(original, copied)
    images, _ = random_data()
    np.testing.assert_allclose(
        wrapped.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-6
    )


def test_mixed_bfloat16_fit_prunes(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = prune.wrap(tiny_model(), PruneConfig(**POLYNOMIAL), STEPS_PER_EPOCH, 2)
        fit(model, tmp_path / "logs", epochs=2)
        # The wrapper computes in bfloat16 like the layers around it, on its float32 master
        # kernel (tests/test_mixed_wrappers.py).
        wrapper = model.get_layer("prune_low_magnitude_conv1")
        assert (wrapper.dtype, wrapper.compute_dtype) == ("float32", "bfloat16")
        assert model.get_layer("bn1").compute_dtype == "bfloat16"
        assert model.output.dtype == tf.float32
        assert prune.sparsity_report(model)["overall_sparsity"] == pytest.approx(0.6, abs=0.005)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_resumed_fit_continues_the_pruning_curve(tmp_path):
    config = PruneConfig(**POLYNOMIAL)
    first = prune.wrap(tiny_model(), config, STEPS_PER_EPOCH, EPOCHS)
    fit(first, tmp_path / "logs", epochs=1)
    assert step_value(first) == 4
    first.save_weights(str(tmp_path / "checkpoint"))

    second = prune.wrap(tiny_model(), config, STEPS_PER_EPOCH, EPOCHS)
    second.load_weights(str(tmp_path / "checkpoint"))
    fit(second, tmp_path / "logs", epochs=2, initial_epoch=1)
    assert step_value(second) == 8
    # A restarted curve would stand at step 4's target (0.525) instead of the final 0.6.
    kernel = second.get_layer("prune_low_magnitude_conv2").layer.kernel.numpy()
    assert np.mean(kernel == 0) == pytest.approx(0.6, abs=0.01)


# Configuration mistakes -----------------------------------------------------------------------


def test_exclude_matching_no_layer_is_a_user_error():
    config = PruneConfig(**POLYNOMIAL, exclude=["^conv9$"])
    with pytest.raises(UserError, match="conv9"):
        prune.wrap(tiny_model(), config, STEPS_PER_EPOCH, EPOCHS)
