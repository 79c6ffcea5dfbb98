"""The model card of the chosen model: what it is, how well it does, and what not to use it for.

The text is `templates/model_card.md`, shipped as package data, with `{placeholder}` fields
filled by `str.format_map`; every value is formatted first, so a missing one reads as a dash.
Editing the wording means editing the template only.
"""

from __future__ import annotations

from importlib import resources

from compactcnn.report.formatting import (
    integer,
    metric_label,
    milliseconds,
    percent,
    ratio,
    text,
)
from compactcnn.report.pieces import Table
from compactcnn.report.render import render_markdown
from compactcnn.report.results import Row, precision
from compactcnn.report.selection import Budgets, budget_text, metric_format

TEMPLATE = "model_card.md"


def model_card(row: Row, metric: str, budgets: Budgets, file_name: str) -> str:
    """Writes the model card of one run's file as Markdown.

    Args:
        row: The chosen run's row of results.json.
        metric: The `tflite.<format>.<field>` it was chosen by; the card describes that format.
        budgets: The budgets it was chosen within.
        file_name: The name the file is shipped under, beside the card.

    Returns:
        The card's Markdown text.
    """
    file_format = metric_format(metric)
    prefix = f"tflite.{file_format}."
    performance = Table(
        [
            "accuracy (this file)",
            "Keras accuracy",
            "agreement with Keras",
            "bytes",
            "gzip bytes",
            "compression vs dense float32",
            "latency (batch 1)",
            "threads",
        ],
        [
            [
                percent(row.get(prefix + "accuracy")),
                percent(row.get("keras.test_accuracy")),
                percent(row.get(prefix + "agreement")),
                integer(row.get(prefix + "bytes")),
                integer(row.get(prefix + "gzip_bytes")),
                ratio(row.get(prefix + "compression_bytes")),
                milliseconds(row.get(prefix + "latency_ms")),
                integer(row.get(prefix + "threads")),
            ]
        ],
    )
    fields = {
        "name": row["name"],
        "model": text(row.get("run.model")),
        "params": integer(row.get("keras.params")),
        "precision": text(precision(row)),
        "epochs": integer(row.get("train.epochs")),
        "data": text(row.get("run.data") or row.get("config.data.name")),
        "classes": integer(row.get("run.num_classes")),
        "schedule": text(row.get("pruning.schedule")),
        "target_sparsity": percent(row.get("pruning.target_sparsity"), 1),
        "overall_sparsity": percent(row.get("pruning.overall_sparsity"), 1),
        "zeros": percent(row.get(prefix + "zeros_fraction"), 1),
        "file_format": file_format,
        "file_name": file_name,
        "input_dtype": text(row.get(prefix + "input_dtype")),
        "performance": render_markdown([performance]),
        "metric_label": metric_label(metric),
        "metric": metric,
        "budgets": budget_text(budgets) or "none",
    }
    return _template().format_map(fields)


def _template() -> str:
    # Read through importlib.resources so it is found in a wheel or zip as well as in a checkout.
    folder = resources.files("compactcnn.report").joinpath("templates")
    return folder.joinpath(TEMPLATE).read_text(encoding="utf-8")
