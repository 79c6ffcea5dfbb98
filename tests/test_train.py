import csv

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from compactcnn import train
from compactcnn.config import TrainConfig


def rate(schedule, step):
    return float(schedule(step)) if callable(schedule) else float(schedule)


def test_step_schedule_divides_by_ten_at_half_and_three_quarters():
    config = TrainConfig(epochs=4, lr_schedule="step", warmup_epochs=0)
    schedule = train.learning_rate_schedule(config, steps_per_epoch=100, peak=0.2)
    assert rate(schedule, 0) == pytest.approx(0.2)
    assert rate(schedule, 200) == pytest.approx(0.2)
    assert rate(schedule, 201) == pytest.approx(0.02)
    assert rate(schedule, 301) == pytest.approx(0.002)


def test_cosine_warms_up_to_the_peak_then_decays_to_zero():
    config = TrainConfig(epochs=10, lr_schedule="cosine", warmup_epochs=1)
    schedule = train.learning_rate_schedule(config, steps_per_epoch=10, peak=0.4)
    assert rate(schedule, 0) == pytest.approx(0.0)
    assert rate(schedule, 5) == pytest.approx(0.2)
    assert rate(schedule, 10) == pytest.approx(0.4)
    assert rate(schedule, 55) == pytest.approx(0.2, rel=1e-3)
    assert rate(schedule, 100) == pytest.approx(0.0, abs=1e-6)


def test_one_cycle_rises_to_peak_then_anneals():
    config = TrainConfig(epochs=10, lr_schedule="onecycle")
    schedule = train.learning_rate_schedule(config, steps_per_epoch=10, peak=1.0)
    rates = [rate(schedule, step) for step in range(101)]
    assert rates[0] == pytest.approx(1.0 / 25)
    assert max(rates) == pytest.approx(1.0, rel=1e-3)
    assert int(np.argmax(rates)) == 30
    assert rates[-1] == pytest.approx(1e-4, rel=1e-2)
    assert all(a <= b for a, b in zip(rates[:30], rates[1:31], strict=True))
    assert all(a >= b for a, b in zip(rates[30:], rates[31:], strict=False))
    with pytest.raises(ValueError):
        train.OneCycle(1.0, total_steps=0)


def test_constant_schedule_with_and_without_warmup():
    flat = train.learning_rate_schedule(
        TrainConfig(lr_schedule="constant", warmup_epochs=0), 10, peak=0.3
    )
    assert rate(flat, 12345) == pytest.approx(0.3)
    warm = train.learning_rate_schedule(
        TrainConfig(lr_schedule="constant", warmup_epochs=2), 10, peak=0.3
    )
    assert rate(warm, 10) == pytest.approx(0.15)
    assert rate(warm, 500) == pytest.approx(0.3, rel=1e-6)


def test_weight_decay_skips_batch_norm_and_biases():
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(3, name="dense")(inputs)
    outputs = keras.layers.BatchNormalization(name="bn")(hidden)
    model = keras.Model(inputs, outputs)
    optimizer = train.build_optimizer(
        TrainConfig(weight_decay=0.5, momentum=0.0, nesterov=False), 1.0
    )
    before = {weight.name: weight.numpy().copy() for weight in model.trainable_weights}
    zero_gradients = [tf.zeros_like(weight) for weight in model.trainable_weights]
    optimizer.apply_gradients(zip(zero_gradients, model.trainable_weights, strict=True))
    for weight in model.trainable_weights:
        changed = not np.allclose(weight.numpy(), before[weight.name])
        assert changed == ("kernel" in weight.name), weight.name


def test_dedupe_history_keeps_the_last_row_per_epoch(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss\n0,2.0\n1,1.5\n1,1.4\n2,1.2\n")
    rows = train.dedupe_history(path)
    assert [(row["epoch"], row["loss"]) for row in rows] == [
        ("0", "2.0"),
        ("1", "1.4"),
        ("2", "1.2"),
    ]
    with path.open() as handle:
        assert len(list(csv.DictReader(handle))) == 3


def test_fit_logs_history_and_resumes_from_backup(tmp_path):
    keras.utils.set_random_seed(0)
    images = np.random.default_rng(0).random((32, 4)).astype("float32")
    labels = tf.one_hot(np.arange(32) % 2, 2)
    data = tf.data.Dataset.from_tensor_slices((images, labels)).repeat().batch(8)

    def build():
        inputs = keras.Input((4,))
        model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))
        config = TrainConfig(epochs=3, warmup_epochs=0)
        schedule = train.learning_rate_schedule(config, 4, 0.1)
        train.compile_model(model, config, train.build_optimizer(config, schedule))
        return model

    class KillInSecondEpoch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if self.model.optimizer.iterations.numpy() == 6:
                raise KeyboardInterrupt  # as if the process were killed mid-epoch

    options = dict(epochs=3, steps_per_epoch=4, run_dir=tmp_path, write_dir=tmp_path, verbose=0)
    with pytest.raises(KeyboardInterrupt):
        train.fit(build(), data, callbacks=[KillInSecondEpoch()], tensorboard=False, **options)
    assert (tmp_path / "backup").exists()

    seen_epochs = []

    class RecordEpochs(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen_epochs.append(epoch)

    model = build()
    train.fit(model, data, callbacks=[RecordEpochs()], tensorboard=True, **options)
    assert seen_epochs == [1, 2]  # resumed at the interrupted epoch, not from the start
    assert int(model.optimizer.iterations.numpy()) == 12
    rows = train.dedupe_history(tmp_path / "history.csv")
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2]
    assert {"lr", "step", "epoch_seconds", "loss", "accuracy"} <= set(rows[-1])
    assert int(rows[-1]["step"]) == 12
    assert not any((tmp_path / "backup").iterdir())  # deleted once training finished
    assert (tmp_path / "logs").exists()


def test_batchnorm_recalibration_averages_exactly_over_the_batches_and_keeps_weights():
    inputs = keras.Input((2, 2, 3))
    bn = keras.layers.BatchNormalization(momentum=0.99)
    model = keras.Model(inputs, bn(inputs))
    bn.moving_mean.assign([50.0, 50.0, 50.0])  # stale statistics, far off
    bn.moving_variance.assign([9.0, 9.0, 9.0])
    gamma, beta = bn.gamma.numpy().copy(), bn.beta.numpy().copy()
    images = np.random.default_rng(1).integers(0, 256, (40, 2, 2, 3)).astype(np.uint8)
    labels = np.zeros(40, np.int32)
    # (images, labels) batches as a training stream gives them; only the first 3 of 5 count.
    stream = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    assert train.recalibrate_batchnorm(model, stream, count=3) == 1
    batches = [images[8 * k : 8 * (k + 1)].astype(np.float64) for k in range(3)]
    expected_mean = np.mean([batch.mean(axis=(0, 1, 2)) for batch in batches], axis=0)
    np.testing.assert_allclose(bn.moving_mean.numpy(), expected_mean, rtol=1e-4)
    assert np.all(bn.moving_variance.numpy() > 100)  # pixel variance, not the stale 9
    assert bn.momentum == 0.99
    np.testing.assert_array_equal(bn.gamma.numpy(), gamma)
    np.testing.assert_array_equal(bn.beta.numpy(), beta)
    # Bare image batches work too; count 0 does nothing.
    assert train.recalibrate_batchnorm(model, [images[:8]], count=1) == 1
    np.testing.assert_allclose(
        bn.moving_mean.numpy(), images[:8].astype(np.float64).mean(axis=(0, 1, 2)), rtol=1e-4
    )
    assert train.recalibrate_batchnorm(model, stream, count=0) == 0
