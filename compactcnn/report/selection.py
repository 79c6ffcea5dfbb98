"""Choosing among runs: the Pareto front of size vs accuracy, and the best run within budgets.

Pure functions of the rows of results.json; nothing here reads or writes files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from compactcnn.config import EXPORT_FORMATS
from compactcnn.errors import UserError
from compactcnn.report.formatting import as_number, integer, kibibytes, milliseconds
from compactcnn.report.results import Row

# `max_bytes` and `max_latency_ms`, each None when not set; written as-is to best.json.
Budgets = dict[str, Any]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Finds the points not dominated in (smaller size, higher accuracy).

    Args:
        points: (size, accuracy) pairs.

    Returns:
        Indices of the front, ordered by size then by descending accuracy. Identical points
        are all kept: neither dominates the other.
    """
    front = []
    for index, (size, accuracy) in enumerate(points):
        dominated = any(
            other_size <= size
            and other_accuracy >= accuracy
            and (other_size < size or other_accuracy > accuracy)
            for other_size, other_accuracy in points
        )
        if not dominated:
            front.append(index)
    return sorted(front, key=lambda index: (points[index][0], -points[index][1]))


def metric_format(metric: str) -> str:
    """Returns the TFLite format of a `tflite.<format>.<field>` metric.

    Raises:
        UserError: When the metric does not name a TFLite format.
    """
    parts = metric.split(".")
    if len(parts) != 3 or parts[0] != "tflite" or parts[1] not in EXPORT_FORMATS:
        raise UserError(
            f"--metric '{metric}' must be tflite.<format>.<field> with a format of "
            f"{', '.join(EXPORT_FORMATS)}, e.g. tflite.int8.accuracy"
        )
    return parts[1]


def choose_best(
    rows: Sequence[Row],
    metric: str = "tflite.int8.accuracy",
    max_bytes: float | None = None,
    max_latency_ms: float | None = None,
) -> Row:
    """Picks the finished run with the highest `metric` whose file fits the budgets.

    `max_bytes` applies to the metric's format `bytes`, `max_latency_ms` to its `latency_ms`;
    a run missing a budgeted value does not fit. Ties go to the smaller gzip size, then to the
    alphabetically first name, so the choice never depends on row order.

    Args:
        rows: The rows of results.json.
        metric: `tflite.<format>.<field>` to maximize.
        max_bytes: Largest allowed file size in bytes, or None for no limit.
        max_latency_ms: Largest allowed latency per image, or None for no limit.

    Returns:
        The chosen row.

    Raises:
        UserError: When the metric is not a TFLite metric, no run has it, or nothing fits.
    """
    file_format = metric_format(metric)
    prefix = f"tflite.{file_format}."
    measured = [
        row
        for row in rows
        if row.get("status") == "finished" and as_number(row.get(metric)) is not None
    ]
    if not any(row.get("status") == "finished" for row in rows):
        raise UserError("no run of the sweep has finished; read the runs' error.txt and re-run it")
    if not measured:
        raise UserError(
            f"no finished run has '{metric}'; check that '{file_format}' is in quantize.formats "
            "or pick another --metric"
        )
    budgets = {"max_bytes": max_bytes, "max_latency_ms": max_latency_ms}
    fitting = [row for row in measured if fits(row, prefix, budgets)]
    if not fitting:
        # Say how far off the budget is, so the user knows which limit to relax and by how much.
        smallest = min(_values(measured, prefix + "bytes"), default=None)
        fastest = min(_values(measured, prefix + "latency_ms"), default=None)
        limits = ", ".join(
            f"{field.removeprefix('max_')} <= {limit}"
            for field, limit in budgets.items()
            if limit is not None
        )
        raise UserError(
            f"no {file_format} model fits the budget ({limits}): the smallest is "
            f"{integer(smallest)} bytes, the fastest {milliseconds(fastest)}; relax a budget"
        )

    def rank(row: Row) -> tuple[float, float, str]:
        gzip_bytes = as_number(row.get(prefix + "gzip_bytes"))
        return (-row[metric], math.inf if gzip_bytes is None else gzip_bytes, row["name"])

    return min(fitting, key=rank)


def fits(row: Row, prefix: str, budgets: Budgets) -> bool:
    """True when the file under `prefix` has every budgeted value and each is within its limit.

    Args:
        row: A row of results.json.
        prefix: `tflite.<format>.`, the file the budgets apply to.
        budgets: `max_bytes` and `max_latency_ms`, None when not set.
    """
    for field, limit in (
        ("bytes", budgets.get("max_bytes")),
        ("latency_ms", budgets.get("max_latency_ms")),
    ):
        value = as_number(row.get(prefix + field))
        if limit is not None and (value is None or value > limit):
            return False
    return True


def budget_text(budgets: Budgets) -> str:
    """The budgets as a reader states them, e.g. `size ≤ 97.7 KiB, latency ≤ 3 ms`; '' if none."""
    parts = []
    if budgets.get("max_bytes") is not None:
        parts.append(f"size ≤ {kibibytes(budgets['max_bytes'])}")
    if budgets.get("max_latency_ms") is not None:
        parts.append(f"latency ≤ {milliseconds(budgets['max_latency_ms'])}")
    return ", ".join(parts)


def _values(rows: Sequence[Row], key: str) -> list[float]:
    """The usable numbers under `key`, skipping rows where it is missing or not finite."""
    return [value for value in (as_number(row.get(key)) for row in rows) if value is not None]
