"""Smoke tests of the benchmarks: the --quick versions run and write complete, sane results JSON.

They check the plumbing (machine description, commands with wall times, positive rates, ratios
that are the quotient of the rates measured), never timing targets: the machine is shared.
"""

import argparse
import gzip
import hashlib
import json
import statistics

import pytest

from bench import (
    accuracy_budget,
    common,
    data_pipeline,
    runs,
    tflite_latency,
    train_throughput,
)

# The --quick smoke runs of the benchmarks take minutes: part of CI, not of `-m "not slow"`.
pytestmark = pytest.mark.slow


def _load(results_dir, name, ran=True):
    """The results JSON, checked; `ran=False` for a call that reused every result (its own
    command then takes a few milliseconds, which its 0.1 s rounding may record as 0.0)."""
    payload = json.loads((results_dir / f"{name}.json").read_text())
    assert payload["benchmark"] == name
    machine = payload["machine"]
    assert machine["cpu_model"] and machine["cores"] >= 1
    assert machine["versions"]["tensorflow"]
    assert machine["date"].startswith("20")
    first = payload["commands"][0]
    assert first["command"].startswith(f"python -m bench.{name} --quick")
    assert first["seconds"] > 0 if ran else first["seconds"] >= 0
    return payload


def test_train_throughput_quick_writes_positive_rates_and_paired_ratios(tmp_path):
    train_throughput.main(
        ["--quick", "--results-dir", str(tmp_path), "--variants", "baseline,dense"]
    )
    payload = _load(tmp_path, "train_throughput")
    rates = payload["results"]["images_per_second"]
    assert set(rates) == {"baseline", "dense"}
    for variant in rates.values():
        assert len(variant["rounds"]) == payload["settings"]["rounds"] == 2
        assert all(rate > 0 for rate in variant["rounds"])
    expected = statistics.median(
        dense / plain
        for dense, plain in zip(rates["dense"]["rounds"], rates["baseline"]["rounds"], strict=True)
    )
    ratio = payload["results"]["ratios"]["dense/baseline"]
    assert ratio == pytest.approx(expected, rel=0.01)
    target = payload["targets"]["dense/baseline >= 1.0 (goal 1.3)"]
    assert target["value"] == ratio and target["met"] == (ratio >= 1.0)
    assert payload["targets"]["pruned/dense >= 0.8"]["met"] is None  # not measured


def test_data_pipeline_quick_pipeline_outruns_its_own_training(tmp_path):
    data_pipeline.main(["--quick", "--results-dir", str(tmp_path)])
    payload = _load(tmp_path, "data_pipeline")
    rates = payload["results"]["images_per_second"]
    assert all(rates[name]["median"] > 0 for name in ("pipeline", "baseline_pipeline", "training"))
    # Iterating batches without a model is always faster than training on them.
    assert payload["results"]["ratios"]["pipeline/training"] > 1.0


def test_tflite_latency_quick_files_latencies_and_zeros(tmp_path):
    tflite_latency.main(["--quick", "--results-dir", str(tmp_path), "--runs", "6"])
    payload = _load(tmp_path, "tflite_latency")
    files = payload["results"]["files"]
    assert {(row["model"], row["format"]) for row in files} == {
        ("dense", "float32"),
        ("dense", "int8"),
        ("sparse70", "float32"),
        ("sparse70", "int8"),
    }
    for row in files:
        assert row["latency_ms_1t"] > 0 and row["latency_ms_2t"] > 0
        assert row["eval_seconds"] > 0 and 0.0 <= row["accuracy"] <= 1.0
        expected_zeros = 0.7 if row["model"] == "sparse70" else 0.0
        assert row["zeros_fraction"] == pytest.approx(expected_zeros, abs=0.02)
    by_key = {(row["model"], row["format"]): row for row in files}
    # int8 weights take a quarter of the float32 bytes (plus the graph), zeros gzip away.
    assert by_key["dense", "int8"]["bytes"] < 0.35 * by_key["dense", "float32"]["bytes"]
    assert by_key["sparse70", "int8"]["gzip_bytes"] < by_key["dense", "int8"]["gzip_bytes"]
    assert payload["results"]["eval_images"] == 200


def _recount_int8_zeros(path):
    """Zeros among the conv and fully-connected weights, read with LiteRT alone (int8 weights
    have zero point 0)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_path=str(path),
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    weights = zeros = 0
    for op in interpreter._get_ops_details():
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            values = interpreter.get_tensor(int(op["inputs"][1]))
            weights += values.size
            zeros += int((values == 0).sum())
    return zeros / weights


def test_accuracy_budget_quick_rows_measured_from_their_int8_files(tmp_path):
    # A cache folder of its own: every row really runs (cached runs would hide a broken row).
    # Our whole chain and plain tfmot only: the other rows are the chain with one override
    # changed, and each prune-and-cluster-preserving QAT graph costs minutes to build on 2 cores.
    args = ["--quick", "--results-dir", str(tmp_path), "--cache-dir", str(tmp_path / "cache")]
    args += ["--rows", "best,plain_tfmot"]
    accuracy_budget.main(args)
    payload = _load(tmp_path, "accuracy_budget")
    results = payload["results"]
    rows = {(row["row"], row["sparsity"]): row for row in results["rows"]}
    assert set(rows) == {("dense", 0.0), ("best", 0.7), ("plain_tfmot", 0.7)}
    budget = results["budget"]
    assert budget["compression_epochs"] == sum(budget["chain"].values()) == 3
    for (kind, _), row in rows.items():
        # Same budget in all: the chain's cluster and QAT epochs prune in the rows without it.
        wanted = budget["dense_epochs"] + (0 if kind == "dense" else budget["compression_epochs"])
        assert row["epochs"]["total"] == wanted
        path = common.resolve(row["int8_file"])
        assert hashlib.sha256(path.read_bytes()).hexdigest() == row["int8_sha256"]
        assert row["gzip_bytes"] == _gzip_bytes(path)
        assert row["latency_ms"] > 0 and row["drop_points"] is not None
        assert row["weight_bytes"] == row["weights"]  # int8: a byte per weight
        assert 0 < row["entropy_bytes"] < row["weight_bytes"]
    best, plain = rows["best", 0.7], rows["plain_tfmot", 0.7]
    assert best["epochs"] == {"dense": 1, "prune": 1, "cluster": 1, "qat": 1, "total": 4}
    assert plain["epochs"] == {"dense": 1, "prune": 3, "cluster": 0, "qat": 0, "total": 4}
    # Zeros are counted in the file: a LiteRT count of our own agrees.
    for row in (best, plain):
        assert row["zeros_fraction"] == pytest.approx(_recount_int8_zeros(row["int8_file"]))
    assert plain["zeros_fraction"] == pytest.approx(0.7, abs=0.02)
    assert best["int8_qat"] and best["max_distinct_per_scale"] <= results["clusters"]
    commands = [command["command"] for command in payload["commands"]]
    assert any(" sensitivity " in command for command in commands)
    assert any("--prune-sparsity 0.7" in command for command in commands)
    # Each row keeps the commands that made it, so they outlive this call's `commands` list.
    made = {kind: [command["command"] for command in row["commands"]] for kind, row in rows.items()}
    assert len(made["dense", 0.0]) == 1 and "train.epochs=1" in made["dense", 0.0][0]
    assert any("prune.final_sparsity=0.7" in command for command in made["best", 0.7])
    assert not any("bench.baseline" in command for command in made["best", 0.7])
    assert any("--prune-sparsity 0.7" in command for command in made["plain_tfmot", 0.7])
    # By default plain tfmot fine-tunes at our rate, and our files carry short tensor names.
    assert any("--prune-learning-rate 0.1" in command for command in made["plain_tfmot", 0.7])
    assert "quantize.short_tensor_names=true" in best["settings"]
    assert all(target["value"] is not None for target in payload["targets"].values())
    assert len(payload["targets"]) == 3

    # A second call takes every row from the results JSON, running nothing.
    accuracy_budget.main(args)
    again = _load(tmp_path, "accuracy_budget", ran=False)
    assert len(again["commands"]) == 1
    assert again["results"]["rows"] == results["rows"]

    # A dense row from another dense run (retrained elsewhere) is replaced by the one the
    # re-measured rows started from; the best row's run is still in the cache.
    stale = json.loads((tmp_path / "accuracy_budget.json").read_text())
    stale_rows = stale["results"]["rows"]
    stale_rows[0]["int8_sha256"] = "another dense run"
    stale["results"]["rows"] = [row for row in stale_rows if row["row"] != "best"]
    (tmp_path / "accuracy_budget.json").write_text(json.dumps(stale))
    accuracy_budget.main(args)
    third = {row["row"]: row for row in _load(tmp_path, "accuracy_budget")["results"]["rows"]}
    dense = third["dense"]
    assert dense == rows["dense", 0.0] | {key: dense[key] for key in ("latency_ms", "commands")}
    assert dense["commands"][0]["cached"] is True
    assert third["best"]["int8_sha256"] == best["int8_sha256"]


def _gzip_bytes(path):
    return len(gzip.compress(path.read_bytes(), compresslevel=9))


def test_zero_smallest_zeroes_the_smallest_kernel_entries_only(tmp_path):
    from compactcnn.models import create_model

    model = create_model("resnet20", 10)
    sparse = tflite_latency.zero_smallest(model, 0.7)
    for original, layer in zip(model.layers, sparse.layers, strict=True):
        if isinstance(layer, tflite_latency.PRUNABLE):
            before, after = original.kernel.numpy(), layer.kernel.numpy()
            zeroed = after == 0
            assert zeroed.mean() == pytest.approx(0.7, abs=0.01)
            assert abs(before[zeroed]).max() <= abs(before[~zeroed]).min()
            assert (after[~zeroed] == before[~zeroed]).all()


def test_run_key_depends_on_every_setting_and_cached_runs_are_reused(tmp_path):
    key = common.run_key(common.JPEG_CONFIG, ["train.epochs=10"])
    assert key == common.run_key(common.JPEG_CONFIG, ["train.epochs=10"])
    assert key != common.run_key(common.JPEG_CONFIG, ["train.epochs=11"])
    # A finished run (metrics.json present) is read back without running anything.
    recorder = common.Recorder("unit", [], settings={})
    run_dir = tmp_path / f"dense-e10-{key}"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text(json.dumps({"keras": {"test_accuracy": 0.9}}))
    args = type("Args", (), {"quick": False, "epochs": 10, "cache_dir": tmp_path})()
    found_dir, metrics = runs.dense(recorder, args)
    assert common.resolve(found_dir) == run_dir
    assert metrics["keras"]["test_accuracy"] == 0.9
    assert recorder.commands[0]["cached"] is True
    assert "--set train.epochs=10" in recorder.commands[0]["command"]


def test_cache_keys_change_with_the_code_that_makes_the_runs(tmp_path, monkeypatch):
    (tmp_path / "compactcnn" / "models").mkdir(parents=True)
    (tmp_path / "bench").mkdir()
    (tmp_path / "compactcnn" / "models" / "resnet.py").write_text("WIDTH = 16\n")
    (tmp_path / "bench" / "baseline.py").write_text("RATE = 0.1\n")
    (tmp_path / "README.md").write_text("not code\n")
    digest = common.code_digest(tmp_path)
    assert digest == common.code_digest(tmp_path)
    (tmp_path / "README.md").write_text("docs change nothing\n")
    assert common.code_digest(tmp_path) == digest
    (tmp_path / "bench" / "baseline.py").write_text("RATE = 0.01\n")
    assert common.code_digest(tmp_path) != digest
    (tmp_path / "bench" / "baseline.py").write_text("RATE = 0.1\n")
    (tmp_path / "compactcnn" / "models" / "resnet.py").write_text("WIDTH = 32\n")
    assert common.code_digest(tmp_path) != digest
    # Both kinds of cached run, ours and the plain baseline's, are keyed by it.
    key = common.run_key(common.JPEG_CONFIG, ["train.epochs=10"])
    args = argparse.Namespace(quick=False, epochs=10, cache_dir=tmp_path)
    plain = runs._baseline_dir(args, "baseline-strong-e10", 0)
    monkeypatch.setattr(common, "code_digest", lambda: "other-code")
    assert common.run_key(common.JPEG_CONFIG, ["train.epochs=10"]) != key
    assert runs._baseline_dir(args, "baseline-strong-e10", 0) != plain


def test_interleave_alternates_order_and_table_formats():
    calls = []
    measured = common.interleave(
        {"a": lambda: calls.append("a") or 1.0, "b": lambda: calls.append("b") or 2.0}, 3
    )
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert measured == {"a": [1.0, 1.0, 1.0], "b": [2.0, 2.0, 2.0]}
    assert common.paired_ratio(measured["b"], measured["a"]) == 2.0
    text = common.table([{"name": "x", "value": 1234.5}, {"name": "long name", "value": None}])
    lines = text.splitlines()
    assert lines[0].split() == ["name", "value"] and "1234" in lines[2] and lines[3].endswith("-")


def test_quick_runs_write_apart_from_the_committed_full_results(tmp_path):
    arguments = common.parser("unit")
    assert arguments.parse_args([]).results_dir == common.RESULTS_DIR
    quick = arguments.parse_args(["--quick"]).results_dir
    assert quick == common.RESULTS_DIR / "quick" == common.QUICK_RESULTS_DIR
    chosen = arguments.parse_args(["--quick", "--results-dir", str(tmp_path)]).results_dir
    assert chosen == tmp_path


def test_every_accuracy_budget_row_gets_the_same_epochs_and_no_qat_none_of_qat():
    args = argparse.Namespace(
        epochs=10, finetune_epochs=3, cluster_epochs=1, qat_epochs=1, clusters=16,
        allocation="sensitivity", seed=0, cluster_gradient="sum",
        cluster_learning_rate=0.001, short_tensor_names=False, finetune_learning_rate=0.1,
    )  # fmt: skip
    totals = {kind: accuracy_budget._epochs(args, kind)["total"] for kind in accuracy_budget.ROWS}
    assert set(totals.values()) == {15}
    assert accuracy_budget._epochs(args, "no_qat") == {
        "dense": 10, "prune": 3, "cluster": 2, "qat": 0, "total": 15,
    }  # fmt: skip
    no_qat = accuracy_budget._settings(args, "no_qat", 0.8)
    assert "quantize.cluster_epochs=2" in no_qat
    assert not any("qat" in setting.split("=")[0] for setting in no_qat)
    # The committed rows' settings are unchanged, so their results are still reused.
    best = accuracy_budget._settings(args, "best", 0.8)
    assert best[-3:] == (
        "quantize.qat=true", "quantize.qat_epochs=1", "quantize.formats=[float32, int8]",
    )  # fmt: skip
    # Distillation only in the `kd` row, which is `best` plus the teacher.
    kd = accuracy_budget._settings(args, "kd", 0.8)
    assert not any(setting.startswith("distill.") for setting in best)
    assert [setting for setting in kd if setting not in best] == [
        f"distill.teacher={accuracy_budget.DENSE}"
    ]
    # The clustering's gradient and rate reach the rows that cluster, and only those.
    assert not any("cluster_gradient" in setting for setting in best)
    args.cluster_gradient, args.cluster_learning_rate = "average", 0.01
    averaged = accuracy_budget._settings(args, "best", 0.8)
    assert [setting for setting in averaged if setting not in best] == [
        "quantize.cluster_gradient=average", "quantize.cluster_learning_rate=0.01",
    ]  # fmt: skip
    assert accuracy_budget._settings(args, "no_pcqat", 0.8) == accuracy_budget._settings(
        argparse.Namespace(**{**vars(args), "cluster_gradient": "sum"}), "no_pcqat", 0.8
    )
    # Short tensor names reach every row of ours, just before the formats, and no plain row.
    assert not any("short_tensor_names" in setting for setting in best)
    args.short_tensor_names = True
    for kind in ("best", "no_pcqat", "no_qat"):
        named = accuracy_budget._settings(args, kind, 0.8)
        assert named[-2:] == (
            "quantize.short_tensor_names=true",
            "quantize.formats=[float32, int8]",
        )
    assert not any(
        "short" in setting for setting in accuracy_budget._settings(args, "plain_tfmot", 0.8)
    )
    # Plain tfmot fine-tunes at the same peak rate as ours, and says so in its settings.
    plain = accuracy_budget._settings(args, "plain_tfmot", 0.8)
    assert "--prune-learning-rate 0.1" in plain


def test_accuracy_budget_seed_reaches_every_run_and_seed_0_keeps_committed_settings(tmp_path):
    args = argparse.Namespace(
        epochs=10, finetune_epochs=8, cluster_epochs=1, qat_epochs=1, clusters=16,
        allocation="sensitivity", seed=0, cluster_gradient="sum",
        cluster_learning_rate=0.001, short_tensor_names=False, finetune_learning_rate=0.1,
    )  # fmt: skip
    kinds = ["dense", *accuracy_budget.ROWS]
    unseeded = {kind: accuracy_budget._settings(args, kind, 0.7) for kind in kinds}
    assert not any("seed" in setting for settings in unseeded.values() for setting in settings)
    assert unseeded["dense"] == ("train.epochs=10",)
    args.seed = 1
    for kind in kinds:
        seeded = accuracy_budget._settings(args, kind, 0.7)
        wanted = "--seed 1" if kind == "plain_tfmot" else "train.seed=1"
        assert wanted in seeded, kind
        assert [setting for setting in seeded if setting not in unseeded[kind]] == [wanted]
        # Ours pass settings[2:] to `compactcnn run`: the seed must be among them.
        if kind not in ("dense", "plain_tfmot"):
            assert wanted in seeded[2:]
    # runs.dense trains (here: finds) a run of its own for the seed.
    key = common.run_key(common.JPEG_CONFIG, ["train.epochs=10", "train.seed=1"])
    assert key != common.run_key(common.JPEG_CONFIG, ["train.epochs=10"])
    run_dir = tmp_path / f"dense-e10-{key}"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text(json.dumps({"keras": {"test_accuracy": 0.8}}))
    recorder = common.Recorder("unit", [], settings={})
    found_dir, _ = runs.dense(
        recorder, argparse.Namespace(quick=False, epochs=10, cache_dir=tmp_path), seed=1
    )
    assert common.resolve(found_dir) == run_dir
    assert "--set train.seed=1" in recorder.commands[0]["command"]


def test_rows_that_do_not_use_the_chain_carry_over_to_another_split_of_it(tmp_path):
    def arguments(finetune, cluster):
        return argparse.Namespace(
            epochs=10, finetune_epochs=finetune, cluster_epochs=cluster, qat_epochs=1,
            clusters=16, allocation="sensitivity", seed=0, cluster_gradient="sum",
            cluster_learning_rate=0.001, short_tensor_names=False, finetune_learning_rate=0.1,
            quick=False, results_dir=tmp_path,
        )  # fmt: skip

    before = arguments(finetune=8, cluster=1)
    rows = [
        {"row": kind, "sparsity": 0.7, "epochs": accuracy_budget._epochs(before, kind),
         "settings": list(accuracy_budget._settings(before, kind, 0.7))}
        for kind in ("best", "plain_tfmot", "no_pcqat")
    ]  # fmt: skip
    budget = accuracy_budget._budget(before)
    results = {"results": {"budget": budget, "rows": rows}}
    (tmp_path / "accuracy_budget.json").write_text(json.dumps(results))
    assert len(accuracy_budget._finished_rows(before, budget)) == 3
    after = arguments(finetune=6, cluster=3)
    kept = accuracy_budget._finished_rows(after, accuracy_budget._budget(after))
    assert sorted(kind for kind, _, _ in kept) == ["no_pcqat", "plain_tfmot"]
    # Another total (one more pruning epoch) reuses nothing.
    longer = arguments(finetune=9, cluster=1)
    assert accuracy_budget._finished_rows(longer, accuracy_budget._budget(longer)) == {}
    # Nor does another fine-tuning rate.
    slower = argparse.Namespace(**{**vars(before), "finetune_learning_rate": 0.01})
    assert accuracy_budget._finished_rows(slower, accuracy_budget._budget(slower)) == {}


def test_accuracy_budget_reuses_no_row_measured_under_another_training_precision(tmp_path):
    # `train.precision: auto` is mixed_bfloat16 on a CPU with native bfloat16, float32 elsewhere:
    # rows of the other kind of machine started from another dense model.
    args = argparse.Namespace(
        epochs=10, finetune_epochs=8, cluster_epochs=1, qat_epochs=1,
        finetune_learning_rate=0.1, quick=False, results_dir=str(tmp_path),
    )  # fmt: skip
    budget = accuracy_budget._budget(args)
    assert budget["precision"] in ("float32", "mixed_bfloat16")
    row = {"row": "plain_tfmot", "sparsity": 0.7, "settings": ["bench.baseline"]}
    row["epochs"] = accuracy_budget._epochs(args, "plain_tfmot")
    path = tmp_path / "accuracy_budget.json"
    path.write_text(json.dumps({"results": {"budget": budget, "rows": [row]}}))
    assert list(accuracy_budget._finished_rows(args, budget)) == [
        ("plain_tfmot", 0.7, ("bench.baseline",))
    ]
    other = "float32" if budget["precision"] == "mixed_bfloat16" else "mixed_bfloat16"
    elsewhere = budget | {"precision": other}
    path.write_text(json.dumps({"results": {"budget": elsewhere, "rows": [row]}}))
    assert accuracy_budget._finished_rows(args, budget) == {}
