"""The real `compactcnn` command on the bundled sample: files, metrics, independent checks, resume.

These are the suite's slow tests (about a minute together).
"""

import csv
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tf_keras as keras
from PIL import Image

from compactcnn import cli
from tests.helpers import independent_tflite_accuracy, sample_test_set

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow
# Measured: the killed-and-resumed synthetic run ends at 1.0 validation and test accuracy
# (0.19 before BN recalibration); chance is 0.1.
VALIDATION_FLOOR = 0.9
QUICKSTART_FLOOR = 0.7


def compactcnn(*args, **kwargs):
    # $COMPACTCNN_DATA is the session's shared cache (conftest.py).
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, "-m", "compactcnn", *args],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        **kwargs,
    )


# Short enough for CI (3 epochs of 5 steps, pruned at steps 0, 5 and 10, a few dozen calibration
# images); with prune-preserving QAT, so the suite's one QAT run is a real one.
QUICKSTART_SETTINGS = [
    "--set", "train.epochs=3", "--set", "train.steps_per_epoch=5",
    "--set", "prune.begin_epoch=0", "--set", "prune.end_epoch=2",
    "--set", "quantize.calibration_samples=32", "--set", "output.latency_runs=3",
    "--set", "train.bn_recalibration_batches=5",
    "--set", "quantize.qat=true", "--set", "quantize.qat_epochs=1",
]  # fmt: skip


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quickstart")
    run_dir = folder / "run"
    started = time.perf_counter()
    result = compactcnn(
        "run", "configs/quickstart.yaml", "--out", str(run_dir), "--verbose", "2",
        *QUICKSTART_SETTINGS,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result, time.perf_counter() - started, folder


def test_quickstart_writes_the_run_directory(quickstart_run):
    run_dir, result, _, _ = quickstart_run
    for name in (
        "config.yaml",
        "history.csv",
        "pruning_schedule.csv",
        "model.keras",
        "classes.json",
        "metrics.json",
        "tflite/float32.tflite",
        "tflite/float16.tflite",
        "tflite/dynamic_int8.tflite",
        "tflite/int8.tflite",
    ):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "logs").rglob("events.out.tfevents.*"))
    assert not any(run_dir.rglob("*.tmp*"))
    assert "Epoch 3/3" in result.stdout
    with (run_dir / "history.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2]


def test_quickstart_metrics_and_pruning_survive_to_tflite(quickstart_run):
    run_dir = quickstart_run[0]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # Fine-tuned from the shipped 30-epoch ResNet-20 (91.5% dense on these 200 test images):
    # measured 0.805 float32 and 0.765 int8 (QAT) after these 15 steps; from scratch, ~0.3.
    assert metrics["keras"]["test_accuracy"] >= QUICKSTART_FLOOR
    assert metrics["tflite"]["int8"]["accuracy"] >= QUICKSTART_FLOOR - 0.05
    assert metrics["keras"]["params"] == 274_042
    assert metrics["train"]["epochs"] == 3 and metrics["train"]["images_per_second"] > 0
    pruning = metrics["pruning"]
    assert pruning["overall_sparsity"] == pytest.approx(0.70, abs=0.005)
    for name, layer in pruning["layers"].items():
        assert layer["sparsity"] == pytest.approx(0.70, abs=0.01), name
    model = keras.models.load_model(run_dir / "model.keras")
    kernels = [layer.kernel.numpy() for layer in model.layers if hasattr(layer, "kernel")]
    zeros = sum(int((kernel == 0).sum()) for kernel in kernels)
    assert zeros / sum(kernel.size for kernel in kernels) == pytest.approx(0.70, abs=0.005)
    float32 = metrics["tflite"]["float32"]
    assert float32["zeros_fraction"] == pytest.approx(pruning["overall_sparsity"], abs=1e-3)
    gzip_bytes = len(gzip.compress((run_dir / "tflite/float32.tflite").read_bytes(), 9))
    assert float32["gzip_bytes"] == gzip_bytes
    assert gzip_bytes <= 0.45 * metrics["baseline"]["dense_float32_gzip_bytes"]
    assert metrics["tflite"]["int8"]["input_dtype"] == "uint8"
    assert metrics["tflite"]["int8"]["bytes"] <= 0.30 * float32["bytes"]
    # The int8 file comes from prune-preserving QAT, which kept the zeros.
    assert metrics["tflite"]["int8"]["qat"] is True
    assert metrics["tflite"]["int8"]["zeros_fraction"] >= 0.695


def test_independent_evaluation_matches_metrics(quickstart_run):
    run_dir = quickstart_run[0]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    images, labels, classes = sample_test_set()
    assert json.loads((run_dir / "classes.json").read_text()) == classes
    for name in ("float32", "int8"):
        accuracy = independent_tflite_accuracy(run_dir / f"tflite/{name}.tflite", images, labels)
        assert accuracy == pytest.approx(metrics["tflite"][name]["accuracy"], abs=0.002), name


def test_evaluate_predict_and_rerun_commands(quickstart_run, capsys):
    # In this process (cli.main), not in new ones: each would start TensorFlow again.
    run_dir, _, _, folder = quickstart_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    capsys.readouterr()
    assert cli.main(["evaluate", str(run_dir / "tflite/int8.tflite"), "--data", "sample"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == metrics["tflite"]["int8"]["accuracy"]

    images, labels, classes = sample_test_set()
    picture = folder / "picture.png"
    Image.fromarray(images[0]).resize((64, 64)).save(picture)
    model = str(run_dir / "model.keras")
    assert cli.main(["predict", model, str(picture), "--json"]) == 0
    (prediction,) = json.loads(capsys.readouterr().out)
    assert len(prediction["top"]) == 5
    assert {entry["class"] for entry in prediction["top"]} <= set(classes)
    probabilities = [entry["probability"] for entry in prediction["top"]]
    assert probabilities == sorted(probabilities, reverse=True)

    before = (run_dir / "metrics.json").stat().st_mtime_ns
    rerun = ["run", str(ROOT / "configs/quickstart.yaml"), "--out", str(run_dir)]
    assert cli.main([*rerun, *QUICKSTART_SETTINGS]) == 0
    assert "already finished" in capsys.readouterr().out
    assert (run_dir / "metrics.json").stat().st_mtime_ns == before


def test_killed_run_resumes_where_it_stopped(tmp_path):
    run_dir = tmp_path / "run"
    args = [
        "run", "configs/sample_scratch.yaml", "--out", str(run_dir), "--verbose", "2",
        "--set", "data.name=synthetic", "--set", "data.synthetic_size=320",
        "--set", "train.batch_size=32", "--set", "train.epochs=4",
        "--set", "train.steps_per_epoch=30",
        "--set", "prune.begin_epoch=0", "--set", "prune.end_epoch=3",
        "--set", "quantize.formats=[float32]", "--set", "output.latency_runs=2",
        "--set", "quantize.weight_clusters=8", "--set", "data.validation_size=64",
    ]  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "compactcnn", *args],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    history = run_dir / "history.csv"
    checkpoint = run_dir / "backup" / "chief" / "checkpoint"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        # Epoch 1 logged, and backed up after its row: the kill then lands in epoch 2.
        if (
            history.exists()
            and len(history.read_text().splitlines()) >= 2
            and checkpoint.exists()
            and checkpoint.stat().st_mtime_ns >= history.stat().st_mtime_ns
        ):
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run_dir / "metrics.json").exists()

    result = compactcnn(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Epoch 1/4" not in result.stdout  # resumed, not restarted
    assert "Epoch 4/4" in result.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train"]["epochs"] == 4
    assert metrics["pruning"]["overall_sparsity"] == pytest.approx(0.70, abs=0.005)
    with history.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2, 3]
    assert [int(row["step"]) for row in rows] == [30, 60, 90, 120]
    # The pruning schedule continued after the restart instead of starting over.
    assert [int(float(row["pruning_step"])) for row in rows] == [30, 60, 90, 120]
    # Validation ran every epoch on the 64 held-out images, and the run learned: the synthetic
    # classes are visible in the pixels. Measured after the BN statistics are recalibrated
    # (without it this run scored 0.19, near chance, 0.1: its moving averages lag the pruning).
    assert all(row["val_accuracy"] for row in rows)
    print("validation:", metrics["keras"]["validation_accuracy"], metrics["keras"]["test_accuracy"])
    assert metrics["keras"]["validation_accuracy"] >= VALIDATION_FLOOR
    assert metrics["keras"]["test_accuracy"] >= VALIDATION_FLOOR
    sparsities = [float(row["sparsity"]) for row in rows]
    assert sparsities == sorted(sparsities) and sparsities[0] > 0.2
    assert not (run_dir / "backup").exists()
    # Clustering after pruning: 7 shared non-zero values per layer, and the zeros survive.
    assert metrics["clustering"]["max_distinct_values"] <= 7
    assert metrics["tflite"]["float32"]["zeros_fraction"] >= 0.695
