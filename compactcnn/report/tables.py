"""The report's tables: one row per run, one row per TFLite file, and the Pareto front.

Columns are (header, field, formatter) triples, so a column is added in one place and every
cell of it is formatted alike; a missing value shows as a dash.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from compactcnn.report.formatting import (
    MISSING,
    config_label,
    config_value,
    integer,
    kibibytes,
    metric_label,
    milliseconds,
    percent,
    ratio,
    seconds,
    sparsity,
    text,
)
from compactcnn.report.pieces import Table
from compactcnn.report.results import Row, file_points, finished, formats, varying_keys
from compactcnn.report.selection import pareto_front

Column = tuple[str, str, Callable[[Any], str]]

# Run fields are dotted metric keys of the row.
RUN_COLUMNS: tuple[Column, ...] = (
    ("Keras accuracy", "keras.test_accuracy", percent),
    ("sparsity", "pruning.overall_sparsity", sparsity),
    ("parameters", "keras.params", integer),
    ("training time", "train.seconds", seconds),
    ("images/s", "train.images_per_second", integer),
)
# File fields sit under tflite.<format>.
FILE_COLUMNS: tuple[Column, ...] = (
    ("accuracy", "accuracy", percent),
    ("agreement with Keras", "agreement", percent),
    ("zeros", "zeros_fraction", sparsity),
    ("distinct values", "max_distinct_values", integer),  # int8: most of one scale
    ("size", "bytes", kibibytes),
    ("gzip size", "gzip_bytes", kibibytes),
    ("compression", "compression_bytes", ratio),
    ("compression (gzip)", "compression_gzip", ratio),
    ("latency", "latency_ms", milliseconds),
)


def metric_formatter(metric: str) -> Callable[[Any], str]:
    """The formatter of a `tflite.<format>.<field>` metric: that of its file column."""
    field = metric.rsplit(".", 1)[-1]
    return next((formatter for _, name, formatter in FILE_COLUMNS if name == field), text)


def _short_error(row: Row) -> str:
    """The last line of a failed run's error that says what went wrong, cut to fit a cell."""
    lines = [line for line in str(row.get("error") or "").splitlines() if line.strip()]
    # The sweep ends the error with where the full log is; the line before says what failed.
    if len(lines) > 1 and lines[-1].startswith("exit status"):
        lines.pop()
    return lines[-1][:120] if lines else MISSING


def runs_table(rows: Sequence[Row], metric: str) -> Table:
    """One row per run: its status, the settings the study varies, and its main numbers.

    Args:
        rows: The rows of results.json.
        metric: The metric the best model maximizes; it gets a column after Keras accuracy.
    """
    metric_column = (metric_label(metric), metric, metric_formatter(metric))
    columns = [*RUN_COLUMNS[:1], metric_column, *RUN_COLUMNS[1:]]
    settings = varying_keys(rows)
    table = []
    for row in rows:
        status = row.get("status", MISSING)
        if status == "failed":
            status = f"failed: {_short_error(row)}"
        table.append(
            [
                row["name"],
                status,
                *[config_value(row.get(key)) for key in settings],
                *[formatter(row.get(key)) for _, key, formatter in columns],
            ]
        )
    headers = [
        "run",
        "status",
        *[config_label(key[len("config.") :]) for key in settings],
        *[header for header, _, _ in columns],
    ]
    return Table(headers, table)


def files_table(rows: Sequence[Row]) -> Table:
    """One row per TFLite file of every finished run; folded in HTML when long."""
    table = []
    for row in finished(rows):
        for file_format in formats([row]):
            prefix = f"tflite.{file_format}."
            cells = [formatter(row.get(prefix + field)) for _, field, formatter in FILE_COLUMNS]
            table.append([row["name"], file_format, *cells])
    headers = ["run", "format", *[header for header, _, _ in FILE_COLUMNS]]
    return Table(headers, table, fold=True)


def pareto_table(rows: Sequence[Row]) -> Table:
    """The files on the Pareto front of gzip size vs accuracy, numbered as in the chart."""
    files = file_points(rows)
    front = pareto_front([(size, accuracy) for size, accuracy, _, _ in files])
    table = [
        [str(order), files[i][2], files[i][3], percent(files[i][1]), kibibytes(files[i][0])]
        for order, i in enumerate(front, start=1)
    ]
    return Table(["#", "run", "format", "accuracy", "gzip size"], table)
