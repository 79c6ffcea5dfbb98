"""Multi-worker scaling: 2 worker processes x 1 thread vs 1 worker x 1 thread (issue 5).

Each measurement starts fresh processes of this module in `--worker` mode, with TensorFlow's
intra- and inter-op thread pools at 1 thread. The 2-worker case joins them through `TF_CONFIG` on
127.0.0.1 ports into compactcnn's `multi_worker` strategy (MultiWorkerMirroredStrategy), with the
same per-replica batch, so the global batch doubles. Each worker traces the step once, then times
`--steps` steps after `--warmup`; worker 0 reports the global images/s. Rounds alternate the two
cases; scaling efficiency = (2-worker global images/s) / (2 x 1-worker images/s), the median of
per-round ratios.

    python -m bench.multiworker_scaling           # 2 rounds x 20 steps: about 5 min on 2 cores
    python -m bench.multiworker_scaling --quick   # sample data, batch 16, 3 steps
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import common

NAME = "multiworker_scaling"
WORKER_TIMEOUT_SECONDS = 1800


def main(argv: list[str] | None = None) -> int:
    """Coordinates the rounds, or (with --worker) is one training process."""
    arguments = common.parser(__doc__.splitlines()[0])
    common.data_arguments(arguments)
    arguments.add_argument("--rounds", type=int, default=2)
    arguments.add_argument("--steps", type=int, default=20, help="timed steps per worker")
    arguments.add_argument("--warmup", type=int, default=5)
    arguments.add_argument("--batch-size", type=int, default=128, help="per replica")
    arguments.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = arguments.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.warmup, args.batch_size = 1, 3, 1, 16
    if args.worker:
        return _worker(args)
    recorder = common.Recorder(NAME, argv, settings=dict(vars(args)))
    shared = ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    shared += ["--batch-size", str(args.batch_size), "--data-path", args.data_path]
    shared += ["--quick"] if args.quick else []

    with tempfile.TemporaryDirectory() as folder:
        counter = iter(range(10**6))

        def launch(workers: int) -> float:
            return _launch(recorder, workers, shared, Path(folder) / f"{next(counter)}")

        rates = common.interleave(
            {"1 worker": lambda: launch(1), "2 workers": lambda: launch(2)}, args.rounds
        )
    efficiency = common.paired_ratio(rates["2 workers"], [2 * rate for rate in rates["1 worker"]])
    results = {
        "images_per_second": {name: common.summary(values) for name, values in rates.items()},
        "scaling_efficiency": efficiency,
        "per_replica_batch": args.batch_size,
    }
    rows = [
        {"workers": name, "median_images_per_second": common.summary(values)["median"]}
        for name, values in rates.items()
    ]
    print(common.table(rows))
    print(f"scaling efficiency: {efficiency}")
    recorder.write(args.results_dir, results, targets={})
    return 0


def free_ports(count: int) -> list[int]:
    """Loopback ports free right now, for the TF_CONFIG of local worker processes."""
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _launch(recorder: common.Recorder, workers: int, shared: list[str], prefix: Path) -> float:
    """Starts `workers` processes, waits for all, returns worker 0's global images/s."""
    # Thread pools of 1: the environment variables cover anything configured before our call.
    base_env = {
        "TF_NUM_INTRAOP_THREADS": "1",
        "TF_NUM_INTEROP_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }
    addresses = [f"127.0.0.1:{port}" for port in free_ports(workers)] if workers > 1 else []
    processes, lines = [], []
    started = time.perf_counter()
    for index in range(workers):
        env = dict(base_env)
        if addresses:
            env["TF_CONFIG"] = json.dumps(
                {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
            )
        result = prefix.with_name(f"{prefix.name}-worker{index}.json")
        command = ["python", "-m", f"bench.{NAME}", "--worker", str(result), *shared]
        lines.append(
            " ".join(f"{key}={shlex.quote(value)}" for key, value in env.items())
            + " "
            + shlex.join(command)
        )
        processes.append(
            subprocess.Popen(
                [sys.executable, *command[1:]], cwd=common.REPO_ROOT, env={**os.environ, **env}
            )
        )
    try:
        codes = [process.wait(timeout=WORKER_TIMEOUT_SECONDS) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    if any(codes):
        raise SystemExit(f"a worker failed (exit codes {codes}); its output is above")
    recorder.command(" & ".join(lines), time.perf_counter() - started, workers=workers)
    report = prefix.with_name(f"{prefix.name}-worker0.json")
    return json.loads(report.read_text())["images_per_second"]


def _worker(args: argparse.Namespace) -> int:
    """One training process: 1-thread pools, compactcnn's strategy, timed steps, result JSON."""
    import tensorflow as tf

    from bench import setups
    from compactcnn import distribute
    from compactcnn.config import DistributeConfig

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    # `auto`: multi_worker when TF_CONFIG names two workers, else TensorFlow's default strategy.
    strategy = distribute.create_strategy(DistributeConfig(strategy="auto"))
    replicas = strategy.num_replicas_in_sync
    data = common.load_images(args.quick, args.data_path)
    # Per-replica batch: the global batch and the learning rate scale with the replicas, as in
    # `compactcnn run` (this benchmark used to train 2 replicas at the 1-replica rate).
    training = setups.compactcnn_training(data, args.batch_size, strategy=strategy)
    common.timed_fit(training.model, training.dataset, 1, 1, 1)  # trace once
    rate = common.timed_fit(
        training.model, training.dataset, training.batch_size, args.warmup, args.steps
    )
    result = {"images_per_second": rate, "replicas": replicas, "global_batch": training.batch_size}
    args.worker.write_text(json.dumps(result))
    print(f"worker: {rate:.1f} images/s with {replicas} replica(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
