"""`compactcnn predict`: a readable table by default, the JSON list with --json."""

import json

import numpy as np
import pytest
from PIL import Image

from compactcnn.cli import main
from compactcnn.predict import CLASSES_FILE, format_table
from tests.tiny import build_tiny_model

CLASSES = ["red", "green", "blue", "yellow"]


@pytest.fixture
def model_and_images(tmp_path):
    """A tiny saved model with the run's classes.json beside it, and two image files."""
    model = tmp_path / "model.keras"
    build_tiny_model(num_classes=len(CLASSES)).save(model)
    (tmp_path / CLASSES_FILE).write_text(json.dumps(CLASSES))
    images = []
    for index, colour in enumerate([(200, 40, 40), (40, 40, 200)]):
        path = tmp_path / f"picture{index}.png"
        Image.fromarray(np.full((48, 48, 3), colour, np.uint8)).save(path)
        images.append(str(path))
    return str(model), images


def test_predict_prints_a_table_by_default_and_json_with_the_flag(model_and_images, capsys):
    model, images = model_and_images
    assert main(["predict", model, *images, "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [result["image"] for result in results] == images

    assert main(["predict", model, *images]) == 0
    table = capsys.readouterr().out
    for result in results:
        best = result["top"][0]
        block = table[table.index(result["image"]) :].splitlines()
        assert block[1].split() == ["rank", "class", "probability"]
        assert block[2].split() == ["1", best["class"], f"{100 * best['probability']:.2f}%"]
    assert table.count("%") == sum(len(result["top"]) for result in results)


def test_format_table_aligns_long_class_names():
    results = [
        {
            "image": "cat.png",
            "top": [
                {"class": "a_rather_long_name", "index": 3, "probability": 0.9123},
                {"class": "cat", "index": 0, "probability": 0.05},
            ],
        }
    ]
    lines = format_table(results).splitlines()
    assert lines[0] == "cat.png"
    assert lines[2].split() == ["1", "a_rather_long_name", "91.23%"]
    assert lines[3].split() == ["2", "cat", "5.00%"]
    assert len({len(line) for line in lines[1:]}) == 1  # columns line up


def test_predict_resizes_images_to_the_models_own_input(tmp_path):
    from compactcnn.predict import predict_files

    model = tmp_path / "model.keras"
    build_tiny_model(num_classes=len(CLASSES), size=24).save(model)
    picture = tmp_path / "wide.png"
    Image.fromarray(np.full((30, 90, 3), (40, 200, 40), np.uint8)).save(picture)
    (result,) = predict_files(model, [picture])
    assert len(result["top"]) == len(CLASSES)
