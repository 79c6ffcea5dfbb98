"""A tuning study's trials as the rows of a sweep's results.json, and its Pareto front.

A row per trial: `name` (`trial-<number>`), `status`, `run_dir`, `config.<key>` of the fixed and
searched keys, the run's flattened metrics, and `trial.*` fields (number, state, objective
values, feasibility). Metrics come from the run's metrics.json when this machine has the folder,
else from what the trial recorded in the storage, so a report sees every trial of a study shared
by several machines. A trial that was interrupted and resumed by a later trial (which took over
its run directory) is left out: the later trial stands for it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from compactcnn import ownership
from compactcnn.errors import UserError
from compactcnn.sweep import flatten
from compactcnn.tuning import engine
from compactcnn.tuning.study import TuningStudy

# Trial user attributes written by the tuner.
WORKER_ATTR = "worker"
RUN_DIR_ATTR = "run_dir"
RESUMES_ATTR = "resumes_trial"
METRICS_ATTR = "metrics"
ERROR_ATTR = "error"

STATUS = {
    TrialState.COMPLETE: "finished",
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "failed",
    TrialState.RUNNING: "running",
    TrialState.WAITING: "pending",
}
Row = dict[str, Any]


def trial_name(number: int) -> str:
    """The run directory name of a trial."""
    return f"trial-{number}"


def flat_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """metrics.json flattened to dotted keys, without the per-layer table (hundreds of keys)."""
    metrics = json.loads(json.dumps(metrics))  # A copy: the caller's dict stays whole.
    if isinstance(metrics.get("pruning"), dict):
        metrics["pruning"].pop("layers", None)
    return flatten(metrics)


def objective_values(study: TuningStudy, metrics: dict[str, Any]) -> list[float] | None:
    """The objectives' values in flattened `metrics`, or None when one is missing."""
    values = []
    for objective in study.objectives:
        value = metrics.get(objective.metric)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return None
        if not math.isfinite(value):
            return None
        values.append(float(value))
    return values


def constraint_value(study: TuningStudy, metrics: dict[str, Any]) -> float | None:
    """`bytes - max_bytes` of the budgeted file (feasible when <= 0), or None without a budget."""
    if study.budget_metric is None:
        return None
    size = metrics.get(study.budget_metric)
    # A file that was not measured cannot be shown to fit.
    return float(size) - study.max_bytes if isinstance(size, (int, float)) else math.inf


def superseded(trials: Sequence[FrozenTrial]) -> set[int]:
    """Numbers of the trials that a later trial resumed."""
    return {t.user_attrs[RESUMES_ATTR] for t in trials if RESUMES_ATTR in t.user_attrs}


def trial_rows(tune_dir: Path, study: TuningStudy, trials: Sequence[FrozenTrial]) -> list[Row]:
    """One row per trial (resumed ones left out), in trial order."""
    resumed = superseded(trials)
    rows = []
    for trial in sorted(trials, key=lambda t: t.number):
        if trial.state == TrialState.FAIL and trial.number in resumed:
            continue
        name = trial_name(trial.number)
        relative = trial.user_attrs.get(RUN_DIR_ATTR, f"runs/{name}")
        row: Row = {
            "name": name,
            "status": STATUS.get(trial.state, trial.state.name.lower()),
            "run_dir": relative,
            "trial.number": trial.number,
            "trial.state": trial.state.name,
        }
        row.update({f"config.{key}": value for key, value in study.fixed.items()})
        values = engine.config_values(study, trial.params)
        row.update({f"config.{key}": value for key, value in values.items()})
        metrics = _run_metrics(tune_dir / relative) if trial.state == TrialState.COMPLETE else None
        if metrics is not None:
            row.update(flat_metrics(metrics))
        else:  # Not on this machine, or damaged since: what the trial told the storage.
            row.update(trial.user_attrs.get(METRICS_ATTR) or {})
        if trial.state == TrialState.COMPLETE:
            row["trial.values"] = list(trial.values or [])
            row["trial.feasible"] = all(value <= 0 for value in trial.constraints.values())
        elif trial.state == TrialState.PRUNED and trial.intermediate_values:
            row["trial.last_epoch"] = max(trial.intermediate_values)
        if trial.state == TrialState.FAIL:
            error_path = tune_dir / relative / "error.txt"
            error = trial.user_attrs.get(ERROR_ATTR)
            if not error and error_path.is_file():
                error = error_path.read_text().strip()
            row["error"] = error or "failed"
        rows.append(row)
    return rows


def pareto_rows(rows: Sequence[Row], directions: Sequence[str]) -> list[Row]:
    """The finished, feasible trials that no other such trial beats in every objective.

    Args:
        rows: Rows from `trial_rows`.
        directions: `maximize` or `minimize` per objective.

    Returns:
        The front, sorted by the first objective, best first; trials with equal values are all
        kept (neither dominates the other).
    """
    signs = [1.0 if direction == "maximize" else -1.0 for direction in directions]
    candidates = [
        (row, [sign * value for sign, value in zip(signs, row["trial.values"], strict=True)])
        for row in rows
        if row.get("status") == "finished"
        and row.get("trial.feasible", True)
        and len(row.get("trial.values") or []) == len(signs)
    ]

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x >= y for x, y in zip(a, b, strict=True)) and a != b

    front = [
        (row, scores)
        for row, scores in candidates
        if not any(dominates(other, scores) for _, other in candidates)
    ]
    return [row for row, scores in sorted(front, key=lambda item: [-s for s in item[1]])]


def _run_metrics(run_dir: Path) -> dict[str, Any] | None:
    try:
        return ownership.read_metrics(run_dir)
    except UserError:
        return None
