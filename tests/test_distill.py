"""Knowledge distillation (compactcnn.distill): the loss against numpy, a frozen teacher, a pruned
student whose wrappers the callbacks find and which alone is exported, resume from a backup, and
one-line errors for bad input through the CLI."""

import csv
import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
import yaml

from compactcnn import distill, prune, run, train
from compactcnn.config import DistillConfig, PruneConfig, TrainConfig, load_config
from compactcnn.data import load_data
from compactcnn.models import create_model
from tests.helpers import one_line_error
from tests.tiny import build_tiny_model, colour_images

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPACTCNN_DATA", str(tmp_path / "cache"))


def _softmax(logits):
    exponentials = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exponentials / exponentials.sum(axis=-1, keepdims=True)


def _dense_model(seed: int, scale: float = 1.0, dropout: float = 0.0) -> keras.Model:
    """Inputs -> Dense logits `z` (-> dropout) -> softmax, so a test can compute the logits."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((5,))
    logits = keras.layers.Dense(3, name="z")(inputs)
    if dropout:
        # Active in training mode only: then the teacher's outputs would differ from these.
        logits = keras.layers.Dropout(dropout)(logits)
    model = keras.Model(inputs, keras.layers.Activation("softmax", name="probabilities")(logits))
    model.set_weights([weight * scale for weight in model.get_weights()])
    return model


def test_the_loss_is_the_hinton_objective_computed_by_hand_from_logits():
    student, teacher = _dense_model(0), _dense_model(1, scale=3.0, dropout=0.5)
    alpha, temperature, smoothing = 0.7, 2.5, 0.1
    distiller = distill.Distiller(student, teacher, alpha, temperature)
    train.compile_model(
        distiller, TrainConfig(label_smoothing=smoothing), keras.optimizers.SGD(0.1)
    )
    images = np.random.default_rng(0).normal(size=(8, 5)).astype(np.float32)
    labels = np.eye(3, dtype=np.float32)[np.arange(8) % 3]

    def logits(model):
        kernel, bias = model.get_layer("z").get_weights()
        return images @ kernel + bias

    z_student, z_teacher = logits(student), logits(teacher)
    smoothed = labels * (1 - smoothing) + smoothing / 3
    cross_entropy = -(smoothed * np.log(_softmax(z_student))).sum(axis=-1)
    soft_teacher, soft_student = (
        _softmax(z_teacher / temperature),
        _softmax(z_student / temperature),
    )
    kl = (soft_teacher * (np.log(soft_teacher) - np.log(soft_student))).sum(axis=-1)
    distillation = temperature**2 * kl
    objective = (1 - alpha) * cross_entropy + alpha * distillation

    # The metrics of a training step are those of its forward pass, before the update.
    logs = distiller.train_on_batch(images, labels, return_dict=True)
    assert logs["loss"] == pytest.approx(objective.mean(), rel=1e-5)
    assert logs["student_loss"] == pytest.approx(cross_entropy.mean(), rel=1e-5)
    assert logs["distillation_loss"] == pytest.approx(distillation.mean(), rel=1e-5)
    assert distillation.mean() > 0.01  # the two models disagree: the term is not trivially 0

    # A probability that underflowed to exactly 0 still gives a finite term.
    certain = tf.constant([[1.0, 0.0, 0.0]])
    value = distill.distillation_loss(certain, tf.constant([[0.2, 0.3, 0.5]]), 4.0)
    assert np.isfinite(value.numpy()).all() and value.numpy()[0] > 0


def test_alpha_zero_trains_exactly_as_the_plain_compiled_model():
    images = np.random.default_rng(1).normal(size=(16, 5)).astype(np.float32)
    labels = np.eye(3, dtype=np.float32)[np.arange(16) % 3]
    trained = []
    for distilled in (False, True):
        student = _dense_model(0)
        model = distill.Distiller(student, _dense_model(1), 0.0, 4.0) if distilled else student
        optimizer = train.build_optimizer(TrainConfig(), 0.5)
        train.compile_model(model, TrainConfig(label_smoothing=0.1), optimizer)
        model.fit(images, labels, batch_size=8, epochs=2, shuffle=False, verbose=0)
        trained.append(student.get_weights())
    for plain, distilled in zip(*trained, strict=True):
        np.testing.assert_allclose(distilled, plain, rtol=1e-5, atol=1e-6)


def test_the_teacher_stays_frozen_and_only_the_student_learns():
    images, labels = colour_images(64, seed=0)
    student, teacher = build_tiny_model(width=4), build_tiny_model(width=8)
    teacher_before = [weight.copy() for weight in teacher.get_weights()]
    student_before = [weight.copy() for weight in student.get_weights()]
    distiller = distill.Distiller(student, teacher, 0.9, 4.0)
    train.compile_model(distiller, TrainConfig(), keras.optimizers.SGD(0.1, momentum=0.9))
    distiller.fit(images.astype(np.float32), np.eye(4)[labels], batch_size=16, epochs=2, verbose=0)

    # Every teacher weight, BN moving statistics included (it runs in inference mode).
    for before, after in zip(teacher_before, teacher.get_weights(), strict=True):
        np.testing.assert_array_equal(after, before)
    assert not teacher.trainable
    changed = [
        not np.array_equal(b, a) for b, a in zip(student_before, student.get_weights(), strict=True)
    ]
    assert all(changed)  # kernels, BN scales and offsets, moving statistics
    assert {id(v) for v in distiller.trainable_variables} == {
        id(v) for v in student.trainable_variables
    }
    # The teacher is not part of the Distiller's state (nor, so, of its backups).
    teacher_ids = {id(v) for v in teacher.weights}
    assert not teacher_ids & {id(v) for v in distiller.weights}
    assert distill.student_of(distiller) is student and distill.student_of(student) is student


def _run_settings(teacher, *extra):
    return [
        "data.name=synthetic",
        "data.synthetic_size=64",
        "data.synthetic_classes=3",
        "data.image_size=[16, 16]",
        "model.name=resnet8_tiny",
        "train.batch_size=16",
        "train.epochs=2",
        "train.bn_recalibration_batches=2",
        "prune.schedule=constant",
        "prune.final_sparsity=0.5",
        "prune.begin_epoch=0",
        "prune.end_epoch=1",
        "prune.frequency=1",
        "quantize.formats=[float32]",
        "output.latency_runs=2",
        "output.tensorboard=false",
        f"distill.teacher={teacher}",
        *extra,
    ]


# A whole run (train, cluster, export, measure): about 20 s of CPU.
@pytest.mark.slow
def test_pruning_run_with_a_teacher_reaches_the_target_and_exports_the_student(tmp_path):
    # The teacher: a "finished run directory" holding a model of another architecture.
    teacher_dir = tmp_path / "teacher_run"
    teacher_dir.mkdir()
    teacher = build_tiny_model(width=16, num_classes=3, size=16)
    teacher.save(teacher_dir / "model.keras")
    (teacher_dir / "metrics.json").write_text("{}")  # what marks a run finished
    overrides = _run_settings(teacher_dir, "quantize.weight_clusters=8", "distill.alpha=0.8")
    config = load_config(None, overrides)
    run_dir = tmp_path / "run"
    metrics = run.run(config, run_dir, verbose=0)

    # UpdatePruningStep found the student's wrappers through the Distiller: the target is met.
    assert metrics["pruning"]["overall_sparsity"] == pytest.approx(0.5, abs=0.01)
    with (run_dir / "history.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["pruning_step"]) for row in rows] == [4, 8]  # the logger found them too
    assert float(rows[-1]["sparsity"]) == pytest.approx(0.5, abs=0.01)
    assert all(float(row["distillation_loss"]) > 0 for row in rows)
    # The clustering fine-tune ran (through a Distiller) and kept its shared values.
    assert metrics["clustering"]["max_distinct_values"] <= 7

    # The student alone is exported: resnet8_tiny, not the teacher.
    expected = create_model("resnet8_tiny", num_classes=3, input_shape=(16, 16, 3)).count_params()
    assert expected != teacher.count_params()
    exported = keras.models.load_model(run_dir / "model.keras", compile=False)
    assert exported.count_params() == expected == metrics["keras"]["params"]

    # Recorded: the settings, the teacher's accuracy (checked here independently) and the file.
    data = load_data(dataclasses.replace(config.data, image_size=[16, 16]), seed=0)
    teacher_accuracy = np.mean(
        np.argmax(teacher.predict(data.x_test.astype(np.float32), verbose=0), -1) == data.y_test
    )
    assert metrics["distill"] == {
        "teacher": str(teacher_dir / "model.keras"),
        "alpha": 0.8,
        "temperature": 4.0,
        "teacher_test_accuracy": pytest.approx(float(teacher_accuracy)),
    }
    recorded = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert recorded["distill"] == {"teacher": str(teacher_dir), "alpha": 0.8, "temperature": 4.0}
    assert recorded["resolved"]["distill_teacher"] == str(teacher_dir / "model.keras")
    assert json.loads((run_dir / "metrics.json").read_text())["distill"]["alpha"] == 0.8


def test_a_distilled_pruned_run_resumes_from_its_backup(tmp_path):
    images, labels = colour_images(64, seed=1)
    data = tf.data.Dataset.from_tensor_slices((images.astype(np.float32), np.eye(4)[labels]))
    data = data.repeat().batch(16)
    teacher_path = tmp_path / "teacher.keras"
    build_tiny_model(width=8).save(teacher_path)
    prune_config = PruneConfig(schedule="constant", final_sparsity=0.5, end_epoch=2, frequency=1)
    config = TrainConfig(epochs=3, warmup_epochs=0)
    distill_config = DistillConfig(teacher=str(teacher_path))

    def build():
        keras.utils.set_random_seed(0)
        student = prune.wrap(build_tiny_model(width=4), prune_config, 4, 3)
        teacher = distill.load_teacher(distill_config, 4, (32, 32))
        model = distill.wrap(student, teacher, distill_config)
        schedule = train.learning_rate_schedule(config, 4, 0.1)
        train.compile_model(model, config, train.build_optimizer(config, schedule))
        return model

    class KillInSecondEpoch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if self.model.optimizer.iterations.numpy() == 6:
                raise KeyboardInterrupt  # as if the process were killed mid-epoch

    options = dict(epochs=3, steps_per_epoch=4, run_dir=tmp_path, write_dir=tmp_path, verbose=0)
    callbacks = prune.callbacks(None)
    with pytest.raises(KeyboardInterrupt):
        train.fit(build(), data, callbacks=[*callbacks, KillInSecondEpoch()], **options)
    backup = tf.train.latest_checkpoint(str(tmp_path / "backup" / "chief"))
    names = [name for name, _ in tf.train.list_variables(backup)]
    assert any("student" in name for name in names)
    assert not any("teacher" in name for name in names)  # the teacher is loaded, not restored

    seen_epochs = []

    class RecordEpochs(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen_epochs.append(epoch)

    model = build()
    train.fit(model, data, callbacks=[*prune.callbacks(None), RecordEpochs()], **options)
    assert seen_epochs == [1, 2]  # resumed at the interrupted epoch, not from the start
    assert int(model.optimizer.iterations.numpy()) == 12
    student = distill.student_of(model)
    steps = {
        int(layer.pruning_step.numpy())
        for layer in student.layers
        if hasattr(layer, "pruning_step")
    }
    assert steps == {12}  # the pruning schedule continued after the restart
    assert prune.sparsity_report(student)["overall_sparsity"] == pytest.approx(0.5, abs=0.01)
    rows = train.dedupe_history(tmp_path / "history.csv")
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2]
    assert [int(row["pruning_step"]) for row in rows] == [4, 8, 12]
    assert all(float(row["distillation_loss"]) > 0 for row in rows)
    saved = keras.models.load_model(teacher_path, compile=False).get_weights()
    for before, after in zip(saved, model.teacher.get_weights(), strict=True):
        np.testing.assert_array_equal(after, before)


# Two logical CPUs must be set before TensorFlow starts: a fresh process.
_MIRRORED_SCRIPT = textwrap.dedent(
    """
    import compactcnn
    import numpy as np, tensorflow as tf, tf_keras as keras
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from compactcnn import distill, train
    from compactcnn.config import TrainConfig

    def model(seed):
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((5,))
        return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))

    images = np.random.default_rng(0).normal(size=(8, 5)).astype("float32")
    labels = np.eye(3, dtype="float32")[np.arange(8) % 3]
    batches = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8).repeat()
    results = []
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    for strategy in (tf.distribute.get_strategy(), mirrored):
        with strategy.scope():
            student = model(0)
            distiller = distill.Distiller(student, model(1), 0.6, 3.0)
            train.compile_model(distiller, TrainConfig(weight_decay=0), keras.optimizers.SGD(0.5))
        history = distiller.fit(batches, steps_per_epoch=3, epochs=1, verbose=0).history
        replicas = strategy.num_replicas_in_sync
        results.append((student.get_weights()[0], history["loss"][0], replicas))
    (one, one_loss, _), (two, two_loss, replicas) = results
    print(replicas, float(np.abs(one - two).max()), one_loss, two_loss)
    """
)


@pytest.mark.slow
def test_mirrored_training_takes_the_same_steps_as_one_device():
    """The loss is averaged over the global batch: two replicas of 4 images = one device of 8."""
    result = subprocess.run(
        [sys.executable, "-c", _MIRRORED_SCRIPT], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    replicas, difference, one_loss, two_loss = result.stdout.split()[-4:]
    assert int(replicas) == 2
    assert float(difference) < 1e-5  # a loss summed, not averaged, over replicas doubles steps
    assert float(two_loss) == pytest.approx(float(one_loss), rel=1e-5)


def _logits_model(path):
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    keras.Model(inputs, keras.layers.Dense(3)(x)).save(path)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing", "does not exist"),
        ("run_without_model", "holds no model.keras"),
        ("classes", "outputs 5 classes, but the data has 3"),
        ("input_shape", "takes (32, 32, 3) images, but this run feeds (16, 16, 3)"),
        ("logits", "does not end in a softmax"),
        ("alpha", "config key 'distill.alpha' must be in [0, 1], got 1.5"),
        ("temperature", "config key 'distill.temperature' must be positive, got 0.0"),
    ],
)
def test_bad_distillation_input_is_one_line_before_training(tmp_path, capsys, case, expected):
    teacher = tmp_path / "teacher.keras"
    extra = []
    if case == "missing":
        teacher = tmp_path / "nowhere" / "teacher.keras"
    elif case == "run_without_model":
        teacher = tmp_path / "unfinished_run"
        teacher.mkdir()
    elif case == "classes":
        build_tiny_model(num_classes=5, size=16).save(teacher)
    elif case == "input_shape":
        build_tiny_model(num_classes=3, size=32).save(teacher)
    elif case == "logits":
        _logits_model(teacher)
    elif case == "alpha":
        extra = ["distill.alpha=1.5"]
    else:
        extra = ["distill.temperature=0"]
    run_dir = tmp_path / "run"
    sets = [part for item in _run_settings(teacher, *extra) for part in ("--set", item)]
    err = one_line_error(
        capsys, ["run", "configs/sample_scratch.yaml", "--out", str(run_dir), *sets], expected
    )
    if case not in ("alpha", "temperature"):
        assert "distill.teacher" in err
    assert not run_dir.exists()  # refused before anything was written
