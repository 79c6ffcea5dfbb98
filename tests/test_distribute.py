"""Tests for compactcnn.distribute: cluster parsing, strategy choice, chief logic, precision.

Strategies with logical CPU devices or collectives must be configured before TensorFlow starts,
and this pytest process may already have started it, so those run in fresh Python subprocesses.
"""

import json
import os
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest
import tensorflow as tf
import tf_keras as keras

from compactcnn import distribute
from compactcnn.config import DistributeConfig
from compactcnn.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]

TWO_TASKS = {
    "cluster": {"chief": ["10.0.0.1:2222"], "worker": ["10.0.0.2:2222"]},
    "task": {"type": "worker", "index": 0},
}


# --- TF_CONFIG and CLUSTER_SPEC --------------------------------------------------------------


def test_no_cluster_variables_means_no_cluster():
    assert distribute.cluster_spec_from_env({}) is None
    assert distribute.cluster_spec_from_env({"TF_CONFIG": "  "}) is None


def test_tf_config_is_parsed_as_is():
    environ = {"TF_CONFIG": json.dumps(TWO_TASKS)}
    assert distribute.cluster_spec_from_env(environ) == TWO_TASKS
    assert distribute.training_task_count(TWO_TASKS) == 2


def test_cluster_spec_is_translated_and_exported_as_tf_config():
    vertex_spec = {
        "cluster": {
            "workerpool0": ["chief-0:2222"],
            "workerpool1": ["worker-0:2222", "worker-1:2222"],
            "workerpool3": ["evaluator-0:2222"],
        },
        "environment": "cloud",
        "task": {"type": "workerpool1", "index": 1, "trial": ""},
        "job": "{}",
    }
    environ = {"CLUSTER_SPEC": json.dumps(vertex_spec)}
    spec = distribute.cluster_spec_from_env(environ)
    assert spec == {
        "cluster": {
            "chief": ["chief-0:2222"],
            "worker": ["worker-0:2222", "worker-1:2222"],
            "evaluator": ["evaluator-0:2222"],
        },
        "task": {"type": "worker", "index": 1},
    }
    assert json.loads(environ["TF_CONFIG"]) == spec
    # The evaluator watches; only the chief and the workers train.
    assert distribute.training_task_count(spec) == 3


def test_tf_config_wins_over_cluster_spec():
    environ = {"TF_CONFIG": json.dumps(TWO_TASKS), "CLUSTER_SPEC": "not even json"}
    assert distribute.cluster_spec_from_env(environ) == TWO_TASKS


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("TF_CONFIG", "{cluster:", "TF_CONFIG is not valid JSON"),
        ("TF_CONFIG", "[1, 2]", "TF_CONFIG must be a JSON object"),
        ("TF_CONFIG", {"task": {"type": "worker", "index": 0}}, "TF_CONFIG has no 'cluster'"),
        ("TF_CONFIG", {"cluster": {"worker": ["a:1"]}}, "TF_CONFIG has no 'task'"),
        (
            "TF_CONFIG",
            {"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 2}},
            "task index 2 is out of range for 'worker'",
        ),
        (
            "TF_CONFIG",
            {"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}},
            "task type 'chief' is not in the cluster",
        ),
        (
            "CLUSTER_SPEC",
            {"cluster": {"workerpool0": ["a:1"]}, "task": {"type": "workerpool0", "index": 1}},
            "CLUSTER_SPEC: task index 1 is out of range",
        ),
        (
            "CLUSTER_SPEC",
            {"cluster": {"workerpool7": ["a:1"]}, "task": {"type": "workerpool7", "index": 0}},
            "unknown worker pool 'workerpool7'",
        ),
    ],
)
def test_bad_cluster_variables_are_one_line_user_errors(variable, value, message):
    text = value if isinstance(value, str) else json.dumps(value)
    with pytest.raises(UserError, match=message) as raised:
        distribute.cluster_spec_from_env({variable: text})
    assert "\n" not in str(raised.value)


# --- strategy choice -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "tasks", "gpus", "cpus", "expected"),
    [
        ("auto", 1, 0, 0, "default"),
        ("auto", 1, 1, 0, "default"),
        ("auto", 1, 2, 0, "mirrored"),
        ("auto", 1, 0, 2, "mirrored"),
        ("auto", 1, 1, 4, "default"),  # One GPU beats splitting the CPU.
        ("auto", 3, 0, 0, "multi_worker"),
        ("auto", 2, 4, 0, "multi_worker"),
        ("one_device", 3, 4, 0, "one_device"),
        ("mirrored", 1, 0, 0, "mirrored"),
        ("multi_worker", 1, 0, 0, "multi_worker"),
    ],
)
def test_choose_strategy_name(requested, tasks, gpus, cpus, expected):
    assert distribute.choose_strategy_name(requested, tasks, gpus, cpus) == expected


def test_unknown_strategy_name_is_a_user_error():
    with pytest.raises(UserError, match="not one of auto"):
        distribute.choose_strategy_name("horovod", 1, 0, 0)


def test_multi_worker_without_a_cluster_is_a_user_error(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.delenv("CLUSTER_SPEC", raising=False)
    with pytest.raises(UserError, match="needs a cluster: set TF_CONFIG"):
        distribute.create_strategy(DistributeConfig(strategy="multi_worker"))


def test_unknown_device_is_a_user_error(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.delenv("CLUSTER_SPEC", raising=False)
    with pytest.raises(UserError, match="'/gpu:7' is not a device on this machine"):
        distribute.create_strategy(DistributeConfig(strategy="one_device", devices=["/gpu:7"]))


def test_default_strategy_is_chief_with_one_replica(tmp_path):
    strategy = tf.distribute.get_strategy()
    assert distribute.is_chief(strategy)
    assert distribute.num_replicas(strategy) == 1
    assert distribute.worker_count(strategy) == 1
    run_dir, cleanup = distribute.worker_run_dir(tmp_path / "run", strategy)
    assert run_dir == tmp_path / "run" and run_dir.is_dir()
    cleanup()
    assert run_dir.is_dir()  # The chief's run directory is kept.


def test_non_chief_worker_writes_to_a_temporary_dir_it_removes(tmp_path):
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec({"chief": ["a:1"], "worker": ["b:1", "c:1"]}),
        task_type="worker",
        task_id=1,
    )
    # A stand-in for a non-chief MultiWorkerMirroredStrategy, which needs a live cluster.
    worker = types.SimpleNamespace(
        cluster_resolver=resolver, extended=types.SimpleNamespace(should_checkpoint=False)
    )
    assert distribute.worker_count(worker) == 3
    run_dir, cleanup = distribute.worker_run_dir(tmp_path / "run", worker)
    assert run_dir != tmp_path / "run" and run_dir.is_dir()
    # The run lock takes the same folder, found from TF_CONFIG before any strategy exists.
    spec = {
        "cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]},
        "task": {"type": "worker", "index": 1},
    }
    assert distribute.worker_folder(tmp_path / "run", spec) == run_dir
    (run_dir / "model.keras").write_text("x")
    cleanup()
    assert not run_dir.exists()
    assert not (tmp_path / "run").exists()


# --- precision and learning rate -------------------------------------------------------------


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16", "float32"])
def test_set_precision_and_wrap_optimizer(precision):
    try:
        assert distribute.set_precision(precision) == precision
        layer = keras.layers.Dense(2)
        assert layer.dtype_policy.name == precision
        optimizer = distribute.wrap_optimizer(keras.optimizers.SGD(0.1), precision)
        is_scaled = isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer)
        assert is_scaled is (precision == "mixed_float16")
        # Wrapping twice must not stack two loss scalers.
        assert distribute.wrap_optimizer(optimizer, precision) is optimizer
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_set_precision_rejects_unknown_policy():
    with pytest.raises(UserError, match="not one of float32"):
        distribute.set_precision("float8")


def test_scaled_learning_rate():
    assert distribute.scaled_learning_rate(0.1, 256) == pytest.approx(0.2)
    assert distribute.scaled_learning_rate(0.1, 32) == pytest.approx(0.025)
    assert distribute.scaled_learning_rate(0.1, 512, reference_batch=256) == pytest.approx(0.2)
    assert distribute.scaled_learning_rate(0.1, 1024, enabled=False) == 0.1
    with pytest.raises(UserError):
        distribute.scaled_learning_rate(0.1, 0)


# --- real strategies, in fresh processes -----------------------------------------------------

TINY_DATA = """
import compactcnn  # noqa: F401
import json, sys
import numpy as np
import tensorflow as tf
import tf_keras as keras
from compactcnn import distribute
from compactcnn.config import DistributeConfig

def build():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))

generator = np.random.default_rng(0)
images = generator.normal(size=(128, 8, 8, 3)).astype("float32")
labels = generator.integers(0, 3, size=128).astype("int32")
"""

MIRRORED_SCRIPT = (
    TINY_DATA
    + """
strategy = distribute.create_strategy(DistributeConfig(strategy="auto", cpu_devices=2))
keras.utils.set_random_seed(0)
initial_weights = build().get_weights()

def fit(strategy):
    with strategy.scope():
        model = build()
        model.set_weights(initial_weights)
        model.compile(keras.optimizers.SGD(0.2), "sparse_categorical_crossentropy")
    # Global batch 16: 8 images per replica under the mirrored strategy.
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)
    return model, model.fit(data, epochs=1, verbose=0).history["loss"][0]

mirrored_model, mirrored_loss = fit(strategy)
_, single_loss = fit(tf.distribute.OneDeviceStrategy("/cpu:0"))
replica_difference = max(
    float(np.abs(replica.numpy() - variable.values[0].numpy()).max())
    for variable in mirrored_model.trainable_variables
    for replica in variable.values
)
try:
    distribute.configure_cpu_devices(3)
    late_error = ""
except Exception as error:
    late_error = str(error)
distribute.configure_cpu_devices(2)  # Same count as TF started with: accepted.
print(json.dumps({
    "strategy": type(strategy).__name__,
    "replicas": distribute.num_replicas(strategy),
    "chief": distribute.is_chief(strategy),
    "replica_difference": replica_difference,
    "mirrored_loss": mirrored_loss,
    "single_loss": single_loss,
    "late_error": late_error,
}))
"""
)

MULTI_WORKER_SCRIPT = (
    TINY_DATA
    + """
strategy = distribute.create_strategy(DistributeConfig(strategy="auto"))
run_dir, cleanup = distribute.worker_run_dir(sys.argv[1], strategy)
with strategy.scope():
    model = build()
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
# Every worker must run the same number of steps: repeat() plus steps_per_epoch.
data = tf.data.Dataset.from_tensor_slices((images, labels)).repeat().batch(16)
model.fit(data, epochs=1, steps_per_epoch=4, verbose=0)
model.save(run_dir / "model.keras")
kernel_sum = float(model.trainable_variables[0].numpy().sum())
cleanup()
print(json.dumps({
    "strategy": type(strategy).__name__,
    "chief": distribute.is_chief(strategy),
    "replicas": distribute.num_replicas(strategy),
    "workers": distribute.worker_count(strategy),
    "wrote_run_dir": str(run_dir) == sys.argv[1],
    "write_dir_left": run_dir.exists(),
    "kernel_sum": kernel_sum,
}))
"""
)


def _clean_environment(**extra: str) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "CLUSTER_SPEC")}
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO_ROOT), environment.get("PYTHONPATH")])
    )
    environment["TF_CPP_MIN_LOG_LEVEL"] = "3"
    environment.update(extra)
    return environment


def _start(script_path: Path, arguments: list[str], environment: dict[str, str]):
    return subprocess.Popen(
        [sys.executable, str(script_path), *arguments],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(process: subprocess.Popen) -> dict:
    stdout, stderr = process.communicate(timeout=180)
    assert process.returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


def test_mirrored_strategy_over_two_logical_cpus(tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED_SCRIPT)
    result = _result(_start(script, [], _clean_environment()))
    assert result["strategy"] == "MirroredStrategy"  # `auto` picked it from cpu_devices=2.
    assert result["replicas"] == 2 and result["chief"]
    assert result["replica_difference"] == 0.0
    # BatchNorm normalizes each replica's 8 images on their own, so the losses differ slightly
    # (measured 1e-3). Halving or doubling the effective learning rate, i.e. averaging the
    # gradients wrongly, moves this loss by 1.5e-2.
    assert result["mirrored_loss"] == pytest.approx(result["single_loss"], abs=3e-3)
    assert "already started with 2 logical CPU device(s)" in result["late_error"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_multi_worker_from_vertex_cluster_spec(tmp_path):
    script = tmp_path / "multi_worker.py"
    script.write_text(MULTI_WORKER_SCRIPT)
    cluster = {
        "workerpool0": [f"127.0.0.1:{_free_port()}"],
        "workerpool1": [f"127.0.0.1:{_free_port()}"],
    }
    processes = []
    for pool in cluster:
        cluster_spec = json.dumps({"cluster": cluster, "task": {"type": pool, "index": 0}})
        environment = _clean_environment(CLUSTER_SPEC=cluster_spec)
        processes.append(_start(script, [str(tmp_path / "run")], environment))
    chief, worker = (_result(process) for process in processes)
    assert chief["strategy"] == worker["strategy"] == "CollectiveAllReduceStrategy"
    assert chief["replicas"] == worker["replicas"] == 2
    assert chief["workers"] == worker["workers"] == 2
    assert chief["chief"] and not worker["chief"]
    assert chief["wrote_run_dir"] and not worker["wrote_run_dir"]
    assert not worker["write_dir_left"]
    assert (tmp_path / "run" / "model.keras").exists()
    assert chief["kernel_sum"] == worker["kernel_sum"]


@pytest.mark.parametrize(
    "cluster",
    [
        {"chief": ["a:1"], "worker": ["b:1", "c:1"]},
        {"worker": ["b:1", "c:1", "d:1"]},
        {"chief": ["a:1"], "worker": ["b:1"], "evaluator": ["e:1"]},
    ],
)
def test_chief_from_tf_config_follows_tensorflows_rule(cluster):
    """`is_chief_task` (read before any strategy exists) agrees with TensorFlow's own rule."""
    from tensorflow.python.distribute import multi_worker_util

    spec = tf.train.ClusterSpec(cluster)
    chiefs = []
    for task_type, addresses in cluster.items():
        for index in range(len(addresses)):
            ours = distribute.is_chief_task(
                {"cluster": cluster, "task": {"type": task_type, "index": index}}
            )
            chiefs += [(task_type, index)] if ours else []
            if task_type == "evaluator":
                # TensorFlow calls an evaluator its own chief; it must not take the run's lock.
                assert not ours
                continue
            assert ours == multi_worker_util.is_chief(spec, task_type, index), (task_type, index)
    assert len(chiefs) == 1
    assert distribute.is_chief_task(None)


@pytest.mark.parametrize(
    ("flags", "gpus", "expected"),
    [
        ({"avx2", "avx512f", "fma"}, [], "float32"),  # no native bfloat16: never picked
        ({"avx2", "avx512f", "avx512_bf16"}, [], "mixed_bfloat16"),
        ({"avx2", "amx_bf16", "amx_tile"}, [], "mixed_bfloat16"),
        ({"avx2"}, [(7, 5)], "mixed_float16"),
        ({"avx2"}, [(8, 0), (8, 6)], "mixed_bfloat16"),
        ({"avx512_bf16"}, [(7, 0), (8, 0)], "mixed_float16"),  # the oldest GPU decides
    ],
)
def test_auto_precision_picks_what_the_hardware_computes_natively(flags, gpus, expected):
    policy, reason = distribute.choose_precision("auto", cpu_flags=flags, gpu_capabilities=gpus)
    assert policy == expected
    assert reason and "\n" not in reason


def test_explicit_precision_passes_through_and_this_machine_resolves_auto():
    assert distribute.choose_precision("float32", cpu_flags={"avx512_bf16"}) == (
        "float32",
        "set in the config",
    )
    policy, _ = distribute.choose_precision("auto")
    flags = Path("/proc/cpuinfo").read_text().split()
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    assert policy == ("mixed_bfloat16" if native else "float32")
