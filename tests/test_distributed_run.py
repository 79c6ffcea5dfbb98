"""Issue 5 end to end: the real `compactcnn run` under mirrored, multi-worker (with a kill and a
restart) and mixed-precision training, on tiny synthetic data in fresh subprocesses. The mirrored
and multi-worker runs distil from a teacher (issue 11: distillation under every strategy).

One of the slowest test files of the suite: every run starts TensorFlow, and they all start at
once, so their start-ups overlap.
"""

import csv
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
import yaml

from compactcnn import train
from compactcnn.config import TrainConfig
from tests.helpers import free_ports
from tests.tiny import build_tiny_model

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow
TIMEOUT_SECONDS = 300

# Pruned to 70% while training 3 epochs of 6 steps, per-replica batch 16. ResNet-8 rather than
# the sample config's ResNet-20: what is tested is the distribution, and every process builds,
# trains and converts its model on the same 2 cores.
TINY = [
    "--set", "model.name=resnet8_tiny",
    "--set", "data.name=synthetic", "--set", "data.synthetic_size=128",
    "--set", "train.batch_size=16", "--set", "train.epochs=3", "--set", "train.steps_per_epoch=6",
    "--set", "prune.begin_epoch=0", "--set", "prune.end_epoch=2",
    "--set", "quantize.formats=[float32]", "--set", "output.latency_runs=2",
    "--set", "output.tensorboard=false",
]  # fmt: skip
UNPRUNED = ["--set", "prune.schedule=none"]
MIRRORED = ["--set", "distribute.strategy=mirrored", "--set", "distribute.cpu_devices=2"]
BFLOAT16 = ["--set", "train.precision=mixed_bfloat16"]
UNSCALED = ["--set", "train.scale_learning_rate=false"]
MULTI_WORKER = ["--set", "distribute.strategy=multi_worker", "--set", "distribute.save_freq=3"]


def command(run_dir: Path, *settings: str) -> list[str]:
    return [
        sys.executable, "-m", "compactcnn", "run", "configs/sample_scratch.yaml",
        "--out", str(run_dir), "--verbose", "2", *TINY, *settings,
    ]  # fmt: skip


def environment(folder: Path, **extra: str) -> dict[str, str]:
    values = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "CLUSTER_SPEC")}
    # $COMPACTCNN_DATA stays the session's shared cache (conftest.py).
    values.update(TF_CPP_MIN_LOG_LEVEL="3", **extra)
    return values


class Launch:
    """One `compactcnn run` process in the background, its output in files (pipes could fill)."""

    def __init__(self, run_dir: Path, settings: list[str], log_name: str, **environ: str):
        self.run_dir, self.log, self.environ = run_dir, run_dir.parent / log_name, environ
        self.settings = settings
        with open(f"{self.log}.out", "w") as out, open(f"{self.log}.err", "w") as err:
            self.process = subprocess.Popen(
                command(run_dir, *settings),
                cwd=ROOT,
                env=environment(run_dir.parent, **environ),
                stdout=out,
                stderr=err,
            )

    def finish(self) -> tuple[int, str, str]:
        """Waits for the exit; returns the exit code, stdout and stderr."""
        code = self.process.wait(timeout=TIMEOUT_SECONDS)
        return code, Path(f"{self.log}.out").read_text(), Path(f"{self.log}.err").read_text()

    def succeeded(self) -> tuple[Path, str]:
        code, stdout, stderr = self.finish()
        assert code == 0, stderr[-3000:]
        return self.run_dir, stdout


def read_history(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "history.csv").open() as handle:
        return list(csv.DictReader(handle))


def resolved(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "config.yaml").read_text())["resolved"]


def fingerprint(weights: list[np.ndarray]) -> str:
    """The same hash `compactcnn.distribute.weights_fingerprint` prints, computed here."""
    digest = hashlib.sha256()
    for array in weights:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def check_float32_export_matches_keras(metrics: dict) -> None:
    float32 = metrics["tflite"]["float32"]
    assert float32["agreement"] >= 0.99
    assert float32["accuracy"] == pytest.approx(metrics["keras"]["test_accuracy"], abs=0.01)


# --- every run of this file starts at once: they overlap their start-up on the 2 cores ------


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    # An untrained teacher of another architecture is enough: what is tested is that it runs,
    # frozen, beside the student on every replica's batch (its accuracy does not matter).
    teacher = folder / "teacher.keras"
    build_tiny_model(width=8, num_classes=10, size=32).save(teacher)
    distilled = ["--set", f"distill.teacher={teacher}"]
    # The distilled runs also QAT fine-tune (distilled too) and export a QAT int8 file.
    distilled += ["--set", "quantize.qat=true", "--set", "quantize.formats=[float32,int8]"]
    singles = {
        "mirrored": Launch(folder / "mirrored", [*MIRRORED, *distilled], "mirrored"),
        "bf16_mirrored": Launch(
            folder / "bf16_mirrored", [*MIRRORED, *UNPRUNED, *BFLOAT16, *UNSCALED], "bf16_mirrored"
        ),
        "bf16_pruned": Launch(folder / "bf16_pruned", BFLOAT16, "bf16_pruned"),
    }
    first = start_workers(folder / "multi_worker", "first", distilled)
    try:
        second, before = kill_and_restart(first)
    except BaseException:
        stop([*singles.values(), *first])
        raise
    yield {**singles, "workers": second, "before": before, "teacher": teacher}
    stop([*singles.values(), *second])


def stop(launches: list[Launch]) -> None:
    for launch in launches:
        if launch.process.poll() is None:  # a test failed before waiting for it
            launch.process.kill()
            launch.process.wait()


# --- 1 and 5: MirroredStrategy over 2 logical CPUs, pruned -----------------------------------


@pytest.fixture(scope="module")
def mirrored_run(launched):
    return launched["mirrored"].succeeded()


def test_mirrored_run_has_two_replicas_global_batch_and_scaled_rate(mirrored_run, launched):
    run_dir, stdout = mirrored_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["run"]["strategy"] == "MirroredStrategy"
    assert metrics["run"]["replicas"] == 2 and metrics["run"]["workers"] == 1
    assert metrics["run"]["global_batch_size"] == 32
    # Linear scaling: 0.1 (sample_scratch) x 32 / 128.
    assert resolved(run_dir) == {
        "replicas": 2,
        "global_batch_size": 32,
        "learning_rate": pytest.approx(0.025),
        "precision_policy": "float32",
        "precision_reason": "set in the config",
        "image_size": [32, 32],
        "distill_teacher": str(launched["teacher"]),
    }
    assert metrics["run"]["learning_rate"] == pytest.approx(0.025)
    assert "Epoch 3/3" in stdout
    assert [int(row["step"]) for row in read_history(run_dir)] == [6, 12, 18]
    check_float32_export_matches_keras(metrics)


def test_pruning_under_mirrored_reaches_the_target(mirrored_run):
    run_dir = mirrored_run[0]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["pruning"]["overall_sparsity"] == pytest.approx(0.70, abs=0.005)
    assert metrics["tflite"]["float32"]["zeros_fraction"] == pytest.approx(0.70, abs=0.005)


# --- 4: mixed_bfloat16, unpruned (mirrored, no rate scaling) and pruned (one device) ----------


def test_mixed_bfloat16_mirrored_without_rate_scaling(launched):
    run_dir, _ = launched["bf16_mirrored"].succeeded()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert resolved(run_dir)["global_batch_size"] == 32
    assert resolved(run_dir)["learning_rate"] == 0.1  # the configured rate, unscaled
    assert resolved(run_dir)["precision_policy"] == "mixed_bfloat16"
    assert metrics["run"]["precision"] == metrics["train"]["precision"] == "mixed_bfloat16"
    assert metrics["run"]["replicas"] == 2 and "pruning" not in metrics
    check_float32_export_matches_keras(metrics)
    losses = [float(row["loss"]) for row in read_history(run_dir)]
    assert losses[-1] < losses[0]  # bfloat16 training learns


def test_mixed_bfloat16_pruned_export_matches_keras(launched):
    run_dir, _ = launched["bf16_pruned"].succeeded()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["run"]["precision"] == "mixed_bfloat16" and metrics["run"]["replicas"] == 1
    assert metrics["pruning"]["overall_sparsity"] == pytest.approx(0.70, abs=0.005)
    assert metrics["tflite"]["float32"]["zeros_fraction"] == pytest.approx(0.70, abs=0.005)
    check_float32_export_matches_keras(metrics)
    # Independently: the float32 file computes what the saved float32 Keras model computes.
    from ai_edge_litert.interpreter import Interpreter

    from compactcnn.data import synthetic

    model = keras.models.load_model(run_dir / "model.keras")
    assert {weight.dtype.name for weight in model.weights} == {"float32"}
    images = synthetic.load(128).x_test[:32].astype(np.float32)
    runner = Interpreter(
        model_path=str(run_dir / "tflite" / "float32.tflite")
    ).get_signature_runner()
    (input_name,) = runner.get_input_details()
    (output,) = runner(**{input_name: images}).values()
    np.testing.assert_allclose(output, model.predict(images, verbose=0), atol=1e-5)


def test_pruned_mixed_bfloat16_keeps_float32_master_weights():
    from compactcnn import prune
    from compactcnn.config import PruneConfig

    try:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        inputs = keras.Input((8, 8, 3))
        features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3)(inputs))
        outputs = keras.layers.Dense(3, activation="softmax", dtype="float32")(features)
        config = PruneConfig(schedule="constant", final_sparsity=0.5, frequency=1)
        model = prune.wrap(keras.Model(inputs, outputs), config, steps_per_epoch=2, epochs=1)
        model.compile(keras.optimizers.SGD(0.0), "sparse_categorical_crossentropy")
        kernel = next(weight for weight in model.weights if "kernel" in weight.name)
        initial = kernel.numpy()  # float32 values with more bits than bfloat16 holds
        images = np.random.default_rng(0).normal(size=(8, 8, 8, 3)).astype(np.float32)
        model.fit(images, np.zeros(8, np.int32), batch_size=4, verbose=0,
                  callbacks=prune.callbacks(None))  # fmt: skip
    finally:
        keras.mixed_precision.set_global_policy("float32")
    kept = kernel.numpy() != 0
    assert 0.4 < 1 - kept.mean() < 0.6  # pruned to 50%
    # The learning rate is 0: the surviving weights must be exactly what they were.
    np.testing.assert_array_equal(kernel.numpy()[kept], initial[kept])


def test_mixed_float16_gets_a_loss_scale_optimizer():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, activation="softmax")])
    for precision, scaled in (("mixed_float16", True), ("mixed_bfloat16", False)):
        # The policy a run trains under (`auto` resolved), as build_training sets it.
        keras.mixed_precision.set_global_policy(precision)
        try:
            train.compile_model(model, TrainConfig(precision=precision), keras.optimizers.SGD(0.1))
        finally:
            keras.mixed_precision.set_global_policy("float32")
        assert isinstance(model.optimizer, keras.mixed_precision.LossScaleOptimizer) is scaled


# --- 2 and 3: two `compactcnn run` workers, killed and restarted -----------------------------


def start_workers(
    folder: Path, attempt: str, settings: list[str], addresses: list[str] | None = None
) -> list[Launch]:
    """Starts worker 0 (the chief, as the cluster has no `chief` task) and worker 1."""
    folder.mkdir(exist_ok=True)
    addresses = addresses or [f"127.0.0.1:{port}" for port in free_ports(2)]
    launches = []
    for index in range(2):
        tf_config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
        temporary = folder / f"tmp{index}"  # where worker 1 keeps its temporary write directory
        temporary.mkdir(exist_ok=True)
        launches.append(
            Launch(
                folder / "run",
                [*settings, *MULTI_WORKER],
                f"{attempt}{index}",
                TF_CONFIG=json.dumps(tf_config),
                TMPDIR=str(temporary),
            )
        )
    return launches


def wait_for_epoch_backup(run_dir: Path, launches: list[Launch]) -> None:
    """Waits until epoch 1 is logged and backed up (the backup is taken after the row)."""
    history, checkpoint = run_dir / "history.csv", run_dir / "backup" / "chief" / "checkpoint"
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while time.monotonic() < deadline and all(w.process.poll() is None for w in launches):
        if (
            history.exists()
            and len(history.read_text().splitlines()) >= 2
            and checkpoint.exists()
            and checkpoint.stat().st_mtime_ns >= history.stat().st_mtime_ns
        ):
            return
        time.sleep(0.05)
    ended = [launch.finish() for launch in launches if launch.process.poll() is not None]
    pytest.fail(
        f"no backup after epoch 1 before a worker ended: {[(c, e[-2000:]) for c, _, e in ended]}"
    )


def kill_and_restart(first: list[Launch]) -> tuple[list[Launch], dict]:
    """Kills both workers after epoch 1's backup, then starts the same commands again."""
    run_dir = first[0].run_dir
    wait_for_epoch_backup(run_dir, first)
    first[1].process.send_signal(signal.SIGKILL)  # a lost worker...
    first[0].process.send_signal(signal.SIGKILL)  # ...and the job restarted whole, as clusters do
    for launch in first:
        launch.finish()
    before = {
        "config": (run_dir / "config.yaml").read_bytes(),
        "history": read_history(run_dir),
        "worker_tmp": list((run_dir.parent / "tmp1").glob("compactcnn-*")),
    }
    addresses = json.loads(first[0].environ["TF_CONFIG"])["cluster"]["worker"]
    settings = first[0].settings[: -len(MULTI_WORKER)]
    return start_workers(run_dir.parent, "second", settings, addresses), before


@pytest.fixture(scope="module")
def killed_and_resumed(launched):
    run_dir = launched["workers"][0].run_dir
    keys = ("code", "stdout", "stderr")
    results = [dict(zip(keys, launch.finish(), strict=True)) for launch in launched["workers"]]
    return run_dir, run_dir.parent, launched["before"], results


def check_distilled(run_dir: Path, teacher: Path) -> None:
    """The run trained through the teacher on every epoch and exported the student alone."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["distill"]["teacher"] == str(teacher)
    assert all(float(row["distillation_loss"]) > 0 for row in read_history(run_dir))
    exported = keras.models.load_model(run_dir / "model.keras", compile=False)
    assert exported.count_params() == metrics["keras"]["params"]
    assert exported.count_params() != keras.models.load_model(teacher).count_params()


def test_two_workers_finish_with_identical_weights(killed_and_resumed):
    run_dir, _, _, (chief, worker) = killed_and_resumed
    assert chief["code"] == 0, chief["stderr"][-3000:]
    assert worker["code"] == 0, worker["stderr"][-3000:]
    pattern = re.compile(r"trained weights fingerprint: (\w+)")
    (chief_print,) = pattern.findall(chief["stdout"])
    (worker_print,) = pattern.findall(worker["stdout"])
    assert chief_print == worker_print
    exported = keras.models.load_model(run_dir / "model.keras")
    assert fingerprint(exported.get_weights()) == chief_print
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["run"]["workers"] == 2 and metrics["run"]["replicas"] == 2
    assert metrics["run"]["global_batch_size"] == 32  # 16 per replica x 2 workers
    assert metrics["run"]["learning_rate"] == pytest.approx(0.025)
    # Pruned to the target through the Distiller: the step callback found the student's wrappers.
    assert metrics["pruning"]["overall_sparsity"] == pytest.approx(0.70, abs=0.005)
    check_float32_export_matches_keras(metrics)


def test_distillation_under_mirrored_and_multi_worker(mirrored_run, killed_and_resumed, launched):
    check_distilled(mirrored_run[0], launched["teacher"])
    check_distilled(killed_and_resumed[0], launched["teacher"])


def test_qat_int8_under_mirrored_and_multi_worker(mirrored_run, killed_and_resumed):
    """The prune-preserving QAT fine-tune ran on distributed variables, then its BN statistics
    were recalibrated on a local copy that the chief exported (run.compress)."""
    for run_dir in (mirrored_run[0], killed_and_resumed[0]):
        metrics = json.loads((run_dir / "metrics.json").read_text())
        int8 = metrics["tflite"]["int8"]
        assert int8["qat"] is True
        assert int8["zeros_fraction"] == pytest.approx(0.70, abs=0.01)
        # 8-bit weights and activations of the same network: most labels agree.
        assert int8["agreement"] >= 0.8, run_dir.name


def test_only_the_chief_writes_a_run_directory(killed_and_resumed):
    run_dir, folder, before, _ = killed_and_resumed
    assert (run_dir / "tflite" / "float32.tflite").stat().st_size > 0
    assert not (run_dir / "backup").exists()
    assert sorted(path.name for path in folder.iterdir() if path.is_dir()) == [
        "run", "tmp0", "tmp1",
    ]  # fmt: skip
    cache = Path(os.environ["COMPACTCNN_DATA"])
    assert not list(cache.rglob("*.tflite"))  # the cache holds sizes, not models
    # The killed worker left its temporary directory; the restarted one reused and removed it.
    assert before["worker_tmp"] and not list((folder / "tmp1").glob("compactcnn-*"))
    assert not list((folder / "tmp0").glob("compactcnn-*"))


def test_workers_split_each_global_batch(killed_and_resumed, mirrored_run):
    """Two workers train like one process with two replicas on the same global batches.

    Both runs share config and seed: if each worker fed the whole global batch (no sharding) or
    the same half of it, the first epoch's loss would differ far more than this tolerance.
    """
    _, _, before, _ = killed_and_resumed
    worker_first_epoch = before["history"][0]
    mirrored_first_epoch = read_history(mirrored_run[0])[0]
    for key in ("loss", "accuracy"):
        assert float(worker_first_epoch[key]) == pytest.approx(
            float(mirrored_first_epoch[key]), abs=1e-4
        ), key


def test_restarted_workers_resume_from_the_last_backup(killed_and_resumed):
    run_dir, _, before, (chief, _) = killed_and_resumed
    assert before["history"] and not (run_dir / "backup").exists()
    assert "Epoch 1/3" not in chief["stdout"]  # resumed, not restarted
    assert "Epoch 3/3" in chief["stdout"]
    assert (run_dir / "config.yaml").read_bytes() == before["config"]
    history = read_history(run_dir)
    assert history[: len(before["history"])] == before["history"]  # earlier rows kept as written
    assert [int(row["epoch"]) for row in history] == [0, 1, 2]
    assert [int(row["step"]) for row in history] == [6, 12, 18]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train"]["epochs"] == 3 and metrics["train"]["steps"] == 18


# --- BackupAndRestore with save_freq in steps ------------------------------------------------


def test_step_backup_at_an_epoch_end_comes_after_its_history_row(tmp_path, monkeypatch):
    events = []
    original = keras.callbacks.BackupAndRestore._backup

    def recording_backup(self, epoch, batch=0):
        events.append(("backup", epoch, batch))
        original(self, epoch, batch)

    class RowLogger(keras.callbacks.Callback):  # stands where CSVLogger does: before the backup
        def on_epoch_end(self, epoch, logs=None):
            events.append(("row", epoch))

    monkeypatch.setattr(keras.callbacks.BackupAndRestore, "_backup", recording_backup)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(keras.optimizers.SGD(0.1), "categorical_crossentropy")
    features, labels = np.ones((4, 2), np.float32), np.array([0, 1, 0, 1], np.int32)
    dataset = tf.data.Dataset.from_tensor_slices((features, labels)).repeat().batch(2)
    dataset = train.one_hot(dataset, 2)
    train.fit(
        model, dataset, epochs=2, steps_per_epoch=3, run_dir=tmp_path, write_dir=tmp_path,
        callbacks=[RowLogger()], save_freq=2, tensorboard=False, verbose=0,
    )  # fmt: skip
    # Steps 2 and 4 mid-epoch; step 6 is the last of epoch 2, backed up after its row.
    assert events == [("backup", 0, 1), ("row", 0), ("backup", 1, 0), ("row", 1), ("backup", 1, 2)]
    assert len(read_history(tmp_path)) == 2
