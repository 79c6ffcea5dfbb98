"""A tuning folder in the report: rows from the Optuna storage, the trials' Pareto front, charts.

`compactcnn tune` leaves `tune.yaml` in its folder (the study, its name in the storage, and the
storage URL with any password hidden). The report reads the trials from that storage, not from
results.json, so what it shows is what the storage holds, even while other processes still add
trials. The rows have the shape of a sweep's results.json, so every other part of the report
works on them unchanged; this module adds the section that only a tuning study has.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

from compactcnn.errors import UserError
from compactcnn.report.formatting import (
    as_number,
    config_label,
    kibibytes,
    metric_label,
    percent,
    text,
)
from compactcnn.report.pieces import Heading, Paragraph, Piece, Table
from compactcnn.report.results import Row
from compactcnn.report.tuning_charts import write_tuning_charts
from compactcnn.tuning import storage
from compactcnn.tuning.results import pareto_rows, trial_rows
from compactcnn.tuning.study import TuningStudy, study_from_record

TUNE_FILE = "tune.yaml"  # The same name as `document.TUNE_FILE` and `tuning.runner.TUNE_FILE`.


@dataclass
class Tuning:
    """A tuning folder as the report sees it.

    Attributes:
        study: The study, rebuilt from tune.yaml.
        study_name: Its name in the storage.
        optuna_study: The Optuna study loaded from the storage.
        rows: One row per trial, shaped like a sweep's results.json.
    """

    study: TuningStudy
    study_name: str
    optuna_study: optuna.Study
    rows: list[Row]


def is_tuning_dir(folder: Path) -> bool:
    """True for a folder written by `compactcnn tune`."""
    return (Path(folder) / TUNE_FILE).is_file()


def load_tuning(folder: Path, storage_url: str | None = None) -> Tuning:
    """Reads tune.yaml and the study's trials from its storage.

    Args:
        folder: A folder written by `compactcnn tune`.
        storage_url: The storage, when tune.yaml hides its password or it has moved.

    Raises:
        UserError: When tune.yaml is damaged, the storage unreachable or the study not in it.
    """
    folder = Path(folder)
    try:
        record = yaml.safe_load((folder / TUNE_FILE).read_text())
    except yaml.YAMLError:
        record = None
    if not isinstance(record, dict) or "study_name" not in record:
        raise UserError(f"'{folder / TUNE_FILE}' is damaged; run `compactcnn tune` on it again")
    study = study_from_record(record)
    url = storage_url or _recorded_storage(folder, str(record.get("storage") or ""))
    with_optuna_quiet = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        rdb = storage.open_storage(url)
        try:
            optuna_study = optuna.load_study(study_name=record["study_name"], storage=rdb)
        except KeyError:
            raise UserError(
                f"the storage '{storage.masked(url)}' holds no study '{record['study_name']}'; "
                "pass the right one with --storage"
            ) from None
    finally:
        optuna.logging.set_verbosity(with_optuna_quiet)
    rows = trial_rows(folder, study, optuna_study.get_trials(deepcopy=False))
    return Tuning(study, str(record["study_name"]), optuna_study, rows)


def _recorded_storage(folder: Path, recorded: str) -> str:
    """The storage tune.yaml names; its default database in the folder wherever the folder is."""
    if storage.has_hidden_password(recorded):
        raise UserError(
            f"'{folder / TUNE_FILE}' hides the storage password; pass the URL with --storage"
        )
    local = folder / storage.DEFAULT_FILE
    if recorded.startswith("sqlite:///") and local.is_file():
        recorded_file = Path(recorded[len("sqlite:///") :])
        if not recorded_file.is_file() or recorded_file.resolve() == local.resolve():
            return storage.default_url(folder)  # The folder was moved or copied.
    if not recorded:
        raise UserError(f"'{folder / TUNE_FILE}' names no storage; pass one with --storage")
    return recorded


def _objective_text(value: Any, metric: str) -> str:
    field = metric.rsplit(".", 1)[-1]
    if "accuracy" in field or field in ("agreement", "zeros_fraction"):
        return percent(value)
    if field.endswith("bytes"):
        return kibibytes(value)
    number = as_number(value)
    return text(value) if number is None else f"{number:.4g}"


def _param_text(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else text(value)


def pareto_table(tuning: Tuning) -> Table:
    """The trials on the Pareto front of the objectives (feasible ones only), best first."""
    study = tuning.study
    front = pareto_rows(tuning.rows, study.directions)
    keys = [param.key for param in study.space]
    table = [
        [
            str(order),
            row["name"],
            *[_param_text(row.get(f"config.{key}")) for key in keys],
            *[
                _objective_text(value, objective.metric)
                for objective, value in zip(study.objectives, row["trial.values"], strict=True)
            ],
        ]
        for order, row in enumerate(front, start=1)
    ]
    headers = [
        "#",
        "trial",
        *[config_label(key) for key in keys],
        *[f"{metric_label(o.metric)} ({o.goal[:3]})" for o in study.objectives],
    ]
    return Table(headers, table)


def _space_text(study: TuningStudy) -> str:
    parts = []
    for param in study.space:
        if param.kind == "choice":
            values = ", ".join(text(choice) for choice in param.choices)
            parts.append(f"`{param.key}` in {{{values}}}")
        else:
            scale = ", log scale" if param.log else ""
            step = f", step {param.step}" if param.step is not None else ""
            parts.append(f"`{param.key}` from {param.low} to {param.high}{scale}{step}")
    return "; ".join(parts)


def tuning_pieces(folder: Path, tuning: Tuning) -> list[Piece]:
    """The Tuning section: what was searched, the Pareto front of trials and Optuna's charts."""
    study = tuning.study
    goals = ", ".join(f"{o.goal} {metric_label(o.metric)}" for o in study.objectives)
    counts: dict[str, int] = {}
    for row in tuning.rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    state = ", ".join(f"{count} {status}" for status, count in counts.items()) or "none yet"
    budget = ""
    if study.max_bytes is not None:
        budget = (
            f" Only trials whose {study.budget_metric.split('.')[1]} file is at most "
            f"{kibibytes(study.max_bytes)} count (`max_bytes`)."
        )
    sentence = (
        f"Optuna study `{tuning.study_name}` ({study.sampler} sampler, seed {study.seed}, "
        f"pruner {study.pruner}) searched {_space_text(study)}, to {goals}, with a budget of "
        f"{study.trials} trials. Trials: {state}.{budget}"
    )
    front_text = (
        "The trials that no other finished trial beats in every objective"
        if len(study.objectives) > 1
        else "The best finished trial"
    )
    constrained = study.max_bytes is not None
    return [
        Heading("Tuning"),
        Paragraph(sentence),
        Heading("Pareto front of the trials", level=3),
        Paragraph(f"{front_text}, read from the study's storage."),
        pareto_table(tuning),
        *write_tuning_charts(folder, tuning.optuna_study, study.objectives, constrained),
    ]
