"""The best model: why it was chosen, and the best/ folder with its file, summary and card.

`choose_best` (in `selection`) picks the run; this module explains the choice in the report
and ships the chosen file as `best/model.tflite` with `best.json` and `MODEL_CARD.md`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from compactcnn import files
from compactcnn.errors import UserError
from compactcnn.report.formatting import (
    as_number,
    config_label,
    config_value,
    kibibytes,
    metric_label,
    milliseconds,
    ratio,
)
from compactcnn.report.model_card import model_card
from compactcnn.report.pieces import Callout, Paragraph, Piece
from compactcnn.report.results import Row, finished, run_dir, varying_keys
from compactcnn.report.selection import Budgets, budget_text, choose_best, fits, metric_format
from compactcnn.report.tables import metric_formatter

BEST_DIR = "best"
BEST_FILE = "model.tflite"


def best_pieces(rows: Sequence[Row], best: Row, metric: str, budgets: Budgets) -> list[Piece]:
    """The chosen model in one line, then why it was chosen over the others.

    Args:
        rows: The rows of results.json.
        best: The chosen row.
        metric: The `tflite.<format>.<field>` it was chosen by.
        budgets: The budgets it was chosen within.
    """
    file_format = metric_format(metric)
    prefix = f"tflite.{file_format}."
    label = metric_label(metric)
    value = metric_formatter(metric)
    measured = [row for row in finished(rows) if as_number(row.get(metric)) is not None]
    fitting = [row for row in measured if fits(row, prefix, budgets)]
    budget = budget_text(budgets)
    if budget:
        why = (
            f"It has the highest {label} of the {len(fitting)} of {len(measured)} measured runs "
            f"whose {file_format} file fits the budget ({budget})"
        )
    else:
        why = (
            f"It has the highest {label} of the {len(measured)} measured runs; no size or "
            "latency budget was set (`--max-bytes`, `--max-latency-ms` add one)"
        )
    others = [row for row in fitting if row["name"] != best["name"]]
    if others:
        runner_up = choose_best(others, metric)
        why += f". The runner-up, {runner_up['name']}, has {value(runner_up[metric])}"
        if runner_up[metric] == best[metric]:
            why += " too; the tie goes to the smaller gzip size"
    settings = ", ".join(
        f"{config_label(key[len('config.') :])} {config_value(best.get(key))}"
        for key in varying_keys(rows)
    )
    summary = (
        f"**{best['name']}**"
        + (f" ({settings})" if settings else "")
        + f", {file_format} file: {value(best[metric])} {label}, "
        f"{kibibytes(best.get(prefix + 'bytes'))} "
        f"({kibibytes(best.get(prefix + 'gzip_bytes'))} gzipped; "
        f"{ratio(best.get(prefix + 'compression_gzip'))} smaller than the dense float32 file, "
        f"both gzipped), {milliseconds(best.get(prefix + 'latency_ms'))} per image."
    )
    return [Callout(summary), Paragraph(why + ".")]


def _tflite_source(sweep_dir: Path, row: Row, file_format: str) -> Path:
    """The run's file of `file_format`: where results.json says, else where runs write it."""
    folder = run_dir(sweep_dir, row)
    recorded = row.get(f"tflite.{file_format}.path")
    candidates = []
    if isinstance(recorded, str):
        candidates += [Path(recorded), folder / recorded]
    candidates.append(folder / "tflite" / f"{file_format}.tflite")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise UserError(
        f"the best model file of run '{row['name']}' ({candidates[-1]}) is missing; "
        "re-run that run or pick budgets that exclude it"
    )


def write_best(sweep_dir: Path, row: Row, metric: str, budgets: Budgets) -> list[Piece]:
    """Replaces `sweep_dir/best/` with the chosen file, best.json and MODEL_CARD.md.

    Args:
        sweep_dir: The sweep directory.
        row: The chosen row.
        metric: The `tflite.<format>.<field>` it was chosen by; the file is of that format.
        budgets: The budgets it was chosen within, recorded in best.json and the card.

    Returns:
        A paragraph telling the reader where the files are.

    Raises:
        UserError: When the chosen run's file is missing.
    """
    file_format = metric_format(metric)
    prefix = f"tflite.{file_format}."
    source = _tflite_source(sweep_dir, row, file_format)
    best_dir = sweep_dir / BEST_DIR
    with files.atomic_path(best_dir) as temporary:
        temporary.mkdir()
        shutil.copyfile(source, temporary / BEST_FILE)
        summary = {
            "name": row["name"],
            "run_dir": row.get("run_dir", f"runs/{row['name']}"),
            "metric": metric,
            "value": row[metric],
            "format": file_format,
            "file": BEST_FILE,
            "source": str(source),
            "bytes": row.get(prefix + "bytes"),
            "gzip_bytes": row.get(prefix + "gzip_bytes"),
            "latency_ms": row.get(prefix + "latency_ms"),
            "accuracy": row.get(prefix + "accuracy"),
            "budgets": budgets,
            "config": {k[len("config.") :]: v for k, v in row.items() if k.startswith("config.")},
        }
        (temporary / "best.json").write_text(json.dumps(summary, indent=2) + "\n")
        (temporary / "MODEL_CARD.md").write_text(model_card(row, metric, budgets, BEST_FILE))
        # Replace the whole folder: no file of an earlier choice lingers beside the new one.
        shutil.rmtree(best_dir, ignore_errors=True)
    return [Paragraph(f"Copied to `{BEST_DIR}/{BEST_FILE}`, with `best.json` and `MODEL_CARD.md`.")]
