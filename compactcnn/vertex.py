"""Vertex AI custom training: build a CustomJob that runs `compactcnn run CONFIG` on N machines.

Pool 0 is the chief (one replica), pool 1 holds the other N-1 workers. Vertex AI sets
`CLUSTER_SPEC` on every replica, which `compactcnn.distribute` turns into a `TF_CONFIG`, so the
same config trains on one machine or many. Needs the optional extra: `pip install .[vertex]`.
(`vertex tune`, a hyper-parameter tuning job from a tuning study, is in `vertex_tuning`.)

The config file must exist inside the container: either bake it into the image (the Dockerfile
copies `configs/`, so `configs/quickstart.yaml` works) or pass a `gs://bucket/path.yaml`, which is
rewritten to the Cloud Storage FUSE mount `/gcs/bucket/path.yaml` that Vertex AI provides.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Sequence
from typing import Any

from compactcnn.errors import UserError

# Vertex AI mounts every readable bucket here (Cloud Storage FUSE) in custom training containers.
GCS_FUSE_ROOT = "/gcs/"


def _aiplatform_types():
    try:
        from google.cloud import aiplatform_v1
    except ImportError:
        raise UserError(
            "Vertex AI support needs google-cloud-aiplatform; install it with "
            "`pip install compactcnn[vertex]`"
        ) from None
    return aiplatform_v1.types


def container_path(path: str) -> str:
    """Maps `gs://bucket/key` to the path Vertex AI mounts it at; other paths stay as they are."""
    if path.startswith("gs://"):
        return GCS_FUSE_ROOT + path[len("gs://") :]
    return path


def _accelerator_name(accelerator_type: str | int | None) -> str | int:
    """Checks an accelerator name against the API enum; an integer enum value passes unchecked."""
    if isinstance(accelerator_type, int) and not isinstance(accelerator_type, bool):
        return accelerator_type
    names = [
        member.name
        for member in _aiplatform_types().AcceleratorType
        if member.name != "ACCELERATOR_TYPE_UNSPECIFIED"
    ]
    name = str(accelerator_type or "").strip().upper()
    if name not in names:
        raise UserError(
            f"unknown accelerator type '{accelerator_type}'; valid names: {', '.join(names)}"
        )
    return name


def build_custom_job(
    config_path: str,
    replicas: int,
    machine_type: str,
    accelerator_type: str | int | None,
    accelerator_count: int,
    image: str,
    display_name: str | None = None,
    extra_args: Sequence[str] = (),
) -> dict[str, Any]:
    """Builds a Vertex AI CustomJob (as a plain dict) that trains one config on `replicas` machines.

    Args:
        config_path: The config inside the container (e.g. `configs/quickstart.yaml`), or a
            `gs://` path, which becomes its `/gcs/` mount path.
        replicas: Machines in total: one chief plus `replicas - 1` workers.
        machine_type: A Compute Engine machine type, e.g. `n1-standard-8`.
        accelerator_type: An `AcceleratorType` name such as `NVIDIA_TESLA_T4` (or its integer
            value); ignored when `accelerator_count` is 0.
        accelerator_count: Accelerators per machine (0 for CPU only).
        image: The training image URI, built from this project's Dockerfile.
        display_name: The job's name in the console; defaults to `compactcnn-<config stem>`.
        extra_args: More arguments for `compactcnn run`, e.g. `["--set", "train.epochs=30"]`.

    Returns:
        `{"display_name", "job_spec": {"worker_pool_specs": [...]}}`, already validated by
        building `aiplatform_v1.types.CustomJob` from it.

    Raises:
        UserError: On a bad replica or accelerator count, an unknown accelerator name, a missing
            image, or anything else the CustomJob message rejects.
    """
    pools = worker_pool_specs(
        replicas,
        machine_type,
        accelerator_type,
        accelerator_count,
        image,
        ["run", container_path(config_path), *extra_args],
    )
    stem = config_path.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    job = {
        "display_name": display_name or f"compactcnn-{stem}",
        "job_spec": {"worker_pool_specs": pools},
    }
    validate_custom_job(job)
    return job


def worker_pool_specs(
    replicas: int,
    machine_type: str,
    accelerator_type: str | int | None,
    accelerator_count: int,
    image: str,
    args: Sequence[str],
) -> list[dict[str, Any]]:
    """The worker pools of a job on `replicas` machines running `compactcnn ARGS`.

    Pool 0 is the chief (one replica), pool 1 the other `replicas - 1` workers (absent for one
    replica). A CustomJob and each trial of a HyperparameterTuningJob use the same pools.

    Raises:
        UserError: On a bad replica or accelerator count, an unknown accelerator name, or a
            missing image or machine type.
    """
    if replicas < 1:
        raise UserError(f"--replicas must be at least 1, got {replicas}")
    if accelerator_count < 0:
        raise UserError(f"--accelerator-count must not be negative, got {accelerator_count}")
    if not image:
        raise UserError("--image is required: the URI of an image built from the Dockerfile")
    if not machine_type:
        raise UserError("--machine-type is required, e.g. n1-standard-8")
    if accelerator_type and accelerator_count == 0:
        raise UserError(
            f"--accelerator-type {accelerator_type} needs --accelerator-count of at least 1"
        )
    machine_spec: dict[str, Any] = {"machine_type": machine_type}
    if accelerator_count > 0:
        machine_spec["accelerator_type"] = _accelerator_name(accelerator_type)
        machine_spec["accelerator_count"] = accelerator_count
    container_spec = {"image_uri": image, "command": ["compactcnn"], "args": list(args)}

    def pool(replica_count: int) -> dict[str, Any]:
        # Separate copies, so editing one pool of the returned dict never changes the other.
        return copy.deepcopy(
            {
                "machine_spec": machine_spec,
                "replica_count": replica_count,
                "container_spec": container_spec,
            }
        )

    pools = [pool(1)]
    if replicas > 1:
        pools.append(pool(replicas - 1))
    return pools


def validate_custom_job(job: dict[str, Any]) -> None:
    """Builds `aiplatform_v1.types.CustomJob` from the dict, which checks every field and enum.

    Raises:
        UserError: With the first problem the message type reports.
    """
    custom_job_type = _aiplatform_types().CustomJob
    try:
        custom_job_type(job)
    except (KeyError, ValueError, TypeError) as error:
        first_line = (str(error).splitlines() or [type(error).__name__])[0]
        raise UserError(f"invalid Vertex AI CustomJob: {first_line}") from None


def submit(
    job_dict: dict[str, Any], project: str | None, region: str | None, staging_bucket: str
) -> str:
    """Submits the job through the Vertex AI SDK and returns its resource name.

    Uses Application Default Credentials; `project` and `region` fall back to the SDK defaults
    (the gcloud project, us-central1) when None.
    """
    _aiplatform_types()  # A clear error when the extra is missing.
    from google.cloud import aiplatform

    if not staging_bucket.startswith("gs://"):
        raise UserError(f"--staging-bucket must be a gs:// URI, got '{staging_bucket}'")
    aiplatform.init(project=project, location=region, staging_bucket=staging_bucket)
    job = aiplatform.CustomJob(
        display_name=job_dict["display_name"],
        worker_pool_specs=job_dict["job_spec"]["worker_pool_specs"],
    )
    job.submit()
    return job.resource_name


def add_vertex_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds `vertex submit CONFIG ...` to a CLI; the parsed args carry `func(args) -> int`.

    Args:
        subparsers: The object returned by `ArgumentParser.add_subparsers()`.

    Returns:
        The `vertex` parser.
    """
    vertex_parser = subparsers.add_parser("vertex", help="train on Vertex AI")
    actions = vertex_parser.add_subparsers(dest="vertex_command", required=True)
    submit_parser = actions.add_parser(
        "submit", help="submit a CustomJob running `compactcnn run CONFIG` on N machines"
    )
    submit_parser.add_argument(
        "config", help="config path inside the image (configs/...) or gs://bucket/config.yaml"
    )
    add_machine_arguments(submit_parser)
    submit_parser.add_argument(
        "--out", default=None, help="run directory for `run --out`; gs:// maps to /gcs/"
    )
    submit_parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override passed on to `run --set` (repeatable)",
    )
    submit_parser.add_argument("--dry-run", action="store_true", help="print the job as JSON")
    submit_parser.add_argument("--project", default=None)
    submit_parser.add_argument("--region", default=None)
    submit_parser.add_argument("--staging-bucket", default=None, help="gs://bucket")
    submit_parser.set_defaults(func=_submit_command)

    from compactcnn.vertex_tuning import add_tuning_parsers  # Its own module: tuning jobs.

    add_tuning_parsers(actions)
    return vertex_parser


def add_machine_arguments(parser: argparse.ArgumentParser) -> None:
    """The machine, accelerator and image options that `submit` and `tune` share."""
    parser.add_argument("--replicas", type=int, default=1, help="machines (default 1)")
    parser.add_argument("--machine-type", default="n1-standard-8")
    parser.add_argument("--accelerator-type", default=None, help="e.g. NVIDIA_TESLA_T4")
    parser.add_argument("--accelerator-count", type=int, default=0)
    parser.add_argument("--image", required=True, help="training image URI")
    parser.add_argument("--display-name", default=None)


def _submit_command(args: argparse.Namespace) -> int:
    run_args = [argument for text in args.overrides for argument in ("--set", text)]
    if args.out:
        run_args += ["--out", container_path(args.out)]
    job = build_custom_job(
        args.config,
        replicas=args.replicas,
        machine_type=args.machine_type,
        accelerator_type=args.accelerator_type,
        accelerator_count=args.accelerator_count,
        image=args.image,
        display_name=args.display_name,
        extra_args=run_args,
    )
    if args.dry_run:
        print(json.dumps(job, indent=2))
        return 0
    if not args.staging_bucket:
        raise UserError("--staging-bucket gs://... is required to submit (or use --dry-run)")
    print(submit(job, args.project, args.region, args.staging_bucket))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the `vertex` command on its own: `python -m compactcnn.vertex submit CONFIG ...`."""
    parser = argparse.ArgumentParser(prog="compactcnn")
    add_vertex_parser(parser.add_subparsers(dest="command", required=True))
    from compactcnn.cli import parse_arguments

    args = parse_arguments(parser, ["vertex", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
