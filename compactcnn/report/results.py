"""Reading a sweep folder: results.json, and each finished run's CSV files and metrics.json.

A row is one run of results.json: `name`, `status`, `run_dir`, `config.<key>` for every setting
the study overrides and the run's flattened metrics (`tflite.<format>.<field>`, `train.seconds`,
...). The helpers here answer questions about rows that several parts of the report ask.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compactcnn import ownership
from compactcnn.config import EXPORT_FORMATS
from compactcnn.errors import UserError
from compactcnn.report.formatting import as_number

Row = dict[str, Any]
# The rows of a numeric CSV file (history.csv, pruning_schedule.csv), column name -> value.
Records = list[dict[str, float | None]]


def load_results(sweep_dir: str | os.PathLike) -> list[Row]:
    """Reads `results.json` of a sweep directory.

    Args:
        sweep_dir: A directory written by `compactcnn.sweep.run_sweep`.

    Returns:
        The rows, one per run, in the study's order.

    Raises:
        UserError: When the file is missing or malformed.
    """
    path = Path(sweep_dir) / "results.json"
    if not path.is_file():
        raise UserError(
            f"'{path}' not found; run `compactcnn sweep STUDY.yaml --out {sweep_dir}` "
            f"(or `compactcnn tune STUDY.yaml --out {sweep_dir}`) first"
        )
    try:
        rows = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"'{path}' is not valid JSON ({error.msg}); re-run the sweep") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "name" in r for r in rows):
        raise UserError(f"'{path}' must be a list of runs with a 'name'; re-run the sweep")
    return rows


def read_csv(path: Path) -> Records:
    """Reads a numeric CSV; blank or non-numeric cells become None, a missing file no rows."""
    if not path.is_file():
        return []

    def parse(text: str | None) -> float | None:
        try:
            return as_number(float(text)) if text not in (None, "") else None
        except ValueError:
            return None

    with path.open(newline="") as handle:
        return [
            {key: parse(value) for key, value in line.items()} for line in csv.DictReader(handle)
        ]


def run_dir(sweep_dir: Path, row: Row) -> Path:
    """The run's folder; rows written before `run_dir` was recorded sit under runs/<name>."""
    return sweep_dir / row.get("run_dir", f"runs/{row['name']}")


def finished(rows: Sequence[Row]) -> list[Row]:
    """The runs that finished; only they have metrics."""
    return [row for row in rows if row.get("status") == "finished"]


def formats(rows: Sequence[Row]) -> list[str]:
    """The TFLite formats measured in any of the rows, in the order of `EXPORT_FORMATS`."""
    present = {key.split(".")[1] for row in rows for key in row if key.startswith("tflite.")}
    return [name for name in EXPORT_FORMATS if name in present]


def file_points(rows: Sequence[Row]) -> list[tuple[float, float, str, str]]:
    """(gzip bytes, accuracy, run name, format) of every measured file; chart and table share it."""
    points = []
    for row in finished(rows):
        for file_format in formats([row]):
            size = as_number(row.get(f"tflite.{file_format}.gzip_bytes"))
            accuracy = as_number(row.get(f"tflite.{file_format}.accuracy"))
            if size is not None and accuracy is not None:
                points.append((size, accuracy, row["name"], file_format))
    return points


def precision(row: Row) -> str | None:
    """The run's training precision, from its metrics or else from its overridden config."""
    for key in ("train.precision", "run.precision", "config.train.precision"):
        if isinstance(row.get(key), str):
            return row[key]
    return None


def varying_keys(rows: Sequence[Row]) -> list[str]:
    """The `config.<key>` columns whose value differs between runs: the study's grid keys."""
    keys = dict.fromkeys(key for row in rows for key in row if key.startswith("config."))
    return [
        key for key in keys if len({json.dumps(row.get(key), sort_keys=True) for row in rows}) > 1
    ]


@dataclass(frozen=True)
class RunFiles:
    """What the charts read from the folders of the finished runs, by run name.

    Attributes:
        histories: The rows of each run's history.csv (one per epoch).
        schedules: The rows of each run's pruning_schedule.csv (target sparsity per step).
        layers: Per-layer sparsity from each run's metrics.json, for runs that were pruned.
    """

    histories: dict[str, Records]
    schedules: dict[str, Records]
    layers: dict[str, dict[str, dict[str, Any]]]


def load_run_files(sweep_dir: Path, rows: Sequence[Row]) -> RunFiles:
    """Reads the per-run files of every finished run; missing files read as empty."""
    histories, schedules, layers = {}, {}, {}
    for row in finished(rows):
        folder = run_dir(sweep_dir, row)
        histories[row["name"]] = read_csv(folder / "history.csv")
        schedules[row["name"]] = read_csv(folder / "pruning_schedule.csv")
        try:
            metrics = ownership.read_metrics(folder) or {}
        except UserError:
            metrics = {}  # Damaged since the sweep read it: the table in results.json stands.
        # results.json leaves the per-layer table out (hundreds of columns); it is only here.
        pruning = metrics.get("pruning") or {}
        if isinstance(pruning.get("layers"), dict) and pruning["layers"]:
            layers[row["name"]] = pruning["layers"]
    return RunFiles(histories, schedules, layers)
