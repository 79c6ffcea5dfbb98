"""`vertex tune` and `vertex trial`: the tuning job a dry run prints, and a trial's side."""

import json
import sys
import types
from pathlib import Path

import pytest

pytest.importorskip("google.cloud.aiplatform_v1")

from tune_fakes import write_study  # noqa: E402

from compactcnn import cli, vertex, vertex_tuning  # noqa: E402
from compactcnn.errors import UserError  # noqa: E402
from compactcnn.tuning import load_tuning_study  # noqa: E402

IMAGE = "us-docker.pkg.dev/project/compactcnn/train:1"
TINY = "configs/studies/tune_tiny.yaml"
ROOT = Path(__file__).resolve().parents[1]


def _dry_run(capsys, *arguments: str) -> dict:
    assert vertex.main(["tune", *arguments, "--image", IMAGE, "--dry-run"]) == 0
    return json.loads(capsys.readouterr().out)


def test_tiny_study_becomes_a_tuning_job_with_the_submit_pools(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    job = _dry_run(
        capsys,
        TINY,
        "--replicas",
        "2",
        "--accelerator-type",
        "NVIDIA_TESLA_T4",
        "--accelerator-count",
        "1",
        "--parallel-trials",
        "2",
        "--out",
        "gs://bucket/tuning/tiny",
    )
    spec = job["study_spec"]
    assert spec["metrics"] == [
        {"metric_id": "tflite.int8.accuracy", "goal": "MAXIMIZE"},
        {"metric_id": "tflite.int8.gzip_bytes", "goal": "MINIMIZE"},
    ]
    sparsity, rate = spec["parameters"]
    # A stepped float range is a discrete parameter listing its values.
    assert sparsity == {
        "parameter_id": "prune.final_sparsity",
        "scale_type": "UNIT_LINEAR_SCALE",
        "discrete_value_spec": {"values": [0.5, 0.6, 0.7, 0.8, 0.9]},
    }
    assert rate == {
        "parameter_id": "train.learning_rate",
        "scale_type": "UNIT_LOG_SCALE",
        "double_value_spec": {"min_value": 0.02, "max_value": 0.2},
    }
    assert spec["algorithm"] == "ALGORITHM_UNSPECIFIED"
    assert (job["max_trial_count"], job["parallel_trial_count"]) == (2, 2)
    pools = job["trial_job_spec"]["worker_pool_specs"]
    args = ["vertex", "trial", TINY, "--out", "/gcs/bucket/tuning/tiny"]
    # The same pools as `vertex submit` on the same machines, with the trial command.
    expected = vertex.worker_pool_specs(2, "n1-standard-8", "NVIDIA_TESLA_T4", 1, IMAGE, args)
    assert pools == expected
    assert [pool["replica_count"] for pool in pools] == [1, 1]


def test_every_space_form_and_the_size_budget(tmp_path, capsys):
    study_path = write_study(
        tmp_path,
        space={
            "train.batch_size": {"int": [16, 64], "step": 16},
            "train.epochs": {"int": [2, 4]},
            "quantize.formats": {"choice": [["int8"], ["float32", "int8"]]},
            "train.nesterov": [True, False],
            "train.weight_decay": [0.0001, 0.0005],
        },
        objectives={"tflite.int8.accuracy": "maximize"},
        max_bytes=100_000,
        sampler="random",
    )
    job = _dry_run(capsys, str(study_path), "--container-study", "gs://b/study.yaml")
    batch, epochs, formats, nesterov, decay = job["study_spec"]["parameters"]
    assert batch["discrete_value_spec"] == {"values": [16.0, 32.0, 48.0, 64.0]}
    assert epochs["integer_value_spec"] == {"min_value": 2, "max_value": 4}
    assert formats["categorical_value_spec"] == {"values": ['["int8"]', '["float32", "int8"]']}
    assert nesterov["categorical_value_spec"] == {"values": ["true", "false"]}
    assert decay["discrete_value_spec"] == {"values": [0.0001, 0.0005]}
    # max_bytes becomes a safety metric on the first objective's file size.
    assert job["study_spec"]["metrics"][1] == {
        "metric_id": "tflite.int8.bytes",
        "goal": "MINIMIZE",
        "safety_config": {"safety_threshold": 100000.0},
    }
    assert job["study_spec"]["algorithm"] == "RANDOM_SEARCH"
    assert job["trial_job_spec"]["worker_pool_specs"][0]["container_spec"]["args"][2] == (
        "/gcs/b/study.yaml"
    )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--accelerator-type", "NVIDIA_TESLA_K9", "--accelerator-count", "1"], "unknown accel"),
        (["--parallel-trials", "0"], "--parallel-trials must be at least 1"),
        (["--replicas", "0"], "--replicas must be at least 1"),
    ],
)
def test_bad_job_options_are_one_line(tmp_path, capsys, arguments, message):
    study_path = write_study(tmp_path)
    assert vertex.main(["tune", str(study_path), *arguments, "--image", IMAGE, "--dry-run"]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


def test_bad_study_is_one_line(tmp_path, capsys):
    study_path = write_study(tmp_path, space={"train.nope": {"float": [0.1, 0.2]}})
    assert vertex.main(["tune", str(study_path), "--image", IMAGE, "--dry-run"]) == 2
    assert "unknown config key 'train.nope'" in capsys.readouterr().err


def test_an_invalid_job_field_is_caught_by_the_api_types():
    with pytest.raises(UserError, match="invalid Vertex AI HyperparameterTuningJob"):
        vertex_tuning.validate_tuning_job({"study_spec": {"metrics": [{"goal": "UPWARDS"}]}})


def test_trial_reads_the_arguments_vertex_appends(tmp_path):
    study = load_tuning_study(
        write_study(
            tmp_path,
            space={
                "train.batch_size": {"int": [16, 64], "step": 16},
                "quantize.formats": {"choice": [["int8"], ["float32", "int8"]]},
                "train.learning_rate": {"float": [0.01, 0.3], "log": True},
                "train.nesterov": [True, False],
            },
        )
    )
    values = vertex_tuning.trial_values(
        study,
        [
            "--train.batch_size=32.0",  # Discrete values come back as floats.
            '--quantize.formats=["float32", "int8"]',
            "--train.learning_rate",
            "0.05",
            "--train.nesterov=false",
        ],
    )
    assert values == {
        "train.batch_size": 32,
        "quantize.formats": ["float32", "int8"],
        "train.learning_rate": 0.05,
        "train.nesterov": False,
    }
    assert isinstance(values["train.batch_size"], int)
    with pytest.raises(UserError, match="unexpected trial argument '--train.epochs=3'"):
        vertex_tuning.trial_values(study, ["--train.epochs=3"])
    with pytest.raises(UserError, match="no value for"):
        vertex_tuning.trial_values(study, ["--train.batch_size=32"])
    with pytest.raises(UserError, match="not a choice"):
        vertex_tuning.trial_values(
            study,
            [
                "--train.batch_size=32",
                "--quantize.formats=[float16]",
                "--train.learning_rate=0.1",
                "--train.nesterov=true",
            ],
        )


def test_only_the_trial_command_accepts_unknown_options(tmp_path):
    study_path = str(write_study(tmp_path))
    parser = cli.build_parser()
    args = cli.parse_arguments(
        parser, ["vertex", "trial", study_path, "--out", "x", "--train.learning_rate=0.1"]
    )
    assert args.unknown == ["--train.learning_rate=0.1"] and args.out == "x"
    with pytest.raises(SystemExit):
        cli.parse_arguments(parser, ["run", "configs/sample_scratch.yaml", "--train.epochs=3"])


def _metrics(accuracy: float, size: int) -> dict:
    int8 = {"accuracy": accuracy, "bytes": size, "gzip_bytes": size // 2}
    return {"tflite": {"int8": int8}, "train": {"epochs": 2}, "pruning": {"layers": {}}}


def test_trial_reports_each_objective_with_hypertune(tmp_path, monkeypatch):
    reported = []

    class HyperTune:
        def report_hyperparameter_tuning_metric(self, **kwargs):
            reported.append(kwargs)

    monkeypatch.setitem(sys.modules, "hypertune", types.SimpleNamespace(HyperTune=HyperTune))
    study = load_tuning_study(write_study(tmp_path))
    values = vertex_tuning.report_metrics(study, _metrics(0.75, 100_000))
    assert values == {"tflite.int8.accuracy": 0.75, "tflite.int8.gzip_bytes": 50_000.0}
    assert [
        (r["hyperparameter_metric_tag"], r["metric_value"], r["global_step"]) for r in reported
    ] == [
        ("tflite.int8.accuracy", 0.75, 2),
        ("tflite.int8.gzip_bytes", 50_000.0, 2),
    ]


def test_trial_without_hypertune_prints_its_metrics(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "hypertune", None)  # `import hypertune` fails.
    study = load_tuning_study(
        write_study(tmp_path, objectives={"tflite.int8.accuracy": "maximize"}, max_bytes=1000)
    )
    values = vertex_tuning.report_metrics(study, _metrics(0.5, 900))
    assert values == {"tflite.int8.accuracy": 0.5, "tflite.int8.bytes": 900.0}
    assert "cloudml-hypertune is not installed" in capsys.readouterr().err
