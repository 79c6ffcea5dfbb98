"""A stand-in for `compactcnn run` and a driver for `compactcnn tune` that uses it (no TensorFlow).

`FAKE_RUN` plays a run: it holds the run directory's lock like a real run, logs each start (and
the epoch it resumed from) to `calls.log`, "trains" FAKE_EPOCHS epochs of FAKE_EPOCH_SECONDS each
with a backup marker after each, writes history.csv with a validation accuracy, then metrics.json
and a dummy tflite/int8.tflite. Sparsity shrinks the file and costs accuracy, so two objectives
(accuracy up, gzip size down) have a real Pareto front.

`DRIVER` runs the real `compactcnn` command line with the run command replaced by `FAKE_RUN`.
"""

import os
import sys
import textwrap
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

FAKE_RUN = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path

    import compactcnn.ownership as ownership

    args = sys.argv[1:]
    assert args[0] == "run", args
    overrides = dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--set")
    run_dir = Path(args[args.index("--out") + 1])
    run_dir.mkdir(parents=True, exist_ok=True)
    epochs = int(os.environ.get("FAKE_EPOCHS", "2"))
    pause = float(os.environ.get("FAKE_EPOCH_SECONDS", "0"))
    with ownership.lock(run_dir):
        backup = run_dir / "backup.json"
        start = json.loads(backup.read_text())["epoch"] if backup.exists() else 0
        with open(Path(__file__).with_name("calls.log"), "a") as log:
            log.write(f"{run_dir.name} {start}\\n")
        sparsity = float(overrides.get("prune.final_sparsity", 0.5))
        lr = float(overrides.get("train.learning_rate", 0.1))
        accuracy = round(0.95 - 0.5 * sparsity**2 - 0.5 * abs(lr - 0.1), 6)
        for epoch in range(start, epochs):
            time.sleep(pause)
            with open(run_dir / "history.csv", "a") as history:
                if epoch == 0:
                    history.write("epoch,loss,accuracy,val_accuracy\\n")
                val = accuracy * (epoch + 1) / epochs
                history.write(f"{epoch},1.0,{accuracy},{val}\\n")
            backup.write_text(json.dumps({"epoch": epoch + 1}))
        if overrides.get("train.seed") == "13":
            print("ValueError: fake failure", file=sys.stderr)
            sys.exit(3)
        (run_dir / "tflite").mkdir(exist_ok=True)
        (run_dir / "tflite" / "int8.tflite").write_bytes(b"TFL3")
        size = int(400_000 * (1 - sparsity))
        file = {
            "path": "tflite/int8.tflite", "accuracy": accuracy, "bytes": size,
            "gzip_bytes": size // 2, "latency_ms": 1.0, "agreement": 0.99,
            "zeros_fraction": sparsity, "compression_bytes": 400_000 / size,
            "compression_gzip": 200_000 / (size // 2),
        }
        metrics = {
            "run": {"model": "resnet20", "data": "synthetic", "precision": "float32"},
            "keras": {"test_accuracy": accuracy + 0.01, "test_loss": 0.5, "params": 270_000},
            "train": {"seconds": 1.0, "images_per_second": 100.0, "epochs": epochs},
            "pruning": {"overall_sparsity": sparsity, "layers": {"c": {"sparsity": sparsity}}},
            "tflite": {"int8": file},
        }
        backup.unlink()
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
    """
)

DRIVER = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import compactcnn.cli as cli

    FAKE = str(Path(__file__).with_name("fake_run.py"))
    real = cli.run_command_line
    cli.run_command_line = lambda c, o, r, python=sys.executable: [python, FAKE, *real(c, o, r)[3:]]
    sys.exit(cli.main(sys.argv[1:]))
    """
)

BASE = {
    "data": {"name": "synthetic"},
    "prune": {"schedule": "polynomial", "final_sparsity": 0.5, "end_epoch": 2},
    "train": {"epochs": 2, "steps_per_epoch": 1},
    "quantize": {"formats": ["float32", "int8"]},
    "output": {"tensorboard": False, "latency_runs": 2},
}
STUDY = {
    "base": "base.yaml",
    "space": {
        "prune.final_sparsity": {"float": [0.3, 0.9]},
        "train.learning_rate": {"float": [0.01, 0.3], "log": True},
    },
    "objectives": {"tflite.int8.accuracy": "maximize", "tflite.int8.gzip_bytes": "minimize"},
    "trials": 4,
}


def write_study(folder: Path, **changes) -> Path:
    """Writes base.yaml, study.yaml (STUDY updated with `changes`), fake_run.py and drive.py."""
    (folder / "base.yaml").write_text(yaml.safe_dump(BASE))
    study = {**STUDY, **changes}
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    (folder / "fake_run.py").write_text(FAKE_RUN)
    (folder / "drive.py").write_text(DRIVER)
    return path


def fake_builder(folder: Path):
    """A `command_builder` for `run_tuning` that runs FAKE_RUN instead of `compactcnn run`."""
    from compactcnn.sweep import build_command

    def build(base, overrides, run_dir):
        return [
            sys.executable,
            str(folder / "fake_run.py"),
            *build_command(base, overrides, run_dir)[3:],
        ]

    return build


def environment(**variables: str) -> dict[str, str]:
    """This environment with the checkout first on the path (child processes import it)."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **variables}


def calls(folder: Path) -> list[tuple[str, int]]:
    """(run directory name, epoch it started from) of every fake run, in order."""
    log = folder / "calls.log"
    if not log.exists():
        return []
    return [
        (name, int(start))
        for name, start in (line.split() for line in log.read_text().splitlines())
    ]
