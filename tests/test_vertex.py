"""Tests for compactcnn.vertex: the CustomJob a dry run prints, and its validation."""

import json

import pytest

pytest.importorskip("google.cloud.aiplatform_v1")

from compactcnn import vertex  # noqa: E402
from compactcnn.errors import UserError  # noqa: E402

IMAGE = "us-docker.pkg.dev/project/compactcnn/train:1"


def _dry_run(capsys, *arguments: str) -> dict:
    exit_code = vertex.main(["submit", *arguments, "--image", IMAGE, "--dry-run"])
    assert exit_code == 0
    return json.loads(capsys.readouterr().out)


def test_single_replica_cpu_job_has_only_the_chief_pool(capsys):
    job = _dry_run(capsys, "configs/quickstart.yaml", "--machine-type", "n1-standard-4")
    assert job["display_name"] == "compactcnn-quickstart"
    (chief,) = job["job_spec"]["worker_pool_specs"]
    assert chief["replica_count"] == 1
    # No accelerator fields at all when the count is 0.
    assert chief["machine_spec"] == {"machine_type": "n1-standard-4"}
    assert chief["container_spec"] == {
        "image_uri": IMAGE,
        "command": ["compactcnn"],
        "args": ["run", "configs/quickstart.yaml"],
    }


def test_three_replicas_make_a_chief_and_two_workers(capsys):
    job = _dry_run(
        capsys,
        "gs://bucket/configs/r56.yaml",
        "--replicas",
        "3",
        "--machine-type",
        "n1-standard-8",
        "--accelerator-type",
        "nvidia_tesla_t4",
        "--accelerator-count",
        "2",
        "--set",
        "train.epochs=30",
        "--out",
        "gs://bucket/runs/r56",
        "--display-name",
        "r56-3x2",
    )
    assert job["display_name"] == "r56-3x2"
    chief, workers = job["job_spec"]["worker_pool_specs"]
    assert (chief["replica_count"], workers["replica_count"]) == (1, 2)
    expected_args = [
        "run",
        "/gcs/bucket/configs/r56.yaml",  # Vertex AI mounts gs:// buckets under /gcs/.
        "--set",
        "train.epochs=30",
        "--out",
        "/gcs/bucket/runs/r56",
    ]
    for pool in (chief, workers):
        assert pool["machine_spec"] == {
            "machine_type": "n1-standard-8",
            "accelerator_type": "NVIDIA_TESLA_T4",
            "accelerator_count": 2,
        }
        assert pool["container_spec"]["args"] == expected_args
        assert pool["container_spec"]["image_uri"] == IMAGE


def test_pools_are_independent_copies():
    job = vertex.build_custom_job("c.yaml", 2, "n1-standard-4", None, 0, IMAGE)
    chief, workers = job["job_spec"]["worker_pool_specs"]
    chief["container_spec"]["args"].append("--chief-only")
    assert "--chief-only" not in workers["container_spec"]["args"]


def test_wrong_accelerator_name_is_a_one_line_user_error():
    with pytest.raises(UserError, match="unknown accelerator type 'TESLA_T4'") as raised:
        vertex.build_custom_job("c.yaml", 2, "n1-standard-4", "TESLA_T4", 1, IMAGE)
    message = str(raised.value)
    assert "\n" not in message
    assert "NVIDIA_TESLA_T4" in message and "NVIDIA_L4" in message


def test_wrong_accelerator_name_from_the_command_line_exits_2(capsys):
    arguments = ["submit", "c.yaml", "--image", IMAGE, "--dry-run"]
    arguments += ["--accelerator-type", "K9000", "--accelerator-count", "1"]
    assert vertex.main(arguments) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: unknown accelerator type 'K9000'")
    assert captured.out == ""


def test_integer_accelerator_value_is_accepted_unchecked():
    job = vertex.build_custom_job("c.yaml", 1, "a2-highgpu-1g", 7, 1, IMAGE)
    assert job["job_spec"]["worker_pool_specs"][0]["machine_spec"]["accelerator_type"] == 7


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("c.yaml", 0, "n1-standard-4", None, 0, IMAGE), "--replicas must be at least 1"),
        (("c.yaml", 1, "n1-standard-4", None, 0, ""), "--image is required"),
        (("c.yaml", 1, "n1-standard-4", "NVIDIA_L4", 0, IMAGE), "needs --accelerator-count"),
        (("c.yaml", 1, "n1-standard-4", None, 1, IMAGE), "unknown accelerator type 'None'"),
    ],
)
def test_invalid_jobs_are_user_errors(arguments, message):
    with pytest.raises(UserError, match=message):
        vertex.build_custom_job(*arguments)


def test_validation_rejects_a_field_the_api_does_not_know():
    job = vertex.build_custom_job("c.yaml", 1, "n1-standard-4", None, 0, IMAGE)
    job["job_spec"]["worker_pool_specs"][0]["replica_cont"] = 2
    with pytest.raises(UserError, match="invalid Vertex AI CustomJob: .*replica_cont"):
        vertex.validate_custom_job(job)


def test_submit_without_staging_bucket_is_a_user_error(capsys):
    assert vertex.main(["submit", "c.yaml", "--image", IMAGE]) == 2
    assert "--staging-bucket" in capsys.readouterr().err
