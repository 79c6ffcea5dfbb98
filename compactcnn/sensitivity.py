"""`compactcnn sensitivity RUN`: how much accuracy each layer loses when it alone is pruned.

For every kernel layer of the run's `model.keras` (see `compactcnn.kernels`), and each tested
sparsity, the layer's smallest-magnitude weights are zeroed as tfmot's pruning would zero them
(each kernel keeps its `round(n * (1 - sparsity))` largest magnitudes), with no retraining and
every other layer untouched; the model is then measured and the layer restored. Accuracy is
measured on training-set images, never on the test split that the run's reported accuracies
use: the run's validation split when it had one, else its training images (decoded as the run
decoded them, from its config.yaml; the model trained on those, so their accuracy is
optimistic, but the drops rank the layers); at most N of them, class-balanced and seeded.

The result, `sensitivity.csv` (layer, parameters, sparsity, accuracy, drop; a sparsity-0 row per
layer holds the unpruned accuracy), is what `prune.allocation: sensitivity` reads, and
`sensitivity.png` draws it.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tf_keras as keras
from matplotlib.figure import Figure

from compactcnn import evaluate, files, kernels
from compactcnn.allocation import SENSITIVITY_COLUMNS, SENSITIVITY_FILE
from compactcnn.config import load_config
from compactcnn.data import load_data, stratified_split
from compactcnn.errors import UserError
from compactcnn.predict import input_size

DEFAULT_SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)
DEFAULT_IMAGES = 2000
CHART_FILE = "sensitivity.png"
_BATCH_SIZE = 256


@dataclasses.dataclass(frozen=True)
class HeldOut:
    """The images sensitivity is measured on.

    Attributes:
        images: Raw uint8 images, NHWC.
        labels: int32 class indices.
        source: Where they come from, for the user, e.g. `2000 of the run's training images`.
    """

    images: np.ndarray
    labels: np.ndarray
    source: str


def parse_sparsities(text: str) -> tuple[float, ...]:
    """Parses `0.5,0.7,0.9` into sorted sparsities, each in (0, 1).

    Raises:
        UserError: On a value that is not a number in (0, 1).
    """
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(
            f"--sparsities '{text}' must be comma-separated numbers, e.g. 0.5,0.7,0.9"
        ) from None
    if not values or not all(0.0 < value < 1.0 for value in values):
        raise UserError(f"--sparsities '{text}' must be numbers between 0 and 1, e.g. 0.5,0.9")
    return tuple(sorted(set(values)))


def measure_run(
    run_dir: str | Path,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    count: int = DEFAULT_IMAGES,
) -> Path:
    """Measures every kernel layer of a finished run; writes sensitivity.csv and .png there.

    Args:
        run_dir: A finished run directory (config.yaml, model.keras, metrics.json).
        sparsities: The sparsities each layer is tested at, each in (0, 1).
        count: At most this many images (validation split, else training set).

    Returns:
        The path of sensitivity.csv.

    Raises:
        UserError: When the folder is not a finished run, `count` is below 1, or its data
            cannot be loaded.
    """
    run_dir = Path(run_dir)
    if count < 1:
        raise UserError(f"--images must be at least 1, got {count}")
    for name in ("config.yaml", "model.keras", "metrics.json"):
        if not (run_dir / name).is_file():
            raise UserError(
                f"'{run_dir}' is not a finished run (no {name}); pass a run directory that "
                "`compactcnn run` finished"
            )
    model = evaluate.load_model_file(run_dir / "model.keras")
    held_out = held_out_images(run_dir, input_size(model), count)
    print(f"sensitivity of {run_dir}: measured on {held_out.source}")
    rows = layer_rows(model, held_out.images, held_out.labels, sparsities)
    path = run_dir / SENSITIVITY_FILE
    with files.atomic_path(path) as temporary, temporary.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(SENSITIVITY_COLUMNS)
        for row in rows:
            writer.writerow(
                [
                    row["layer"],
                    row["parameters"],
                    f"{row['sparsity']:g}",
                    f"{row['accuracy']:.6f}",
                    f"{row['drop']:.6f}",
                ]
            )
    figure = plot_sensitivity(rows, len(held_out.labels))
    with files.atomic_path(run_dir / CHART_FILE) as temporary:
        figure.savefig(temporary, format="png", dpi=110)
    return path


def held_out_images(run_dir: Path, size: tuple[int, int], count: int) -> HeldOut:
    """`count` images of the run's validation split, or else of its training set; never test.

    The data is loaded from the run's config.yaml at the model's image size, with the run's
    seed, so the images are those the run had. At most `count` of them are taken, class-balanced
    and seeded with the run's seed (`stratified_split`), in the run's data order: the last ones
    of a folder of images would all be of its last class.
    """
    config = load_config(run_dir / "config.yaml")
    sized = dataclasses.replace(config.data, image_size=list(size))
    data = load_data(sized, seed=config.train.seed)
    images, labels, source = data.x_val, data.y_val, "validation split"
    if not len(labels):
        images, labels, source = data.x_train, data.y_train, "training images"
    if count < len(labels):
        chosen, _ = stratified_split(labels, count, np.random.default_rng(config.train.seed))
        images, labels = images[chosen], labels[chosen]
    return HeldOut(images, labels, f"{len(labels)} of the run's {source}")


def accuracy(model: keras.Model, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of a model that takes raw pixels, on uint8 images."""
    probabilities = model.predict(images.astype(np.float32), batch_size=_BATCH_SIZE, verbose=0)
    return float(np.mean(np.argmax(probabilities, axis=-1) == np.asarray(labels)))


def prune_smallest(values: np.ndarray, sparsity: float) -> np.ndarray:
    """A copy of a kernel with its smallest magnitudes zeroed, as tfmot's mask would zero them.

    The `max(1, round(size * (1 - sparsity)))` largest magnitudes are kept (ties: the earlier
    element goes first).
    """
    flat = values.ravel()
    keep = max(1, round(flat.size * (1.0 - sparsity)))
    order = np.argsort(np.abs(flat), kind="stable")
    pruned = flat.copy()
    pruned[order[: flat.size - keep]] = 0
    return pruned.reshape(values.shape)


def layer_rows(
    model: keras.Model, images: np.ndarray, labels: np.ndarray, sparsities: Sequence[float]
) -> list[dict[str, Any]]:
    """Prunes each kernel layer alone at each sparsity and measures the model.

    Returns:
        One row per layer and sparsity (sparsity 0 first: the model as it is), with `layer`,
        `parameters` (its kernel weights), `sparsity`, `accuracy` and `drop` (unpruned accuracy
        minus this one). The model's weights are as they were afterwards.
    """
    baseline = accuracy(model, images, labels)
    rows = []
    for layer in model.layers:
        if not kernels.is_kernel_layer(layer):
            continue
        weights = kernels.kernel_weights(layer)
        originals = keras.backend.batch_get_value(weights)
        parameters = sum(int(value.size) for value in originals)
        rows.append(_row(layer.name, parameters, 0.0, baseline, baseline))
        try:
            for sparsity in sparsities:
                pruned = [prune_smallest(value, sparsity) for value in originals]
                keras.backend.batch_set_value(list(zip(weights, pruned, strict=True)))
                measured = accuracy(model, images, labels)
                rows.append(_row(layer.name, parameters, sparsity, measured, baseline))
        finally:
            keras.backend.batch_set_value(list(zip(weights, originals, strict=True)))
    return rows


def _row(layer: str, parameters: int, sparsity: float, measured: float, baseline: float) -> dict:
    return {
        "layer": layer,
        "parameters": parameters,
        "sparsity": float(sparsity),
        "accuracy": measured,
        "drop": baseline - measured,
    }


def plot_sensitivity(rows: Sequence[dict[str, Any]], images: int) -> Figure:
    """Accuracy vs sparsity, one line per layer (input to output)."""
    from compactcnn.report.plotting import LINE_STYLES, MARKERS, PERCENT_AXIS, legend

    curves: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        curves.setdefault(row["layer"], []).append((row["sparsity"], row["accuracy"]))
    figure = Figure(figsize=(10, 5.5), layout="constrained")
    axes = figure.add_subplot()
    for index, (name, points) in enumerate(curves.items()):
        sparsity_values, accuracies = zip(*sorted(points), strict=True)
        # Robust layers share one line at the top: a dash and marker each keeps them visible.
        axes.plot(
            sparsity_values,
            accuracies,
            color=f"C{index % 10}",
            linestyle=LINE_STYLES[index % len(LINE_STYLES)],
            marker=MARKERS[index % len(MARKERS)],
            markersize=4,
            label=name,
        )
    axes.set_xlabel("sparsity of that layer alone (no retraining)")
    axes.set_ylabel(f"accuracy on {images} training-set images")
    axes.xaxis.set_major_formatter(PERCENT_AXIS)
    axes.yaxis.set_major_formatter(PERCENT_AXIS)
    axes.set_title("Per-layer pruning sensitivity")
    legend(axes, len(curves), ncol=2 if len(curves) > 20 else 1)
    return figure
