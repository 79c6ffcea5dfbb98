"""User mistakes through the real CLI entry point: exit code 2 and exactly one line on stderr."""

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from tests.helpers import one_line_error
from tests.tiny import build_tiny_model


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPACTCNN_DATA", str(tmp_path / "cache"))


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def _image_tree(root, extra: dict[str, bytes] | None = None):
    files = {
        f"{split}/{name}/{i}.jpg": _jpeg(i)
        for split in ("train", "test")
        for name in "ab"
        for i in range(2)
    }
    files.update(extra or {})
    for name, blob in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(blob)
    return root


def test_unknown_config_key(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  epoch: 3\n")
    one_line_error(capsys, ["run", str(config), "--out", str(tmp_path / "run")], "train.epoch")
    assert not (tmp_path / "run").exists()


def test_missing_config_file(tmp_path, capsys):
    one_line_error(capsys, ["run", str(tmp_path / "nope.yaml")], "not found")


def test_truncated_archive(tmp_path, capsys):
    archive = tmp_path / "images.tar.gz"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for i in range(20):
            blob = _jpeg(i)
            info = tarfile.TarInfo(f"train/a/{i}.jpg")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    archive.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    model = tmp_path / "m.keras"
    build_tiny_model().save(model)  # a good model: the error must come from the archive
    argv = ["evaluate", str(model), "--data", "imagefolder"]
    err = one_line_error(capsys, [*argv, "--set", f"data.path={archive}"], "archive")
    assert str(archive) in err and "not a readable tar archive" in err
    run_argv = ["run", "configs/sample_scratch.yaml", "--out", str(tmp_path / "run"), "--set"]
    err = one_line_error(
        capsys, [*run_argv, "data.name=imagefolder", "--set", f"data.path={archive}"], "archive"
    )
    assert str(archive) in err


def test_folder_without_train(tmp_path, capsys):
    (tmp_path / "images" / "test" / "a").mkdir(parents=True)
    run_argv = ["run", "configs/sample_scratch.yaml", "--out", str(tmp_path / "run")]
    sets = ["--set", "data.name=imagefolder", "--set", f"data.path={tmp_path / 'images'}"]
    one_line_error(capsys, [*run_argv, *sets], "train")
    assert not (tmp_path / "run").exists()


def test_non_image_file_among_images(tmp_path, capsys):
    root = _image_tree(tmp_path / "images", {"train/a/notes.txt": b"not an image"})
    run_argv = ["run", "configs/sample_scratch.yaml", "--out", str(tmp_path / "run")]
    sets = ["--set", "data.name=imagefolder", "--set", f"data.path={root}"]
    one_line_error(capsys, [*run_argv, *sets], "notes.txt")
    assert not (tmp_path / "run").exists()


def test_corrupt_tflite_to_evaluate_and_predict(tmp_path, capsys):
    model = tmp_path / "broken.tflite"
    model.write_bytes(b"TFL3 this is not a flatbuffer")
    one_line_error(capsys, ["evaluate", str(model), "--data", "sample"], "corrupt")
    image = tmp_path / "x.jpg"
    image.write_bytes(_jpeg(0))
    one_line_error(capsys, ["predict", str(model), str(image)], "corrupt")


def test_pruning_mistake_leaves_no_run_directory(tmp_path, capsys):
    run_argv = ["run", "configs/sample_scratch.yaml", "--out", str(tmp_path / "run")]
    one_line_error(capsys, [*run_argv, "--set", "prune.exclude=[no_such_layer]"], "matches no")
    assert not (tmp_path / "run").exists()


def test_from_run_model_of_another_task_is_one_line(tmp_path, capsys):
    model = tmp_path / "four_classes.keras"
    build_tiny_model(num_classes=4).save(model)
    run_argv = ["run", "configs/sample_scratch.yaml", "--out", str(tmp_path / "run")]
    err = one_line_error(capsys, [*run_argv, "--set", f"prune.from_run={model}"], "from_run")
    assert "4 classes" in err and "10 classes" in err
    assert not (tmp_path / "run").exists()


def test_from_run_model_of_another_architecture_is_one_line(tmp_path, capsys):
    model = tmp_path / "tiny.keras"
    build_tiny_model(num_classes=10).save(model)
    run_argv = ["run", "configs/sample_scratch.yaml", "--out", str(tmp_path / "run")]
    err = one_line_error(capsys, [*run_argv, "--set", f"prune.from_run={model}"], "architecture")
    assert "resnet20" in err
    assert not (tmp_path / "run").exists()
