"""bench.precision_accuracy: four runs, float32 vs auto, the cost judged against 0.5 points."""

import json

from bench import common, precision_accuracy


def test_the_cost_of_auto_is_float32_minus_auto_per_sparsity(tmp_path, monkeypatch):
    accuracies = {"float32-s0": 0.840, "auto-s0": 0.838, "float32-s70": 0.820, "auto-s70": 0.812}
    trained = []

    def fake_run(recorder, label, overrides, cache_dir):
        trained.append(overrides)
        key = label.removeprefix("precision-").rsplit("-e", 1)[0]
        policy = "mixed_bfloat16" if key.startswith("auto") else "float32"
        metrics = {
            "tflite": {"float32": {"accuracy": accuracies[key]}, "int8": {"accuracy": 0.8}},
            "train": {"precision": policy, "images_per_second": 1.0, "seconds": 1.0},
            "pruning": {"overall_sparsity": 0.7 if key.endswith("s70") else 0.0},
        }
        return tmp_path / label, metrics

    monkeypatch.setattr(common, "compactcnn_run", fake_run)
    argv = ["--results-dir", str(tmp_path), "--cache-dir", str(tmp_path / "c")]
    assert precision_accuracy.main(argv) == 0
    assert ["train.precision=auto" in run for run in trained] == [False, True, False, True]
    assert ["prune.final_sparsity=0.7" in run for run in trained] == [False, False, True, True]
    written = json.loads((tmp_path / "precision_accuracy.json").read_text())
    targets = {name.split(":")[0]: check for name, check in written["targets"].items()}
    assert targets["dense"]["value"] == 0.2 and targets["dense"]["met"] is True
    assert targets["70% pruned"]["value"] == 0.8 and targets["70% pruned"]["met"] is False
    policies = [row["policy"] for row in written["results"]["rows"]]
    assert policies == ["float32", "mixed_bfloat16", "float32", "mixed_bfloat16"]
