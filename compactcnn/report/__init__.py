"""Sweep results -> report.md, a self-contained report.html, charts and the best model.

The report reads `DIR/results.json` (written by `compactcnn.sweep`) and, for the curves, each
run's history.csv, pruning_schedule.csv and metrics.json. A tuning folder (`compactcnn tune`)
gives the same rows from its Optuna storage instead, plus a Tuning section. It is built once as
a list of typed pieces (`Heading`, `Paragraph`, `Callout`, `Table`, `Figure`) and rendered twice,
as Markdown and as HTML with the PNG charts embedded as data URIs, so the two never disagree.

This module is the package's public face; the modules behind it are:

- `results`: reading results.json and the runs' files.
- `selection`: the Pareto front and the best run within budgets.
- `comparisons`: pairs of runs that differ in one setting.
- `charts` (with `plotting`, `size_charts`, `training_charts`): the charts.
- `tables`: the runs, files and Pareto tables.
- `best`, `model_card`: the best/ folder and its model card.
- `layer_targets`: the best run's per-layer target vs measured sparsity.
- `pieces`, `render`: the report's pieces, rendered as Markdown and HTML.
- `document`: the sections in order, and `write_report`.
- `tuning`, `tuning_charts`: a tuning folder's rows, its trials' Pareto front and Optuna's charts
  (imported only for tuning folders: they load Optuna).
"""

from compactcnn.report import comparisons, results
from compactcnn.report.comparisons import COMPARISONS, Comparison, comparison_pairs
from compactcnn.report.document import write_report
from compactcnn.report.formatting import config_label, metric_label
from compactcnn.report.pieces import Callout, Figure, Heading, Paragraph, Table
from compactcnn.report.plotting import figure_has_data
from compactcnn.report.results import load_results
from compactcnn.report.selection import choose_best, pareto_front
from compactcnn.report.size_charts import plot_accuracy_vs_size, plot_size_by_format
from compactcnn.report.training_charts import (
    plot_layer_sparsity,
    plot_sparsity_schedule,
    plot_training_curves,
    plot_training_time,
)

# Not part of the API: the tests reach for two helpers under their names in the old module.
_comparison_blocks = comparisons.comparison_pieces
_read_csv = results.read_csv

__all__ = [
    "COMPARISONS",
    "Callout",
    "Comparison",
    "Figure",
    "Heading",
    "Paragraph",
    "Table",
    "choose_best",
    "comparison_pairs",
    "config_label",
    "figure_has_data",
    "load_results",
    "metric_label",
    "pareto_front",
    "plot_accuracy_vs_size",
    "plot_layer_sparsity",
    "plot_size_by_format",
    "plot_sparsity_schedule",
    "plot_training_curves",
    "plot_training_time",
    "write_report",
]
