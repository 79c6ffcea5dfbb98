"""Where training runs: the tf.distribute strategy, the cluster, the chief, the precision policy.

The cluster comes from `TF_CONFIG` (any TensorFlow cluster) or from Vertex AI's `CLUSTER_SPEC`,
which is translated into a `TF_CONFIG` so TensorFlow's own cluster resolver reads it. Strategy
creation must happen before any TensorFlow op runs: logical CPU devices and the collective ops of
multi-worker training can only be configured at program start-up.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Collection, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from compactcnn.config import POLICIES, STRATEGIES, DistributeConfig
from compactcnn.errors import UserError

# Vertex AI's convention for TensorFlow: pool 0 is the chief, pool 1 the workers, pool 2 the
# parameter servers, pool 3 the evaluator.
VERTEX_POOL_TASK_TYPES = {
    "workerpool0": "chief",
    "workerpool1": "worker",
    "workerpool2": "ps",
    "workerpool3": "evaluator",
}
# Tasks that take part in synchronous data-parallel training (an evaluator only watches).
TRAINING_TASK_TYPES = ("chief", "worker")


def cluster_spec_from_env(environ: MutableMapping[str, str] = os.environ) -> dict[str, Any] | None:
    """Reads the cluster from `TF_CONFIG`, or from Vertex AI's `CLUSTER_SPEC`.

    A `CLUSTER_SPEC` is translated (workerpool0 -> chief, workerpool1 -> worker, workerpool2 ->
    ps, workerpool3 -> evaluator) and written back to `environ["TF_CONFIG"]`, so TensorFlow's
    `TFConfigClusterResolver` sees the same cluster. `TF_CONFIG` wins when both are set.

    Args:
        environ: The environment to read (and, for `CLUSTER_SPEC`, to update).

    Returns:
        A TF_CONFIG-shaped dict `{"cluster": {type: [address, ...]}, "task": {"type", "index"}}`,
        or None when neither variable is set.

    Raises:
        UserError: On malformed JSON, a missing `cluster` or `task`, an unknown task type or an
            out-of-range task index.
    """
    if environ.get("TF_CONFIG", "").strip():
        spec = _parse_json("TF_CONFIG", environ["TF_CONFIG"])
        _check_cluster("TF_CONFIG", spec)
        return spec
    if environ.get("CLUSTER_SPEC", "").strip():
        vertex_spec = _parse_json("CLUSTER_SPEC", environ["CLUSTER_SPEC"])
        _check_cluster("CLUSTER_SPEC", vertex_spec)
        spec = _translate_vertex_spec(vertex_spec)
        environ["TF_CONFIG"] = json.dumps(spec)
        return spec
    return None


def _parse_json(variable: str, text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{variable} is not valid JSON ({error}); fix or unset it") from None
    if not isinstance(value, dict):
        raise UserError(f"{variable} must be a JSON object with 'cluster' and 'task' keys")
    return value


def _check_cluster(variable: str, spec: Mapping[str, Any]) -> None:
    cluster, task = spec.get("cluster"), spec.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise UserError(f"{variable} has no 'cluster' mapping of task types to address lists")
    for task_type, addresses in cluster.items():
        if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
            raise UserError(f"{variable}: cluster['{task_type}'] must be a list of 'host:port'")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise UserError(f"{variable} has no 'task' with 'type' and 'index' naming this process")
    task_type, index = task["type"], task["index"]
    if task_type not in cluster:
        raise UserError(
            f"{variable}: task type '{task_type}' is not in the cluster "
            f"({', '.join(sorted(cluster))})"
        )
    if not isinstance(index, int) or isinstance(index, bool):
        raise UserError(f"{variable}: task index must be an integer, got {index!r}")
    if not 0 <= index < len(cluster[task_type]):
        raise UserError(
            f"{variable}: task index {index} is out of range for '{task_type}', "
            f"which has {len(cluster[task_type])} task(s)"
        )


def _translate_vertex_spec(vertex_spec: Mapping[str, Any]) -> dict[str, Any]:
    def task_type(pool: str) -> str:
        if pool not in VERTEX_POOL_TASK_TYPES:
            raise UserError(
                f"CLUSTER_SPEC: unknown worker pool '{pool}'; expected "
                f"{', '.join(VERTEX_POOL_TASK_TYPES)}"
            )
        return VERTEX_POOL_TASK_TYPES[pool]

    cluster = {
        task_type(pool): list(addresses) for pool, addresses in vertex_spec["cluster"].items()
    }
    task = vertex_spec["task"]
    return {"cluster": cluster, "task": {"type": task_type(task["type"]), "index": task["index"]}}


def training_task_count(cluster_spec: Mapping[str, Any] | None) -> int:
    """Counts the processes that train together (chief and workers) in a TF_CONFIG-shaped dict."""
    if not cluster_spec:
        return 1
    cluster = cluster_spec["cluster"]
    return max(1, sum(len(cluster.get(task_type, [])) for task_type in TRAINING_TASK_TYPES))


def choose_strategy_name(
    requested: str, training_tasks: int, gpu_count: int, logical_cpu_count: int
) -> str:
    """Decides which strategy `auto` means on this machine; explicit choices pass through.

    Args:
        requested: auto, one_device, mirrored or multi_worker.
        training_tasks: Chief plus worker processes in the cluster (1 without a cluster).
        gpu_count: Visible GPUs.
        logical_cpu_count: Logical CPU devices requested by `distribute.cpu_devices`.

    Returns:
        multi_worker, mirrored, one_device or default (TensorFlow's default strategy).
    """
    if requested not in STRATEGIES:
        raise UserError(f"distribute.strategy '{requested}' is not one of {', '.join(STRATEGIES)}")
    if requested != "auto":
        return requested
    if training_tasks > 1:
        return "multi_worker"
    if gpu_count > 1 or (gpu_count == 0 and logical_cpu_count > 1):
        return "mirrored"
    return "default"


def configure_cpu_devices(count: int) -> None:
    """Splits the CPU into `count` logical devices (0 or 1 leaves it alone).

    Raises:
        UserError: When TensorFlow is already initialized with a different number of CPU devices.
    """
    if count <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )
    except RuntimeError:
        # TensorFlow is initialized; that is fine only if it already has the devices we want.
        existing = len(tf.config.list_logical_devices("CPU"))
        if existing != count:
            raise UserError(
                f"distribute.cpu_devices={count}, but TensorFlow already started with {existing} "
                "logical CPU device(s); create the strategy before any TensorFlow op runs, "
                "in a fresh process"
            ) from None


def create_strategy(distribute_config: DistributeConfig) -> tf.distribute.Strategy:
    """Builds the strategy the config asks for (see `choose_strategy_name` for `auto`).

    Call it before any other TensorFlow work: logical CPU devices and multi-worker collectives
    cannot be configured once TensorFlow is initialized.

    Raises:
        UserError: On multi_worker without a cluster, unknown devices, or devices that can no
            longer be configured.
    """
    cluster_spec = cluster_spec_from_env()
    configure_cpu_devices(distribute_config.cpu_devices)
    gpus = [f"/gpu:{i}" for i in range(len(tf.config.list_physical_devices("GPU")))]
    cpus = [f"/cpu:{i}" for i in range(max(1, distribute_config.cpu_devices))]
    name = choose_strategy_name(
        distribute_config.strategy,
        training_task_count(cluster_spec),
        len(gpus),
        distribute_config.cpu_devices,
    )
    if name == "multi_worker":
        if cluster_spec is None:
            raise UserError(
                "distribute.strategy 'multi_worker' needs a cluster: set TF_CONFIG "
                "(or run on Vertex AI, which sets CLUSTER_SPEC)"
            )
        if "ps" in cluster_spec["cluster"]:
            raise UserError(
                "the cluster has parameter servers ('ps' / workerpool2), which compactcnn does not "
                "use; define only a chief and workers"
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "default":
        return tf.distribute.get_strategy()
    devices = distribute_config.devices or (gpus or cpus)
    _check_devices(devices)
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(devices[0])
    return tf.distribute.MirroredStrategy(devices=devices)


def _check_devices(devices: list[str]) -> None:
    def key(device: str) -> tuple[str, int]:
        spec = tf.DeviceSpec.from_string(device)
        return (spec.device_type or "").upper(), spec.device_index or 0

    available = {key(device.name): device.name for device in tf.config.list_logical_devices()}
    for device in devices:
        try:
            known = key(device) in available
        except ValueError:
            known = False
        if not known:
            raise UserError(
                f"distribute.devices: '{device}' is not a device on this machine; available: "
                f"{', '.join(f'/{kind.lower()}:{index}' for kind, index in sorted(available))}"
            )


def _task(strategy: tf.distribute.Strategy) -> tuple[dict[str, list[str]], str | None, int | None]:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return {}, None, None
    return resolver.cluster_spec().as_dict(), resolver.task_type, resolver.task_id


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Says whether this process writes the run directory.

    True on one machine; in a cluster, True for the `chief` task, or for worker 0 when there is
    no chief (TensorFlow's own rule, read from `strategy.extended.should_checkpoint`).
    """
    return bool(strategy.extended.should_checkpoint)


def num_replicas(strategy: tf.distribute.Strategy) -> int:
    """Replicas training in sync across all workers; the global batch is this times the batch."""
    return int(strategy.num_replicas_in_sync)


def worker_count(strategy: tf.distribute.Strategy) -> int:
    """Processes training together (chief plus workers); 1 on one machine."""
    cluster, _, _ = _task(strategy)
    return training_task_count({"cluster": cluster} if cluster else None)


def worker_run_dir(
    run_dir: str | os.PathLike, strategy: tf.distribute.Strategy
) -> tuple[Path, Callable[[], None]]:
    """Picks where this process writes: the chief the real run dir, other workers a temporary one.

    Every worker must save (collective ops inside `save` need all of them), but only the chief's
    files are kept: TensorFlow's multi-worker checkpoint convention. The temporary directory is
    named after the run directory and the task, so a worker restarted after a kill reuses (and
    finally removes) the one its killed predecessor left behind.

    Returns:
        The directory, created if missing, and a callable that removes it on non-chief workers
        (a no-op on the chief).
    """
    if is_chief(strategy):
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        return Path(run_dir), lambda: None
    _, task_type, task_id = _task(strategy)
    temporary = _worker_folder(run_dir, task_type, task_id)
    temporary.mkdir(parents=True, exist_ok=True)
    return temporary, lambda: shutil.rmtree(temporary, ignore_errors=True)


def _worker_folder(run_dir: str | os.PathLike, task_type: str | None, task_id: int | None) -> Path:
    run_key = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"compactcnn-{task_type}{task_id}-{run_key}"


def worker_folder(run_dir: str | os.PathLike, cluster_spec: Mapping[str, Any]) -> Path:
    """The temporary folder a non-chief worker writes (see `worker_run_dir`), from TF_CONFIG."""
    task = cluster_spec["task"]
    return _worker_folder(run_dir, task["type"], int(task["index"]))


def is_chief_task(cluster_spec: Mapping[str, Any] | None) -> bool:
    """`is_chief` read from a TF_CONFIG-shaped dict, before any strategy (or TF op) exists."""
    if not cluster_spec:
        return True
    task = cluster_spec["task"]
    if task["type"] == "chief":
        return True
    has_chief = bool(cluster_spec["cluster"].get("chief"))
    return task["type"] == "worker" and int(task["index"]) == 0 and not has_chief


def weights_fingerprint(weights: Sequence[np.ndarray]) -> str:
    """Hashes weights (in order, with their shapes and dtypes) into 16 hex digits.

    Workers that trained in lock step hold bit-identical weights, so their fingerprints match.
    """
    digest = hashlib.sha256()
    for array in weights:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


# CPU flags (/proc/cpuinfo) of instruction sets that compute bfloat16 natively.
NATIVE_BFLOAT16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
# NVIDIA GPUs compute bfloat16 natively from compute capability 8.0 (Ampere) on.
BFLOAT16_COMPUTE_CAPABILITY = (8, 0)


def choose_precision(
    requested: str,
    cpu_flags: Collection[str] | None = None,
    gpu_capabilities: Sequence[tuple[int, int]] | None = None,
) -> tuple[str, str]:
    """Resolves `train.precision: auto` to the policy this hardware runs natively.

    Args:
        requested: The configured precision; anything but `auto` passes through.
        cpu_flags: The CPU's flags (default: read from /proc/cpuinfo). Tests pass fakes.
        gpu_capabilities: Compute capability of each visible GPU (default: asked of TensorFlow).

    Returns:
        (policy, reason): the Keras policy name and a sentence saying why.
    """
    if requested != "auto":
        return requested, "set in the config"
    if gpu_capabilities is None:
        gpu_capabilities = [
            tuple(tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0)))
            for gpu in tf.config.list_physical_devices("GPU")
        ]
    if gpu_capabilities:
        lowest = min(gpu_capabilities)
        if lowest >= BFLOAT16_COMPUTE_CAPABILITY:
            return "mixed_bfloat16", f"NVIDIA GPU compute capability {lowest} computes bfloat16"
        return "mixed_float16", f"NVIDIA GPU compute capability {lowest} has no bfloat16 units"
    if cpu_flags is None:
        cpu_flags = _cpu_flags()
    native = sorted(set(cpu_flags) & set(NATIVE_BFLOAT16_CPU_FLAGS))
    if native:
        return "mixed_bfloat16", f"this CPU computes bfloat16 natively ({', '.join(native)})"
    return "float32", "this CPU has no native bfloat16 (no avx512_bf16 or amx_bf16 flag)"


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def set_precision(precision: str) -> str:
    """Sets the global Keras mixed-precision policy for every layer built afterwards.

    Args:
        precision: float32, mixed_float16 or mixed_bfloat16.

    Returns:
        The name of the policy now in effect.
    """
    if precision not in POLICIES:
        raise UserError(f"train.precision '{precision}' is not one of {', '.join(POLICIES)}")
    keras.mixed_precision.set_global_policy(precision)
    return keras.mixed_precision.global_policy().name


def wrap_optimizer(
    optimizer: keras.optimizers.Optimizer, precision: str
) -> keras.optimizers.Optimizer:
    """Adds dynamic loss scaling for mixed_float16, whose small gradients underflow in float16.

    bfloat16 has float32's exponent range, so it needs no loss scaling; neither does float32.
    """
    if precision != "mixed_float16" or isinstance(
        optimizer, keras.mixed_precision.LossScaleOptimizer
    ):
        return optimizer
    return keras.mixed_precision.LossScaleOptimizer(optimizer)


def scaled_learning_rate(
    base_lr: float, global_batch: int, reference_batch: int = 128, enabled: bool = True
) -> float:
    """Scales the learning rate linearly with the global batch (Goyal et al. 2017).

    Args:
        base_lr: The rate tuned for `reference_batch` images per step.
        global_batch: Images per step over all replicas.
        reference_batch: The batch size `base_lr` was tuned for.
        enabled: When False, returns `base_lr` unchanged.
    """
    if global_batch < 1 or reference_batch < 1:
        raise UserError(
            f"batch sizes must be positive, got global {global_batch}, reference {reference_batch}"
        )
    if not enabled:
        return base_lr
    return base_lr * global_batch / reference_batch
