"""`compactcnn sensitivity RUN` on a tiny finished run, then a run pruned by its measurements."""

import csv
import json
from pathlib import Path

import compactcnn  # noqa: F401  (must precede any TensorFlow import)

# isort: split
import numpy as np
import pytest
import tf_keras as keras
from PIL import Image

from compactcnn import allocation, sensitivity
from compactcnn.cli import build_parser, main
from compactcnn.config import load_config, save_config
from compactcnn.data import stratified_split
from compactcnn.run import run
from tests.tiny import PALETTE, build_tiny_model

SIZE = 16
TRAIN_PER_CLASS = 12
HELD_OUT = 20
SPARSITIES = (0.5, 0.9)


def _image_folder(root: Path) -> Path:
    """Noisy colour training images; every test image is black, unlike any training image."""
    generator = np.random.default_rng(0)
    for label in range(len(PALETTE)):
        for split, count in (("train", TRAIN_PER_CLASS), ("test", 3)):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            for index in range(count):
                if split == "test":
                    pixels = np.zeros((SIZE, SIZE, 3), np.uint8)
                else:
                    noisy = PALETTE[label] + generator.normal(0, 40, (SIZE, SIZE, 3))
                    pixels = np.clip(noisy, 1, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{index}.png")
    return root


def _train_images(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """The training images decoded here, in the imagefolder order (class, then path, sorted)."""
    paths = sorted((root / "train").glob("*/*.png"))
    classes = sorted({path.parent.name for path in paths})
    images = np.stack([np.asarray(Image.open(path).convert("RGB")) for path in paths])
    return images, np.array([classes.index(path.parent.name) for path in paths])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished dense run made by hand: config.yaml, a trained model.keras, metrics.json."""
    folder = tmp_path_factory.mktemp("sensitivity")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COMPACTCNN_DATA", str(folder / "cache"))
        yield _make_run(folder)


def _make_run(folder: Path) -> tuple[Path, Path]:
    images_root = _image_folder(folder / "images")
    run_dir = folder / "dense"
    run_dir.mkdir()
    model = build_tiny_model(width=16, num_classes=len(PALETTE), size=SIZE)
    model.compile(keras.optimizers.Adam(0.02), "sparse_categorical_crossentropy")
    images, labels = _train_images(images_root)
    keras.utils.set_random_seed(0)
    model.fit(images.astype("float32"), labels, batch_size=16, epochs=6, verbose=0)
    model.save(run_dir / "model.keras")
    config = load_config(None, ["data.name=imagefolder", f"data.path={images_root}"])
    save_config(config, run_dir / "config.yaml")
    (run_dir / "metrics.json").write_text(json.dumps({"keras": {"test_accuracy": 0.0}}))
    return run_dir, images_root


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_sensitivity_command_measures_each_layer_on_training_images(finished_run, monkeypatch):
    run_dir, images_root = finished_run
    seen = []
    measure = sensitivity.accuracy

    def spy(model, images, labels):
        seen.append(images.copy())
        return measure(model, images, labels)

    monkeypatch.setattr(sensitivity, "accuracy", spy)
    argv = ["sensitivity", str(run_dir), "--images", str(HELD_OUT)]
    assert main([*argv, "--sparsities", ",".join(map(str, SPARSITIES))]) == 0

    rows = _rows(run_dir / "sensitivity.csv")
    assert tuple(rows[0]) == allocation.SENSITIVITY_COLUMNS
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    layers = {"conv1": 432, "conv2": 2304, "logits": 64}
    assert [(r["layer"], int(r["parameters"]), float(r["sparsity"])) for r in rows] == [
        (name, size, sparsity) for name, size in layers.items() for sparsity in (0, *SPARSITIES)
    ]
    # HELD_OUT training images (no validation split), decoded here independently, picked
    # class-balanced with the run's seed (0).
    images, labels = _train_images(images_root)
    chosen, _ = stratified_split(labels, HELD_OUT, np.random.default_rng(0))
    images, labels = images[chosen], labels[chosen]
    assert len(set(labels)) == len(PALETTE)
    expected = float(np.mean(np.argmax(model.predict(images, verbose=0), -1) == labels))
    assert expected > 0.5  # A trained model, so pruning has accuracy to lose.
    for row in rows:
        assert float(row["drop"]) == pytest.approx(expected - float(row["accuracy"]), abs=2e-6)
        if float(row["sparsity"]) == 0:
            assert float(row["accuracy"]) == pytest.approx(expected, abs=1e-6)
    # One pruned point recomputed here: conv2 with its 90% smallest magnitudes zeroed.
    kernel = model.get_layer("conv2").kernel.numpy()
    cut = np.sort(np.abs(kernel).ravel())[round(0.9 * kernel.size) - 1]
    model.get_layer("conv2").kernel.assign(np.where(np.abs(kernel) <= cut, 0, kernel))
    pruned = float(np.mean(np.argmax(model.predict(images, verbose=0), -1) == labels))
    row = next(r for r in rows if r["layer"] == "conv2" and float(r["sparsity"]) == 0.9)
    assert float(row["accuracy"]) == pytest.approx(pruned, abs=1e-6)
    # Every measurement saw exactly those training images and never a (black) test image.
    assert len(seen) == 1 + len(layers) * len(SPARSITIES)
    for batch in seen:
        np.testing.assert_array_equal(batch, images)
        assert batch.reshape(len(batch), -1).max(axis=1).min() > 0
    chart = run_dir / "sensitivity.png"
    assert chart.stat().st_size > 10_000


def test_sensitivity_mistakes_are_one_line_errors(tmp_path, capsys):
    for argv, expected in [
        (["sensitivity", str(tmp_path)], "not a finished run (no config.yaml)"),
        (["sensitivity", str(tmp_path), "--sparsities", "0.5,1.2"], "between 0 and 1"),
        (["sensitivity", str(tmp_path), "--sparsities", "half"], "comma-separated numbers"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and expected in err, err
    # The command's defaults are the module's.
    args = build_parser().parse_args(["sensitivity", "run"])
    assert sensitivity.parse_sparsities(args.sparsities) == sensitivity.DEFAULT_SPARSITIES
    assert args.images == sensitivity.DEFAULT_IMAGES


def test_layer_rows_leave_the_weights_as_they_were(finished_run):
    run_dir, images_root = finished_run
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    before = model.get_weights()
    images, labels = _train_images(images_root)
    rows = sensitivity.layer_rows(model, images[:8], labels[:8], (0.99,))
    assert len(rows) == 6
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)


def test_sensitivity_allocation_run_reaches_its_per_layer_targets(finished_run, tmp_path):
    run_dir, images_root = finished_run
    if not (run_dir / "sensitivity.csv").is_file():
        sensitivity.measure_run(run_dir, SPARSITIES, HELD_OUT)
    config = load_config(
        None,
        [
            "data.name=imagefolder", f"data.path={images_root}", "data.augment=false",
            f"model.name={run_dir / 'model.keras'}", "train.epochs=2", "train.batch_size=16",
            "train.warmup_epochs=0", "train.learning_rate=0.01",
            "train.bn_recalibration_batches=1", "prune.schedule=polynomial",
            "prune.final_sparsity=0.6", "prune.end_epoch=1", "prune.frequency=1",
            "prune.allocation=sensitivity", f"prune.from_run={run_dir}",
            "quantize.formats=[float32]", "output.latency_runs=1", "output.tensorboard=false",
        ],
    )  # fmt: skip

    run(config, tmp_path / "sparse", verbose=0)

    metrics = json.loads((tmp_path / "sparse" / "metrics.json").read_text())
    assert metrics["pruning"]["allocation"] == "sensitivity"
    layers = metrics["pruning"]["layers"]
    targets = {name: entry["target"] for name, entry in layers.items()}
    curves = allocation.read_sensitivity(run_dir / "sensitivity.csv")
    params = {name: entry["params"] for name, entry in layers.items()}
    caps = {"conv1": 0.5, "conv2": 0.99, "logits": 0.5}
    assert targets == pytest.approx(allocation.sensitivity_targets(curves, params, caps, 0.6))
    assert allocation.weighted_mean(targets, params) == pytest.approx(0.6, abs=0.005)
    assert max(targets.values()) - min(targets.values()) > 0.05
    for name, entry in layers.items():
        assert abs(entry["sparsity"] - entry["target"]) <= 0.01, name
    recorded = load_config(tmp_path / "sparse" / "config.yaml")
    assert recorded.prune.allocation == "sensitivity"
