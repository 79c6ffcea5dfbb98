"""Vertex AI hyper-parameter tuning (Vizier) from a tuning study file.

`compactcnn vertex tune STUDY.yaml ...` builds a HyperparameterTuningJob: one parameter spec per
searched key, one metric spec per objective (and a safety metric for `max_bytes`), the trial
count, how many trials run at once, and per trial the same worker pools and image as
`vertex submit`. Each trial's container runs

    compactcnn vertex trial STUDY.yaml --out DIR --<key>=<value> ...

where Vertex AI appends one `--<key>=<value>` per searched key. The trial runs the study's base
config with those values in `DIR/runs/trial-<Vertex trial id>`, and the chief reports each
objective with `cloudml-hypertune` (an optional package, installed in the Dockerfile's image;
without it the values are printed and Vertex AI sees none).

`pruner` is not carried over: Vertex AI runs every trial to its end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from compactcnn.errors import UserError
from compactcnn.tuning.study import Param, TuningStudy, load_tuning_study
from compactcnn.vertex import (
    _aiplatform_types,
    add_machine_arguments,
    container_path,
    worker_pool_specs,
)

# Vertex AI's discrete parameters list their values; a step range longer than this is a typo.
MAX_DISCRETE_VALUES = 1000
DEFAULT_OUT = "runs/vertex"


def _discrete_values(param: Param) -> list[float]:
    count = math.floor((param.high - param.low) / param.step + 1e-9) + 1
    if count > MAX_DISCRETE_VALUES:
        raise UserError(
            f"search space key '{param.key}': step {param.step} gives {count} values, more than "
            f"Vertex AI's discrete parameters should list ({MAX_DISCRETE_VALUES}); widen the step"
        )
    return [float(round(param.low + index * param.step, 12)) for index in range(count)]


def _choice_text(choice: Any) -> str:
    """A choice as Vertex AI passes it back: plain for numbers and words, JSON otherwise."""
    if isinstance(choice, bool):
        return "true" if choice else "false"
    if isinstance(choice, (str, int, float)):
        return str(choice)
    return json.dumps(choice)


def parameter_spec(param: Param) -> dict[str, Any]:
    """A `StudySpec.ParameterSpec` (as a dict) for one search-space entry."""
    spec: dict[str, Any] = {"parameter_id": param.key}
    if param.kind == "choice":
        numbers = all(
            isinstance(c, (int, float)) and not isinstance(c, bool) for c in param.choices
        )
        if numbers:
            spec["discrete_value_spec"] = {"values": sorted({float(c) for c in param.choices})}
            spec["scale_type"] = "UNIT_LINEAR_SCALE"
        else:
            spec["categorical_value_spec"] = {"values": [_choice_text(c) for c in param.choices]}
        return spec
    spec["scale_type"] = "UNIT_LOG_SCALE" if param.log else "UNIT_LINEAR_SCALE"
    if param.step is not None and not (param.kind == "int" and param.step == 1):
        spec["discrete_value_spec"] = {"values": _discrete_values(param)}
    elif param.kind == "int":
        spec["integer_value_spec"] = {"min_value": param.low, "max_value": param.high}
    else:
        spec["double_value_spec"] = {"min_value": param.low, "max_value": param.high}
    return spec


def metric_specs(study: TuningStudy) -> list[dict[str, Any]]:
    """One metric spec per objective, plus `max_bytes` as a safety metric.

    Raises:
        UserError: When the budgeted metric is also an objective (Vertex AI needs a separate one).
    """
    specs = [{"metric_id": o.metric, "goal": o.goal.upper()} for o in study.objectives]
    if study.budget_metric is not None:
        if study.budget_metric in [o.metric for o in study.objectives]:
            raise UserError(
                f"Vertex AI cannot budget '{study.budget_metric}' with max_bytes while it is an "
                "objective; minimize the gzip size instead, or drop max_bytes"
            )
        specs.append(
            {
                "metric_id": study.budget_metric,
                "goal": "MINIMIZE",
                "safety_config": {"safety_threshold": float(study.max_bytes)},
            }
        )
    return specs


def build_tuning_job(
    study_path: str,
    replicas: int,
    machine_type: str,
    accelerator_type: str | int | None,
    accelerator_count: int,
    image: str,
    parallel_trials: int = 1,
    max_failed_trials: int = 0,
    out: str | None = None,
    container_study: str | None = None,
    display_name: str | None = None,
) -> dict[str, Any]:
    """Builds a HyperparameterTuningJob (as a plain dict) from a tuning study file.

    Args:
        study_path: The study file here; it is validated like `compactcnn tune` does.
        replicas, machine_type, accelerator_type, accelerator_count, image: Each trial's
            machines, as for `vertex submit`.
        parallel_trials: Trials that run at once.
        max_failed_trials: Failed trials after which the job stops (0: Vertex AI's default).
        out: The tuning folder the trials write to (a gs:// path becomes its /gcs/ mount).
        container_study: Where the container reads the study file, when not at `study_path`
            (e.g. gs://bucket/study.yaml; the base config must sit beside it as in the file).
        display_name: The job's name in the console; defaults to `compactcnn-tune-<stem>`.

    Returns:
        The job, validated by building `aiplatform_v1.types.HyperparameterTuningJob` from it.

    Raises:
        UserError: On an invalid study, machine set-up or job field.
    """
    study = load_tuning_study(study_path)
    if parallel_trials < 1:
        raise UserError(f"--parallel-trials must be at least 1, got {parallel_trials}")
    if max_failed_trials < 0:
        raise UserError(f"--max-failed-trials must not be negative, got {max_failed_trials}")
    stem = Path(study_path).stem
    out_dir = container_path(out or f"{DEFAULT_OUT}/{stem}")
    args = ["vertex", "trial", container_path(container_study or study_path), "--out", out_dir]
    pools = worker_pool_specs(
        replicas, machine_type, accelerator_type, accelerator_count, image, args
    )
    job = {
        "display_name": display_name or f"compactcnn-tune-{stem}",
        "study_spec": {
            "metrics": metric_specs(study),
            "parameters": [parameter_spec(param) for param in study.space],
            # Vizier's default is Bayesian optimization (multi-objective too); random is random.
            "algorithm": "RANDOM_SEARCH" if study.sampler == "random" else "ALGORITHM_UNSPECIFIED",
            "measurement_selection_type": "LAST_MEASUREMENT",
        },
        "max_trial_count": study.trials,
        "parallel_trial_count": min(parallel_trials, study.trials),
        "max_failed_trial_count": max_failed_trials,
        "trial_job_spec": {"worker_pool_specs": pools},
    }
    validate_tuning_job(job)
    return job


def validate_tuning_job(job: dict[str, Any]) -> None:
    """Builds `aiplatform_v1.types.HyperparameterTuningJob` from the dict (checks every field).

    Raises:
        UserError: With the first problem the message type reports.
    """
    try:
        _aiplatform_types().HyperparameterTuningJob(job)
    except (KeyError, ValueError, TypeError) as error:
        first_line = (str(error).splitlines() or [type(error).__name__])[0]
        raise UserError(f"invalid Vertex AI HyperparameterTuningJob: {first_line}") from None


def submit_tuning_job(job: dict[str, Any], project: str | None, region: str | None) -> str:
    """Creates the job through the Vertex AI API and returns its resource name."""
    _aiplatform_types()  # A clear error when the extra is missing.
    from google.cloud import aiplatform_v1

    if not project:
        raise UserError("--project is required to submit a tuning job (or use --dry-run)")
    region = region or "us-central1"
    client = aiplatform_v1.JobServiceClient(
        client_options={"api_endpoint": f"{region}-aiplatform.googleapis.com"}
    )
    created = client.create_hyperparameter_tuning_job(
        parent=f"projects/{project}/locations/{region}", hyperparameter_tuning_job=job
    )
    return created.name


# -- the trial side ------------------------------------------------------------------------


def trial_values(study: TuningStudy, arguments: Sequence[str]) -> dict[str, Any]:
    """Reads the `--<key>=<value>` (or `--<key> <value>`) arguments Vertex AI appends.

    Raises:
        UserError: On an argument that is no searched key, a missing key, or a value that is
            not one of a choice's values.
    """
    params = {param.key: param for param in study.space}
    texts: dict[str, str] = {}
    items = list(arguments)
    while items:
        item = items.pop(0)
        key, separator, value = item[2:].partition("=") if item.startswith("--") else ("", "", "")
        if not separator and key and items and not items[0].startswith("--"):
            value, separator = items.pop(0), "="
        if key not in params or not separator:
            raise UserError(
                f"unexpected trial argument '{item}'; Vertex AI passes --<key>=<value> for the "
                f"searched keys: {', '.join(params)}"
            )
        texts[key] = value
    missing = [key for key in params if key not in texts]
    if missing:
        raise UserError(f"the trial got no value for {', '.join(missing)}; pass --<key>=<value>")
    return {key: _typed(params[key], text) for key, text in texts.items()}


def _typed(param: Param, text: str) -> Any:
    """The config value of a parameter as Vertex AI passed it (discrete values come as floats)."""
    if param.kind == "choice":
        for choice in param.choices:
            if _choice_text(choice) == text:
                return choice
            numeric = isinstance(choice, (int, float)) and not isinstance(choice, bool)
            if numeric and _is_float(text) and float(text) == float(choice):
                return choice
        raise UserError(f"'{text}' is not a choice of '{param.key}'")
    if not _is_float(text):
        raise UserError(f"'{text}' is not a number for '{param.key}'")
    return round(float(text)) if param.kind == "int" else float(text)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def report_metrics(study: TuningStudy, metrics: dict[str, Any]) -> dict[str, float]:
    """Reports the objectives (and the budgeted size) to Vertex AI with cloudml-hypertune.

    Returns:
        The reported metric -> value.
    """
    from compactcnn.tuning.results import flat_metrics

    flat = flat_metrics(metrics)
    names = [o.metric for o in study.objectives]
    if study.budget_metric is not None:
        names.append(study.budget_metric)
    values = {name: float(flat[name]) for name in names if isinstance(flat.get(name), (int, float))}
    step = int(flat.get("train.epochs") or 0) or None
    try:
        import hypertune
    except ImportError:
        print(
            "cloudml-hypertune is not installed, so Vertex AI cannot read these: "
            + json.dumps(values),
            file=sys.stderr,
        )
        return values
    reporter = hypertune.HyperTune()
    for name, value in values.items():
        reporter.report_hyperparameter_tuning_metric(
            hyperparameter_metric_tag=name, metric_value=value, global_step=step
        )
    return values


def run_trial(study_path: str, out: str | None, arguments: Sequence[str]) -> dict[str, float]:
    """Runs one Vertex AI trial in this process and reports its metrics from the chief."""
    study = load_tuning_study(container_path(study_path))
    values = trial_values(study, arguments)
    from compactcnn.config import load_config

    config = load_config(study.base, study.overrides(values))
    trial_id = os.environ.get("CLOUD_ML_TRIAL_ID", "local")
    run_dir = Path(container_path(out or f"{DEFAULT_OUT}/{study.path.stem}"))
    run_dir = run_dir / "runs" / f"trial-{trial_id}"
    from compactcnn import distribute
    from compactcnn.run import run

    metrics = run(config, run_dir, verbose=2)
    if not distribute.is_chief_task(distribute.cluster_spec_from_env()):
        return {}  # Only the chief exported and measured the files.
    return report_metrics(study, metrics)


# -- the command line ------------------------------------------------------------------------


def add_tuning_parsers(actions: argparse._SubParsersAction) -> None:
    """Adds `vertex tune` and `vertex trial` to the `vertex` command's subparsers."""
    tune = actions.add_parser(
        "tune", help="submit a HyperparameterTuningJob built from a tuning study file"
    )
    tune.add_argument("study", help="tuning study YAML (read here, and in the image by default)")
    add_machine_arguments(tune)
    tune.add_argument("--parallel-trials", type=int, default=1, help="trials at once")
    tune.add_argument("--max-failed-trials", type=int, default=0)
    tune.add_argument("--out", default=None, help="tuning folder of the trials; gs:// -> /gcs/")
    tune.add_argument(
        "--container-study", default=None, help="the study inside the container, e.g. gs://..."
    )
    tune.add_argument("--dry-run", action="store_true", help="print the job as JSON")
    tune.add_argument("--project", default=None)
    tune.add_argument("--region", default=None)
    tune.set_defaults(func=_tune_command)

    trial = actions.add_parser(
        "trial",
        help="run one tuning trial (the container command of `vertex tune`)",
        allow_abbrev=False,
    )
    trial.add_argument("study", help="tuning study YAML")
    trial.add_argument("--out", default=None, help="tuning folder; gs:// -> /gcs/")
    trial.set_defaults(func=_trial_command, extra_arguments=True)


def _tune_command(args: argparse.Namespace) -> int:
    job = build_tuning_job(
        args.study,
        replicas=args.replicas,
        machine_type=args.machine_type,
        accelerator_type=args.accelerator_type,
        accelerator_count=args.accelerator_count,
        image=args.image,
        parallel_trials=args.parallel_trials,
        max_failed_trials=args.max_failed_trials,
        out=args.out,
        container_study=args.container_study,
        display_name=args.display_name,
    )
    if args.dry_run:
        print(json.dumps(job, indent=2))
        return 0
    print(submit_tuning_job(job, args.project, args.region))
    return 0


def _trial_command(args: argparse.Namespace) -> int:
    values = run_trial(args.study, args.out, getattr(args, "unknown", []))
    print(json.dumps(values, indent=2))
    return 0
