"""The shipped pretrained models: what they claim, checked on images they never saw."""

import json

import numpy as np
import pytest
import tf_keras as keras
import yaml

from compactcnn import pretrained
from compactcnn.errors import UserError
from tests.helpers import sample_test_set

# The sample's test images are CIFAR-10 *test* images (the first 20 of each class), which the
# shipped model never trained on. Measured: 0.915 (183/200) for the 30-epoch model, whose
# 10,000-image test accuracy is 0.8708; a model that learnt nothing scores about 0.1.
SAMPLE_FLOOR = 0.85


def test_every_shipped_name_has_a_finished_run_and_every_folder_a_name():
    folders = {path.name for path in pretrained.FOLDER.iterdir() if path.is_dir()}
    folders.discard("__pycache__")
    assert folders == set(pretrained.SHIPPED)
    for name in pretrained.SHIPPED:
        run = pretrained.shipped_run(name)
        for file in (*pretrained.PUBLISHED_FILES, "README.md"):
            assert (run / file).is_file(), f"{name}/{file}"
        assert pretrained.resolve(f"pretrained:{name}", "prune.from_run") == run / "model.keras"


def test_resnet20_cifar10_is_what_its_metrics_say():
    run = pretrained.shipped_run("resnet20_cifar10")
    metrics = json.loads((run / "metrics.json").read_text())
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["name"] == "resnet20"
    assert config["train"]["epochs"] == 30
    # Measured 0.8708 (issue 10 asks 0.90 at E = 30: not reached yet, see bench/README.md).
    assert metrics["keras"]["test_accuracy"] >= 0.87
    # The README states the command and the accuracy of this very run.
    readme = (run / "README.md").read_text()
    assert "compactcnn run compactcnn/pretrained/resnet20_cifar10/config.yaml" in readme
    assert f"{100 * metrics['keras']['test_accuracy']:.2f}%" in readme

    model = keras.models.load_model(run / "model.keras", compile=False)
    assert model.count_params() == metrics["keras"]["params"]
    images, labels, classes = sample_test_set()
    assert json.loads((run / "classes.json").read_text()) == classes
    predictions = np.argmax(model.predict(images.astype(np.float32), verbose=0), axis=1)
    assert np.mean(predictions == labels) >= SAMPLE_FLOOR


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("pretrained:resnet99", "unknown pretrained model 'resnet99'; choose one of pretrained:"),
        ("{tmp}/nowhere.keras", "does not exist; pass a finished run directory"),
        ("{tmp}/unfinished", "is not a finished run"),
        ("{tmp}/weights.h5", "is not a .keras file"),
    ],
)
def test_bad_references_are_one_line_errors_naming_the_key(tmp_path, reference, expected):
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "model.keras").write_bytes(b"")  # no metrics.json: unfinished
    (tmp_path / "weights.h5").write_bytes(b"")
    with pytest.raises(UserError) as error:
        pretrained.resolve(reference.format(tmp=tmp_path), "distill.teacher")
    message = str(error.value)
    assert expected in message and "\n" not in message
    if not reference.startswith("pretrained:"):
        assert message.startswith("distill.teacher '")


def test_publishing_an_unfinished_run_is_refused_before_anything_is_written(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_bytes(b"")  # training ended, export did not: no metrics.json
    with pytest.raises(UserError, match="is not a finished run"):
        pretrained.publish(run, "mine", destination=tmp_path / "shipped")
    assert not (tmp_path / "shipped").exists()


def test_a_finished_run_resolves_to_its_model_and_a_keras_file_to_itself(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_bytes(b"x")
    with pytest.raises(UserError, match="not a finished run"):
        pretrained.resolve(str(run), "prune.from_run")
    (run / "metrics.json").write_text("{}")
    assert pretrained.resolve(str(run), "prune.from_run") == run / "model.keras"
    assert pretrained.resolve(str(run / "model.keras"), "prune.from_run") == run / "model.keras"


def test_resnet20_cifar10_ships_a_sensitivity_of_every_prunable_layer():
    from compactcnn import allocation, kernels

    run = pretrained.shipped_run("resnet20_cifar10")
    measured = allocation.read_sensitivity(run / "sensitivity.csv")
    model = keras.models.load_model(run / "model.keras", compile=False)
    prunable = {
        layer.name for layer in model.layers if isinstance(layer, kernels.KERNEL_LAYER_TYPES)
    }
    assert set(measured) == prunable
    # Zeroing 95% of a layer costs more than zeroing 50% of it, summed over the layers.
    curves = [dict(rows) for rows in measured.values()]
    drops = {sparsity: sum(curve[sparsity] for curve in curves) for sparsity in (0.5, 0.95)}
    assert drops[0.95] > drops[0.5]
