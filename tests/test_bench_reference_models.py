"""bench.reference_models: valid settings scaled to the epochs, rows judged against MLPerf Tiny."""

import argparse
import json

from bench import common, reference_models
from compactcnn.config import load_config


def _metrics(int8_accuracy: float) -> dict:
    return {
        "tflite": {
            "float32": {"accuracy": 0.86},
            "int8": {
                "accuracy": int8_accuracy,
                "bytes": 97_488,
                "gzip_bytes": 59_403,
                "zeros_fraction": 0.49,
            },
        },
        "keras": {"test_accuracy": 0.86, "params": 78_666},
        "train": {"seconds": 1.0},
    }


def test_every_row_is_a_valid_config_with_the_schedule_scaled_to_the_epochs():
    args = argparse.Namespace(epochs=40, quick=False, data_path=common.SHARED_DATA)
    for name in reference_models.ROWS:
        config = load_config(reference_models.CONFIG, reference_models.overrides(args, name))
        assert config.data.name == "imagefolder" and config.data.validation_size == 0
        assert config.train.epochs == 40
        if name == "dense":
            assert config.prune.schedule == "none"
        else:  # The config's 20 -> 150 of 200 epochs, as fractions of 40.
            assert (config.prune.begin_epoch, config.prune.end_epoch) == (4, 30)


def test_int8_rows_are_judged_against_the_target(tmp_path, monkeypatch):
    accuracies = {"pruned50": 0.851, "dense": 0.849}
    monkeypatch.setattr(
        common,
        "compactcnn_run",
        lambda recorder, label, overrides, cache_dir, config: (
            tmp_path / label,
            _metrics(accuracies[label.split("-")[0]]),
        ),
    )
    argv = ["--results-dir", str(tmp_path), "--cache-dir", str(tmp_path / "c")]
    assert reference_models.main(argv) == 0
    written = json.loads((tmp_path / "reference_models.json").read_text())
    rows = {row["row"]: row for row in written["results"]["rows"]}
    assert rows["pruned50"]["vs_target_points"] == 0.1
    assert rows["dense"]["vs_target_points"] == -0.1
    assert rows["dense"]["bytes"] == 97_488 and rows["dense"]["gzip_bytes"] == 59_403
    met = {name.split(":")[0]: check["met"] for name, check in written["targets"].items()}
    assert met == {"pruned50": True, "dense": False}
