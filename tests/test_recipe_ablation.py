"""bench.recipe_ablation: finished rows come from its results file; deltas vs both references."""

import json

import pytest

from bench import common, recipe_ablation, runs


def _row(name: str, accuracy: float, seed: int = 0) -> dict:
    row = {"row": name, "seed": seed, "test_accuracy": accuracy}
    if name not in recipe_ablation.BASELINES:
        overrides = ["train.epochs=10", f"train.seed={seed}", *recipe_ablation.ROWS[name][1]]
        row["overrides"] = overrides
    return row


def test_finished_rows_are_reused_and_deltas_use_the_same_seed(tmp_path, monkeypatch):
    rows = [
        _row("baseline_strong", 0.80),
        _row("default", 0.79),
        _row("r_g1e-3", 0.83),
        _row("r_g1e-3_b64", 0.84),
        _row("default", 0.70, seed=1),  # another seed: never a reference for seed 0
    ]
    results = {"epochs": 10, "base_config": recipe_ablation.BASE_CONFIG, "rows": rows}
    (tmp_path / "recipe_ablation.json").write_text(json.dumps({"results": results}))

    def no_training(*args, **kwargs):
        raise AssertionError("a finished row was trained again")

    monkeypatch.setattr(runs, "baseline", no_training)
    monkeypatch.setattr(common, "compactcnn_run", no_training)
    wanted = "baseline_strong,default,r_g1e-3,r_g1e-3_b64"
    argv = [
        "--results-dir",
        str(tmp_path),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--rows",
        wanted,
    ]
    assert recipe_ablation.main(argv) == 0

    written = json.loads((tmp_path / "recipe_ablation.json").read_text())["results"]["rows"]
    by_key = {(row["row"], row["seed"]): row for row in written}
    assert len(written) == 5  # the seed-1 row not asked for stays in the file
    assert by_key[("r_g1e-3_b64", 0)]["delta_points"] == pytest.approx(5.0)
    assert by_key[("r_g1e-3_b64", 0)]["vs_baseline_points"] == pytest.approx(4.0)
    assert by_key[("r_g1e-3", 0)]["vs_baseline_points"] == pytest.approx(3.0)
    assert by_key[("default", 1)]["vs_baseline_points"] is None  # no seed-1 baseline


def test_a_row_with_other_overrides_is_not_taken_from_the_file(tmp_path, monkeypatch):
    stale = _row("r_g1e-3", 0.83)
    stale["overrides"] = stale["overrides"][:-1]  # measured before the recalibration fix
    results = {"epochs": 10, "base_config": recipe_ablation.BASE_CONFIG, "rows": [stale]}
    (tmp_path / "recipe_ablation.json").write_text(json.dumps({"results": results}))
    trained = []

    def fake_run(recorder, label, overrides, cache_dir, config):
        trained.append(overrides)
        metrics = {
            "tflite": {"float32": {"accuracy": 0.85}},
            "keras": {"test_accuracy": 0.85},
            "train": {"seconds": 1.0, "images_per_second": 1.0},
        }
        return tmp_path / label, metrics

    monkeypatch.setattr(common, "compactcnn_run", fake_run)
    argv = ["--results-dir", str(tmp_path), "--cache-dir", str(tmp_path / "c"), "--rows", "r_g1e-3"]
    assert recipe_ablation.main(argv) == 0
    assert trained == [_row("r_g1e-3", 0)["overrides"]]
    (written,) = json.loads((tmp_path / "recipe_ablation.json").read_text())["results"]["rows"]
    assert written["test_accuracy"] == 0.85
