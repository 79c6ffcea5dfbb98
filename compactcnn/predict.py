"""Top-k predictions of a trained model (.keras or .tflite) for image files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from compactcnn import evaluate
from compactcnn.data import IMAGE_SHAPE
from compactcnn.data.imagefolder import decode_image
from compactcnn.errors import UserError

# Runs write class names here; a .tflite lives one level down, in tflite/.
CLASSES_FILE = "classes.json"


def class_names_for(model_path: Path) -> list[str] | None:
    """Class names saved by the run that produced `model_path`, or None when there are none."""
    for folder in (model_path.parent, model_path.parent.parent):
        candidate = folder / CLASSES_FILE
        if candidate.is_file():
            return json.loads(candidate.read_text())
    return None


def read_images(paths: list[Path], size: tuple[int, int] = IMAGE_SHAPE[:2]) -> np.ndarray:
    """Reads image files as raw RGB uint8 of `size` (height, width), resizing as needed.

    Raises:
        UserError: When a file is missing or not an image.
    """
    images = []
    for path in paths:
        if not path.is_file():
            raise UserError(f"image file '{path}' not found; check the path")
        images.append(decode_image(path.read_bytes(), str(path), size))
    return np.stack(images)


def input_size(model: Any) -> tuple[int, int]:
    """The (height, width) a Keras model or a LiteRT interpreter takes."""
    if hasattr(model, "get_input_details"):
        shape = model.get_input_details()[0]["shape"]
    else:
        shape = model.input_shape
    return int(shape[1]), int(shape[2])


def predict_files(
    model_path: str | os.PathLike, image_paths: list[Path], top: int = 5
) -> list[dict[str, Any]]:
    """Predicts the top classes of each image.

    Args:
        model_path: A `model.keras` or `.tflite` file from a run.
        image_paths: Image files of any size and format Pillow reads (resized to the model's
            input).
        top: How many classes to list per image.

    Returns:
        One entry per image: `{"image", "top": [{"class", "index", "probability"}, ...]}`.
    """
    model_path = Path(model_path)
    model = evaluate.load_model_file(model_path)
    images = read_images(image_paths, input_size(model))
    if model_path.suffix == ".keras":
        probabilities = model.predict(images.astype(np.float32), verbose=0)
    else:
        probabilities = evaluate.predict_tflite(model_path, images)
    names = class_names_for(model_path)
    results = []
    for path, row in zip(image_paths, probabilities, strict=True):
        best = np.argsort(row)[::-1][:top]
        results.append(
            {
                "image": str(path),
                "top": [
                    {
                        "class": names[index] if names else str(index),
                        "index": int(index),
                        "probability": round(float(row[index]), 4),
                    }
                    for index in best
                ],
            }
        )
    return results


def format_table(results: list[dict[str, Any]]) -> str:
    """Formats `predict_files` results as one readable table per image.

    Args:
        results: What `predict_files` returns.

    Returns:
        For each image, its path, then one row per class: rank, class name and probability in
        percent; images are separated by a blank line.
    """
    blocks = []
    for result in results:
        width = max([len("class"), *(len(entry["class"]) for entry in result["top"])])
        lines = [result["image"], f"  rank  {'class':<{width}}  probability"]
        for rank, entry in enumerate(result["top"], start=1):
            percent = f"{100 * entry['probability']:.2f}%"
            lines.append(f"  {rank:>4}  {entry['class']:<{width}}  {percent:>11}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
