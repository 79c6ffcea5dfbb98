"""Sweep results -> report.md, a self-contained report.html, charts and the best model.

The report reads `DIR/results.json` (written by `compactcnn.sweep`) and, for the curves, each
run's history.csv, pruning_schedule.csv and metrics.json. It is built once as a list of blocks
(heading, paragraph, table, image) and rendered twice, as Markdown and as HTML with the PNG
charts embedded as data URIs, so the two never disagree.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, median
from typing import Any

import yaml
from matplotlib.figure import Figure
from matplotlib.ticker import (
    FuncFormatter,
    LogLocator,
    MaxNLocator,
    NullFormatter,
    PercentFormatter,
)

from compactcnn.config import EXPORT_FORMATS, PRECISIONS
from compactcnn.errors import UserError

MISSING = "—"
CHARTS_DIR = "charts"
BEST_DIR = "best"
BEST_FILE = "model.tflite"

# ("h1"|"h2"|"h3"|"p"|"best", text) | ("image", relative_path, alt)
# | ("table", headers, rows) | ("table", headers, rows, "fold"): folded in HTML when long.
Block = tuple


# --------------------------------------------------------------------------- value formatting


def _number(value: Any) -> float | None:
    """Returns `value` as a finite float, or None for anything that is not a usable number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _percent(value: Any, digits: int = 2) -> str:
    number = _number(value)
    return MISSING if number is None else f"{100 * number:.{digits}f}%"


def _kibibytes(value: Any) -> str:
    number = _number(value)
    return MISSING if number is None else f"{number / 1024:,.1f} KiB"


def _ratio(value: Any) -> str:
    number = _number(value)
    return MISSING if number is None else f"{number:.2f}×"


def _milliseconds(value: Any) -> str:
    number = _number(value)
    return MISSING if number is None else f"{number:.3g} ms"


def _integer(value: Any) -> str:
    number = _number(value)
    return MISSING if number is None else f"{number:,.0f}"


def _text(value: Any) -> str:
    if value is None or isinstance(value, (dict, list)) or _is_nan(value):
        return MISSING
    return str(value)


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _signed(value: float, kind: str) -> str:
    """A delta: accuracy-like values in percentage points, sizes and times relative (%)."""
    return f"{100 * value:+.2f} pp" if kind == "points" else f"{100 * value:+.1f}%"


def metric_label(metric: str) -> str:
    """A reader's name for a metric key: `tflite.int8.accuracy` -> `int8 accuracy`."""
    parts = metric.split(".")
    if len(parts) == 3 and parts[0] == "tflite":
        return f"{parts[1]} {parts[2].replace('_', ' ')}"
    return {"keras.test_accuracy": "Keras accuracy"}.get(metric, metric)


def config_label(key: str) -> str:
    """A column name for a config key: `model.name` -> `model`, `data.augment` -> `augment`."""
    section, _, leaf = key.rpartition(".")
    return (section or leaf) if leaf == "name" else leaf.replace("_", " ")


def _varying_keys(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The `config.<key>` columns whose value differs between runs: the study's grid keys."""
    keys = dict.fromkeys(key for row in rows for key in row if key.startswith("config."))
    return [
        key for key in keys if len({json.dumps(row.get(key), sort_keys=True) for row in rows}) > 1
    ]


# --------------------------------------------------------------------------- pure selection logic


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


def _sizes(rows: Sequence[dict[str, Any]], key: str) -> list[float]:
    return [value for value in (_number(row.get(key)) for row in rows) if value is not None]


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
    rows: Sequence[dict[str, Any]],
    metric: str = "tflite.int8.accuracy",
    max_bytes: float | None = None,
    max_latency_ms: float | None = None,
) -> dict[str, Any]:
    """Picks the finished run with the highest `metric` whose file fits the budgets.

    `max_bytes` applies to the metric's format `bytes`, `max_latency_ms` to its `latency_ms`;
    a run missing a budgeted value does not fit. Ties go to the smaller gzip size, then to the
    alphabetically first name, so the choice never depends on row order.

    Raises:
        UserError: When the metric is not a TFLite metric, no run has it, or nothing fits.
    """
    file_format = metric_format(metric)
    prefix = f"tflite.{file_format}."
    measured = [
        row
        for row in rows
        if row.get("status") == "finished" and _number(row.get(metric)) is not None
    ]
    if not any(row.get("status") == "finished" for row in rows):
        raise UserError("no run of the sweep has finished; read the runs' error.txt and re-run it")
    if not measured:
        raise UserError(
            f"no finished run has '{metric}'; check that '{file_format}' is in quantize.formats "
            "or pick another --metric"
        )
    budgets = {"max_bytes": max_bytes, "max_latency_ms": max_latency_ms}
    fitting = [row for row in measured if _fits(row, prefix, budgets)]
    if not fitting:
        smallest = min(_sizes(measured, prefix + "bytes"), default=None)
        fastest = min(_sizes(measured, prefix + "latency_ms"), default=None)
        limits = ", ".join(
            f"{field.removeprefix('max_')} <= {limit}"
            for field, limit in budgets.items()
            if limit is not None
        )
        raise UserError(
            f"no {file_format} model fits the budget ({limits}): the smallest is "
            f"{_integer(smallest)} bytes, the fastest {_milliseconds(fastest)}; relax a budget"
        )

    def rank(row: dict[str, Any]) -> tuple[float, float, str]:
        gzip_bytes = _number(row.get(prefix + "gzip_bytes"))
        return (-row[metric], math.inf if gzip_bytes is None else gzip_bytes, row["name"])

    return min(fitting, key=rank)


def _fits(row: dict[str, Any], prefix: str, budgets: dict[str, Any]) -> bool:
    """True when the file under `prefix` has every budgeted value and each is within its limit."""
    for field, limit in (
        ("bytes", budgets.get("max_bytes")),
        ("latency_ms", budgets.get("max_latency_ms")),
    ):
        value = _number(row.get(prefix + field))
        if limit is not None and (value is None or value > limit):
            return False
    return True


@dataclass(frozen=True)
class Comparison:
    """Runs that differ only in `key`: `baseline` against each of `alternatives`.

    With `baseline` None, the values present are sorted naturally and the first is the baseline.
    """

    title: str
    key: str
    baseline: Any = None
    alternatives: tuple = ()
    focus: str = ""  # A second column worth a sentence, e.g. training time for precision.


COMPARISONS = (
    Comparison(
        "Polynomial vs constant pruning schedule", "prune.schedule", "constant", ("polynomial",)
    ),
    Comparison("Sparsity targets", "prune.final_sparsity", focus="gzip"),
    Comparison("Augmentation on vs off", "data.augment", False, (True,)),
    Comparison(
        "Mixed vs full precision",
        "train.precision",
        "float32",
        tuple(p for p in PRECISIONS if p != "float32"),
        focus="train.seconds",
    ),
    Comparison("Architecture", "model.name", focus="latency"),
)


def _natural_key(value: Any) -> tuple:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value)
    return (1, [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(value))])


def comparison_pairs(
    rows: Sequence[dict[str, Any]], comparison: Comparison
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Pairs of finished runs equal in every overridden config key except `comparison.key`.

    Returns:
        (baseline run, alternative run) pairs, in row order.
    """
    column = f"config.{comparison.key}"
    finished = [row for row in rows if row.get("status") == "finished" and column in row]
    baseline, alternatives = comparison.baseline, comparison.alternatives
    if baseline is None:
        values = sorted({json.dumps(row[column]) for row in finished})
        ordered = sorted((json.loads(value) for value in values), key=_natural_key)
        if len(ordered) < 2:
            return []
        baseline, alternatives = ordered[0], tuple(ordered[1:])

    def others(row: dict[str, Any]) -> str:
        rest = {k: v for k, v in row.items() if k.startswith("config.") and k != column}
        return json.dumps(rest, sort_keys=True)

    pairs = []
    for row in finished:
        if row[column] != baseline:
            continue
        for other in finished:
            if other[column] in alternatives and others(other) == others(row):
                pairs.append((row, other))
    return pairs


def _delta(before: Any, after: Any, kind: str) -> float | None:
    before, after = _number(before), _number(after)
    if before is None or after is None:
        return None
    if kind == "points":
        return after - before
    return None if before == 0 else after / before - 1


def _effect_sentence(change: str, deltas: list[float], kind: str, measured: str) -> str:
    """One sentence on the deltas of one column: whether their signs agree across pairs."""
    if not deltas:
        return ""
    if len(deltas) == 1:
        return (
            f"One pair only, a single observation: {change} changed {measured} by "
            f"{_signed(deltas[0], kind)}."
        )
    mean_delta = _signed(mean(deltas), kind)
    if all(delta > 0 for delta in deltas) or all(delta < 0 for delta in deltas):
        direction = "higher" if deltas[0] > 0 else "lower"
        pairs = "both pairs" if len(deltas) == 2 else f"all {len(deltas)} pairs"
        return f"In {pairs}, {change} gave {direction} {measured} (mean {mean_delta})."
    ups = sum(delta > 0 for delta in deltas)
    return (
        f"No consistent effect of {change} on {measured}: higher in {ups} of {len(deltas)} "
        f"pairs (mean {mean_delta})."
    )


# --------------------------------------------------------------------------- charts


def figure_has_data(figure: Figure) -> bool:
    """True when every axes of the figure holds a line, bar or scatter with data."""

    def axes_has_data(axes: Any) -> bool:
        lines = any(len(line.get_xdata()) for line in axes.lines)
        collections = any(len(collection.get_offsets()) for collection in axes.collections)
        return lines or collections or bool(axes.patches)

    return bool(figure.axes) and all(axes_has_data(axes) for axes in figure.axes)


def _finished(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row for row in rows if row.get("status") == "finished"]


def _formats(rows: Sequence[dict[str, Any]]) -> list[str]:
    present = {key.split(".")[1] for row in rows for key in row if key.startswith("tflite.")}
    return [name for name in EXPORT_FORMATS if name in present]


def _legend(axes: Any, count: int, **options: Any) -> None:
    # Many or long entries would cover the data, so such legends go beside the plot.
    _, labels = axes.get_legend_handles_labels()
    if max((len(label) for label in labels), default=0) > 40:
        # Long labels beside the plot would squeeze it; below it they have the full width.
        axes.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(0, -0.12), **options)
    elif count > 6:
        axes.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0), **options)
    else:
        axes.legend(fontsize="small", **options)


# Fractions are plotted as they are and labelled as %; sizes are plotted in KiB so the tick
# positions are round numbers of KiB, as in the tables.
PERCENT_AXIS = PercentFormatter(xmax=1.0)
KIB = 1024

# Runs that land on the same values (e.g. two schedules reaching the same sparsity) would hide
# each other's lines; a different dash and marker per run keeps every run visible.
LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "v", "D", "x")


def _file_points(rows: Sequence[dict[str, Any]]) -> list[tuple[float, float, str, str]]:
    """(gzip bytes, accuracy, run name, format) of every measured file; chart and table share it."""
    points = []
    for row in _finished(rows):
        for file_format in _formats([row]):
            size = _number(row.get(f"tflite.{file_format}.gzip_bytes"))
            accuracy = _number(row.get(f"tflite.{file_format}.accuracy"))
            if size is not None and accuracy is not None:
                points.append((size, accuracy, row["name"], file_format))
    return points


def plot_accuracy_vs_size(rows: Sequence[dict[str, Any]]) -> Figure | None:
    """Accuracy against gzip size of every TFLite file, with the Pareto front numbered.

    The numbers match the rows of the report's Pareto table; run names would not fit.
    """
    files = _file_points(rows)
    if not files:
        return None
    points = [(size / KIB, accuracy) for size, accuracy, _, _ in files]
    figure = Figure(figsize=(9, 5), layout="constrained")
    axes = figure.add_subplot()
    for file_format in _formats(rows):
        chosen = [
            point for point, file in zip(points, files, strict=True) if file[3] == file_format
        ]
        if chosen:
            axes.scatter(*zip(*chosen, strict=True), label=file_format, alpha=0.8, s=40)
    front = pareto_front(points)
    axes.plot(
        [points[i][0] for i in front],
        [points[i][1] for i in front],
        "k--",
        drawstyle="steps-post",
        marker="o",
        fillstyle="none",
        markersize=12,
        label="Pareto front (numbered as in the table)",
    )
    for order, index in enumerate(front, start=1):
        axes.annotate(
            str(order),
            points[index],
            fontsize="small",
            fontweight="bold",
            xytext=(7, 5),
            textcoords="offset points",
        )
    sizes = [size for size, _ in points]
    if max(sizes) > 10 * min(sizes):
        axes.set_xscale("log")
        # Plain numbers at 1-2-5 steps: readers compare "200 KiB", not "10^2".
        axes.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
        axes.xaxis.set_minor_formatter(NullFormatter())
    axes.yaxis.set_major_formatter(PERCENT_AXIS)
    axes.margins(x=0.15, y=0.15)
    axes.set_xlabel("gzip size (KiB)")
    axes.set_ylabel("test accuracy")
    axes.set_title("Accuracy vs compressed size: up and to the left is better")
    axes.legend(fontsize="small", loc="best")
    return figure


def _read_csv(path: Path) -> list[dict[str, float | None]]:
    """Reads a numeric CSV; blank or non-numeric cells become None."""
    if not path.is_file():
        return []

    def parse(text: str | None) -> float | None:
        try:
            return _number(float(text)) if text not in (None, "") else None
        except ValueError:
            return None

    with path.open(newline="") as handle:
        return [
            {key: parse(value) for key, value in line.items()} for line in csv.DictReader(handle)
        ]


def _series(records: list[dict[str, float | None]], x: str, y: str) -> tuple[list, list]:
    pairs = [(r.get(x), r.get(y)) for r in records if r.get(x) is not None and r.get(y) is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_training_curves(histories: dict[str, list[dict[str, float | None]]]) -> Figure | None:
    """Loss and accuracy per epoch for each run: solid training, dashed validation."""
    figure = Figure(figsize=(11, 4.5), layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    plotted = validated = 0
    for index, (name, records) in enumerate(histories.items()):
        color = f"C{index % 10}"
        marker = MARKERS[index % len(MARKERS)]
        for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
            # history.csv counts epochs from 0; readers count from 1.
            epochs, values = _series(records, "epoch", metric)
            if epochs:
                axes.plot([e + 1 for e in epochs], values, color=color, marker=marker, label=name)
                plotted += axes is loss_axes
            epochs, values = _series(records, "epoch", f"val_{metric}")
            if epochs:
                axes.plot([e + 1 for e in epochs], values, color=color, linestyle="--")
                validated += 1
    if not plotted:
        return None
    suffix = " (solid: training, dashed: validation)" if validated else " (training)"
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        axes.set_xlabel("epoch")
        axes.set_ylabel(metric)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_title(metric.capitalize() + suffix)
    accuracy_axes.yaxis.set_major_formatter(PERCENT_AXIS)
    _legend(accuracy_axes, len(histories))
    return figure


def _group_label(names: Sequence[str]) -> str:
    """Names of runs drawn as one line: all of them when few, else the first and a count."""
    if len(names) <= 2:
        return ", ".join(names)
    return f"{names[0]} and {len(names) - 1} more runs"


def _group_labeller(rows: Sequence[dict[str, Any]]) -> Callable[[Sequence[str]], str]:
    """Labels a group of runs by the varied settings they share, e.g. `schedule constant (7 runs)`.

    One run keeps its name; a group with no shared varied setting falls back to `_group_label`.
    """
    by_name = {row["name"]: row for row in rows}
    varying = _varying_keys(rows)

    def label(names: Sequence[str]) -> str:
        if len(names) == 1:
            return names[0]
        group = [by_name[name] for name in names if name in by_name]
        shared = [
            f"{config_label(key[len('config.') :])} {_config_value(group[0].get(key))}"
            for key in varying
            if group and all(row.get(key) == group[0].get(key) for row in group)
        ]
        return f"{', '.join(shared)} ({len(names)} runs)" if shared else _group_label(names)

    return label


def plot_sparsity_schedule(
    schedules: dict[str, list[dict[str, float | None]]],
    histories: dict[str, list[dict[str, float | None]]],
    group_label: Callable[[Sequence[str]], str] = _group_label,
) -> Figure | None:
    """Target sparsity (pruning_schedule.csv) and measured sparsity (history.csv) vs step.

    Runs with the same target schedule share one line (and its colour), so a large sweep draws
    a few schedules rather than one line per run.
    """
    groups: dict[tuple, list[str]] = {}
    for name in sorted(set(schedules) | set(histories)):
        steps, targets = _series(schedules.get(name, []), "step", "target_sparsity")
        measured_steps, _ = _series(histories.get(name, []), "step", "sparsity")
        if steps or measured_steps:
            groups.setdefault(tuple(zip(steps, targets, strict=True)), []).append(name)
    if not groups:
        return None
    figure = Figure(figsize=(9, 5), layout="constrained")
    axes = figure.add_subplot()
    for index, (schedule, names) in enumerate(groups.items()):
        color = f"C{index % 10}"
        label = group_label(names)
        if schedule:
            # Masks change only at update steps, so the target holds until the next row.
            axes.plot(
                [step for step, _ in schedule],
                [target for _, target in schedule],
                color=color,
                linestyle=LINE_STYLES[index % len(LINE_STYLES)],
                drawstyle="steps-post",
                label=label,
            )
            label = None
        for name in names:
            steps, measured = _series(histories.get(name, []), "step", "sparsity")
            if steps:
                axes.plot(
                    steps,
                    measured,
                    color=color,
                    marker=MARKERS[index % len(MARKERS)],
                    linestyle="",
                    markersize=7,
                    alpha=0.7,
                    label=label,
                )
                label = None
    axes.set_xlabel("training step")
    axes.set_ylabel("sparsity (share of zero weights)")
    axes.yaxis.set_major_formatter(PERCENT_AXIS)
    axes.set_title("Pruning: target schedule (lines), measured sparsity at epoch ends (markers)")
    _legend(axes, len(groups))
    return figure


def plot_layer_sparsity(
    layers_by_run: dict[str, dict[str, dict[str, Any]]],
    group_label: Callable[[Sequence[str]], str] = _group_label,
) -> Figure | None:
    """Sparsity of each pruned layer, input to output, one line per distinct profile.

    Runs with the same per-layer sparsity (e.g. two schedules reaching the same target) share
    one line whose label names them all; drawn separately they would hide each other.
    """
    groups: dict[tuple, list[str]] = {}
    layer_names: dict[tuple, list[str]] = {}
    for name, layers in layers_by_run.items():
        sparsities = tuple(_number(layer.get("sparsity")) for layer in layers.values())
        if any(value is not None for value in sparsities):
            profile = tuple(None if v is None else round(v, 3) for v in sparsities)
            groups.setdefault(profile, []).append(name)
            layer_names[profile] = list(layers)
    if not groups:
        return None
    figure = Figure(figsize=(10, 5.5), layout="constrained")
    axes = figure.add_subplot()
    for index, (profile, names) in enumerate(groups.items()):
        axes.plot(
            range(len(profile)),
            [math.nan if value is None else value for value in profile],
            color=f"C{index % 10}",
            marker=MARKERS[index % len(MARKERS)],
            markersize=4,
            label=group_label(names),
        )
    names_seen = list(layer_names.values())
    if all(names == names_seen[0] for names in names_seen):
        axes.set_xticks(range(len(names_seen[0])), names_seen[0], rotation=90, fontsize="x-small")
    axes.set_xlabel("layer (input to output)")
    axes.set_ylabel("sparsity (share of zero weights)")
    axes.yaxis.set_major_formatter(PERCENT_AXIS)
    axes.margins(y=0.2)
    axes.set_title("Per-layer sparsity (runs with the same profile share a line)")
    _legend(axes, len(groups))
    return figure


def plot_size_by_format(rows: Sequence[dict[str, Any]]) -> Figure | None:
    """Median file and gzip size per format across runs; whiskers span the minimum to maximum."""
    figure = Figure(figsize=(8, 5), layout="constrained")
    axes = figure.add_subplot()
    formats = _formats(rows)
    width = 0.38
    plotted = False
    for offset, (field, label) in enumerate((("bytes", "file size"), ("gzip_bytes", "gzip size"))):
        positions, medians, low, high = [], [], [], []
        for index, file_format in enumerate(formats):
            values = [_number(row.get(f"tflite.{file_format}.{field}")) for row in _finished(rows)]
            values = [value for value in values if value is not None]
            if values:
                positions.append(index + (offset - 0.5) * width)
                medians.append(median(values))
                low.append(median(values) - min(values))
                high.append(max(values) - median(values))
        if positions:
            axes.bar(
                positions,
                [m / KIB for m in medians],
                width,
                yerr=[[v / KIB for v in low], [v / KIB for v in high]],
                capsize=3,
                label=label,
            )
            plotted = True
    if not plotted:
        return None
    baselines = [_number(row.get("baseline.dense_float32_bytes")) for row in _finished(rows)]
    baselines = [value for value in baselines if value is not None]
    if baselines:
        axes.axhline(
            median(baselines) / KIB,
            color="grey",
            linestyle=":",
            label="dense float32 file (unpruned)",
        )
    axes.set_xticks(range(len(formats)), formats)
    axes.set_xlabel("TFLite format")
    axes.set_ylabel("size (KiB)")
    axes.margins(y=0.12)
    axes.set_title("Size per format (median over runs; whiskers: min to max)")
    axes.legend(fontsize="small")
    return figure


def _precision(row: dict[str, Any]) -> str | None:
    for key in ("train.precision", "run.precision", "config.train.precision"):
        if isinstance(row.get(key), str):
            return row[key]
    return None


def plot_training_time(rows: Sequence[dict[str, Any]]) -> Figure | None:
    """Training seconds and images per second by precision: mean bars and one dot per run.

    Returns None unless at least two precisions were measured: one bar compares nothing.
    """
    by_field: dict[str, dict[str, list[float]]] = {}
    for field in ("train.seconds", "train.images_per_second"):
        for row in _finished(rows):
            value, precision = _number(row.get(field)), _precision(row)
            if value is not None and precision is not None:
                by_field.setdefault(field, {}).setdefault(precision, []).append(value)
    if len(by_field) < 2 or any(len(values) < 2 for values in by_field.values()):
        return None
    figure = Figure(figsize=(10, 4.5), layout="constrained")
    all_axes = figure.subplots(1, 2)
    for axes, (field, label) in zip(
        all_axes,
        (("train.seconds", "training time (s)"), ("train.images_per_second", "images per second")),
        strict=True,
    ):
        by_precision = by_field[field]
        names = sorted(by_precision, key=lambda n: (PRECISIONS + (n,)).index(n))
        axes.bar(
            range(len(names)), [mean(by_precision[n]) for n in names], 0.6, label="mean", alpha=0.6
        )
        for index, name in enumerate(names):
            axes.scatter(
                [index] * len(by_precision[name]),
                by_precision[name],
                color="k",
                s=12,
                label="one run" if index == 0 else None,
            )
        axes.set_xticks(range(len(names)), names)
        axes.set_xlabel("precision")
        axes.set_ylabel(label)
        axes.legend(fontsize="small")
    figure.suptitle("Training time by precision")
    return figure


def _save_png(figure: Figure, path: Path) -> None:
    temporary = path.with_name(path.name + ".tmp")
    figure.savefig(temporary, format="png", dpi=110)
    os.replace(temporary, path)


# --------------------------------------------------------------------------- report assembly


def load_results(sweep_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Reads `results.json` of a sweep directory.

    Raises:
        UserError: When the file is missing or malformed.
    """
    path = Path(sweep_dir) / "results.json"
    if not path.is_file():
        raise UserError(f"'{path}' not found; run `compactcnn sweep STUDY.yaml --out {sweep_dir}`")
    try:
        rows = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"'{path}' is not valid JSON ({error.msg}); re-run the sweep") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "name" in r for r in rows):
        raise UserError(f"'{path}' must be a list of runs with a 'name'; re-run the sweep")
    return rows


def _run_dir(sweep_dir: Path, row: dict[str, Any]) -> Path:
    return sweep_dir / row.get("run_dir", f"runs/{row['name']}")


def _short_error(row: dict[str, Any]) -> str:
    lines = [line for line in str(row.get("error") or "").splitlines() if line.strip()]
    if len(lines) > 1 and lines[-1].startswith("exit status"):
        lines.pop()
    return lines[-1][:120] if lines else MISSING


def _sparsity(value: Any) -> str:
    return _percent(value, 1)


def _seconds(value: Any) -> str:
    number = _number(value)
    return MISSING if number is None else f"{number:,.1f} s"


def _config_value(value: Any) -> str:
    """A config value as a reader writes it: yes/no, comma-separated lists, plain numbers."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(_config_value(item) for item in value) or MISSING
    return _text(value)


# (header, field, formatter): run fields are dotted metric keys, file fields sit under
# tflite.<format>.
RUN_COLUMNS = (
    ("Keras accuracy", "keras.test_accuracy", _percent),
    ("sparsity", "pruning.overall_sparsity", _sparsity),
    ("parameters", "keras.params", _integer),
    ("training time", "train.seconds", _seconds),
    ("images/s", "train.images_per_second", _integer),
)
FILE_COLUMNS = (
    ("accuracy", "accuracy", _percent),
    ("agreement with Keras", "agreement", _percent),
    ("zeros", "zeros_fraction", _sparsity),
    ("size", "bytes", _kibibytes),
    ("gzip size", "gzip_bytes", _kibibytes),
    ("compression", "compression_bytes", _ratio),
    ("compression (gzip)", "compression_gzip", _ratio),
    ("latency", "latency_ms", _milliseconds),
)


def _metric_formatter(metric: str) -> Callable[[Any], str]:
    field = metric.rsplit(".", 1)[-1]
    return next((formatter for _, name, formatter in FILE_COLUMNS if name == field), _text)


def _runs_table(rows: Sequence[dict[str, Any]], metric: str) -> Block:
    metric_column = (metric_label(metric), metric, _metric_formatter(metric))
    columns = [*RUN_COLUMNS[:1], metric_column, *RUN_COLUMNS[1:]]
    settings = _varying_keys(rows)
    table = []
    for row in rows:
        status = row.get("status", MISSING)
        if status == "failed":
            status = f"failed: {_short_error(row)}"
        table.append(
            [
                row["name"],
                status,
                *[_config_value(row.get(key)) for key in settings],
                *[formatter(row.get(key)) for _, key, formatter in columns],
            ]
        )
    headers = [
        "run",
        "status",
        *[config_label(key[len("config.") :]) for key in settings],
        *[header for header, _, _ in columns],
    ]
    return ("table", headers, table)


def _files_table(rows: Sequence[dict[str, Any]]) -> Block:
    table = []
    for row in _finished(rows):
        for file_format in _formats([row]):
            prefix = f"tflite.{file_format}."
            cells = [formatter(row.get(prefix + field)) for _, field, formatter in FILE_COLUMNS]
            table.append([row["name"], file_format, *cells])
    headers = ["run", "format", *[header for header, _, _ in FILE_COLUMNS]]
    return ("table", headers, table, "fold")


def _pareto_table(rows: Sequence[dict[str, Any]]) -> Block:
    files = _file_points(rows)
    front = pareto_front([(size, accuracy) for size, accuracy, _, _ in files])
    table = [
        [str(order), files[i][2], files[i][3], _percent(files[i][1]), _kibibytes(files[i][0])]
        for order, i in enumerate(front, start=1)
    ]
    return ("table", ["#", "run", "format", "accuracy", "gzip size"], table)


def _comparisons_for(rows: Sequence[dict[str, Any]]) -> list[Comparison]:
    """The known comparisons, then a plain one for every other key the study varies."""
    known = {comparison.key for comparison in COMPARISONS}
    extra = [
        Comparison(config_label(key[len("config.") :]).capitalize(), key[len("config.") :])
        for key in _varying_keys(rows)
        if key[len("config.") :] not in known
    ]
    return [*COMPARISONS, *extra]


def _comparison_blocks(rows: Sequence[dict[str, Any]], metric: str) -> list[Block]:
    file_format = metric_format(metric)
    columns = [
        ("keras.test_accuracy", "Keras accuracy", "points"),
        (metric, metric_label(metric), "points"),
        (f"tflite.{file_format}.gzip_bytes", f"{file_format} gzip size", "relative"),
        (f"tflite.{file_format}.latency_ms", f"{file_format} latency", "relative"),
        ("train.seconds", "training time", "relative"),
    ]
    focus_columns = {"gzip": 2, "latency": 3, "train.seconds": 4}
    blocks: list[Block] = []
    for comparison in _comparisons_for(rows):
        pairs = comparison_pairs(rows, comparison)
        if not pairs:
            continue
        column = f"config.{comparison.key}"
        label = config_label(comparison.key)
        blocks.append(("h3", f"{comparison.title} ({comparison.key})"))
        table = []
        for before, after in pairs:
            deltas = [_delta(before.get(key), after.get(key), kind) for key, _, kind in columns]
            table.append(
                [
                    f"{before['name']} →\n{after['name']}",
                    f"{_config_value(before[column])} → {_config_value(after[column])}",
                    *[
                        MISSING if d is None else _signed(d, kind)
                        for d, (_, _, kind) in zip(deltas, columns, strict=True)
                    ],
                ]
            )
        headers = ["baseline → changed run", label, *[f"Δ {name}" for _, name, _ in columns]]
        blocks.append(("table", headers, table))
        sentence_columns = [1] + ([focus_columns[comparison.focus]] if comparison.focus else [])
        after_values = "/".join(dict.fromkeys(_config_value(after[column]) for _, after in pairs))
        change = f"{label} {after_values} instead of {_config_value(pairs[0][0][column])}"
        for index in sentence_columns:
            key, name, kind = columns[index]
            deltas = [_delta(before.get(key), after.get(key), kind) for before, after in pairs]
            sentence = _effect_sentence(change, [d for d in deltas if d is not None], kind, name)
            if sentence:
                blocks.append(("p", sentence))
    if not blocks:
        blocks.append(("p", "No two runs differ in only one setting, so nothing is compared."))
    return blocks


def _write_charts(sweep_dir: Path, rows: Sequence[dict[str, Any]]) -> dict[str, list[Block]]:
    """Saves every chart that has data.

    Returns:
        Chart name -> its blocks: a heading and the image, or a note when the chart was skipped.
    """
    charts_dir = sweep_dir / CHARTS_DIR
    charts_dir.mkdir(exist_ok=True)
    for stale in charts_dir.glob("*.png"):  # A chart skipped this time must not linger.
        stale.unlink()
    histories, schedules, layers = {}, {}, {}
    for row in _finished(rows):
        run_dir = _run_dir(sweep_dir, row)
        histories[row["name"]] = _read_csv(run_dir / "history.csv")
        schedules[row["name"]] = _read_csv(run_dir / "pruning_schedule.csv")
        metrics_path = run_dir / "metrics.json"
        if metrics_path.is_file():
            pruning = json.loads(metrics_path.read_text()).get("pruning") or {}
            if isinstance(pruning.get("layers"), dict) and pruning["layers"]:
                layers[row["name"]] = pruning["layers"]
    charts: list[tuple[str, str, str, Callable[[], Figure | None]]] = [
        (
            "accuracy_vs_size",
            "Accuracy vs gzip size",
            "no run has a measured accuracy and size",
            lambda: plot_accuracy_vs_size(rows),
        ),
        (
            "size_by_format",
            "Size per format",
            "no run has measured file sizes",
            lambda: plot_size_by_format(rows),
        ),
        (
            "training_curves",
            "Training curves",
            "no run has a history.csv",
            lambda: plot_training_curves(histories),
        ),
        (
            "sparsity_schedule",
            "Sparsity vs step",
            "no run was pruned",
            lambda: plot_sparsity_schedule(schedules, histories, _group_labeller(rows)),
        ),
        (
            "layer_sparsity",
            "Per-layer sparsity",
            "no run has a per-layer sparsity report",
            lambda: plot_layer_sparsity(layers, _group_labeller(rows)),
        ),
        (
            "training_time",
            "Training time by precision",
            "fewer than two precisions were trained; the Runs table lists each run's time",
            lambda: plot_training_time(rows),
        ),
    ]
    blocks: dict[str, list[Block]] = {}
    for stem, title, reason, plot in charts:
        figure = plot()
        # A chart with an empty panel says nothing; a note is clearer than a blank image.
        if figure is None or not figure_has_data(figure):
            blocks[stem] = [("h3", title), ("p", f"No chart: {reason}.")]
            continue
        _save_png(figure, charts_dir / f"{stem}.png")
        blocks[stem] = [("h3", title), ("image", f"{CHARTS_DIR}/{stem}.png", title)]
    return blocks


def _tflite_source(sweep_dir: Path, row: dict[str, Any], file_format: str) -> Path:
    run_dir = _run_dir(sweep_dir, row)
    recorded = row.get(f"tflite.{file_format}.path")
    candidates = []
    if isinstance(recorded, str):
        candidates += [Path(recorded), run_dir / recorded]
    candidates.append(run_dir / "tflite" / f"{file_format}.tflite")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise UserError(
        f"the best model file of run '{row['name']}' ({candidates[-1]}) is missing; "
        "re-run that run or pick budgets that exclude it"
    )


def _model_card(row: dict[str, Any], metric: str, budgets: dict[str, Any]) -> str:
    file_format = metric_format(metric)
    prefix = f"tflite.{file_format}."
    data = _text(row.get("run.data") or row.get("config.data.name"))
    classes = _integer(row.get("run.num_classes"))
    input_dtype = _text(row.get(prefix + "input_dtype"))
    schedule = _text(row.get("pruning.schedule"))
    budget_text = _budget_text(budgets) or "none"
    headers = [
        "accuracy (this file)",
        "Keras accuracy",
        "agreement with Keras",
        "bytes",
        "gzip bytes",
        "compression vs dense float32",
        "latency (batch 1)",
        "threads",
    ]
    values = [
        _percent(row.get(prefix + "accuracy")),
        _percent(row.get("keras.test_accuracy")),
        _percent(row.get(prefix + "agreement")),
        _integer(row.get(prefix + "bytes")),
        _integer(row.get(prefix + "gzip_bytes")),
        _ratio(row.get(prefix + "compression_bytes")),
        _milliseconds(row.get(prefix + "latency_ms")),
        _integer(row.get(prefix + "threads")),
    ]
    performance = _render_markdown([("table", headers, [values])])
    return f"""# Model card: {row["name"]}

## Model
- Architecture: {_text(row.get("run.model"))} ({_integer(row.get("keras.params"))} parameters),
  CIFAR ResNet v1 trained with {_text(_precision(row))} precision for
  {_integer(row.get("train.epochs"))} epochs.
- Data: {data} ({classes} classes); accuracies are on its test split.
- Sparsity: pruning schedule {schedule}, target {_percent(row.get("pruning.target_sparsity"), 1)},
  measured {_percent(row.get("pruning.overall_sparsity"), 1)} of prunable weights; zeros in this
  file: {_percent(row.get(prefix + "zeros_fraction"), 1)}.
- Format: TFLite `{file_format}` (`{BEST_FILE}`). Input: one NHWC 32x32x3 RGB image of raw
  pixels 0-255 as {input_dtype} (no normalization needed: it is inside the model). Output: one
  score per class; the arg-max is the prediction.

## Performance
{performance}
Chosen as the highest {metric_label(metric)} (`{metric}`) among the runs of the sweep within
the budgets ({budget_text}).

## Intended use
Classifying small 32x32 RGB images into the {classes} {data} classes on devices that run
TensorFlow Lite (CPUs, phones), as a compact baseline or a starting point for fine-tuning.

## Limits
- Trained and tested only on {data}; accuracy drops on other image sources, sizes or domains.
- Images must be 32x32; larger images must be resized by the caller.
- Latency was measured on the machine that ran the sweep; measure it on the target device.
- Not audited for fairness or safety; do not use it for decisions about people.
"""


def _write_best(sweep_dir: Path, row: dict[str, Any], metric: str, budgets: dict) -> list[Block]:
    file_format = metric_format(metric)
    prefix = f"tflite.{file_format}."
    source = _tflite_source(sweep_dir, row, file_format)
    best_dir = sweep_dir / BEST_DIR
    temporary = sweep_dir / (BEST_DIR + ".tmp")
    shutil.rmtree(temporary, ignore_errors=True)
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
    (temporary / "MODEL_CARD.md").write_text(_model_card(row, metric, budgets))
    # Replace the whole folder so a file from an earlier choice never lingers beside the new one.
    shutil.rmtree(best_dir, ignore_errors=True)
    os.replace(temporary, best_dir)
    return [("p", f"Copied to `{BEST_DIR}/{BEST_FILE}`, with `best.json` and `MODEL_CARD.md`.")]


def _budget_text(budgets: dict[str, Any]) -> str:
    """The budgets as a reader states them, e.g. `size ≤ 97.7 KiB, latency ≤ 3 ms`."""
    parts = []
    if budgets.get("max_bytes") is not None:
        parts.append(f"size ≤ {_kibibytes(budgets['max_bytes'])}")
    if budgets.get("max_latency_ms") is not None:
        parts.append(f"latency ≤ {_milliseconds(budgets['max_latency_ms'])}")
    return ", ".join(parts)


def _best_blocks(
    rows: Sequence[dict[str, Any]], best: dict[str, Any], metric: str, budgets: dict[str, Any]
) -> list[Block]:
    """The chosen model in one line, then why it was chosen over the others."""
    file_format = metric_format(metric)
    prefix = f"tflite.{file_format}."
    label = metric_label(metric)
    value = _metric_formatter(metric)
    finished = _finished(rows)
    measured = [row for row in finished if _number(row.get(metric)) is not None]
    fitting = [row for row in measured if _fits(row, prefix, budgets)]
    budget_text = _budget_text(budgets)
    if budget_text:
        why = (
            f"It has the highest {label} of the {len(fitting)} of {len(measured)} measured runs "
            f"whose {file_format} file fits the budget ({budget_text})"
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
        f"{config_label(key[len('config.') :])} {_config_value(best.get(key))}"
        for key in _varying_keys(rows)
    )
    summary = (
        f"**{best['name']}**"
        + (f" ({settings})" if settings else "")
        + f", {file_format} file: {value(best[metric])} {label}, "
        f"{_kibibytes(best.get(prefix + 'bytes'))} "
        f"({_kibibytes(best.get(prefix + 'gzip_bytes'))} gzipped; "
        f"{_ratio(best.get(prefix + 'compression_gzip'))} smaller than the dense float32 file, "
        f"both gzipped), {_milliseconds(best.get(prefix + 'latency_ms'))} per image."
    )
    return [("best", summary), ("p", why + ".")]


def _intro_blocks(sweep_dir: Path, rows: Sequence[dict[str, Any]]) -> list[Block]:
    """What was swept, how to read the numbers, and the state of the runs."""
    study_text = ""
    study_path = sweep_dir / "study.yaml"
    if study_path.is_file():
        try:
            study = yaml.safe_load(study_path.read_text()) or {}
        except yaml.YAMLError:
            study = {}
        grid = study.get("grid") if isinstance(study, dict) else None
        if isinstance(grid, dict) and grid:
            varied = [
                f"{key} ({', '.join(_config_value(value) for value in values)})"
                for key, values in grid.items()
                if isinstance(values, list)
            ]
            varied = " and ".join([", ".join(varied[:-1]), varied[-1]] if varied[:-1] else varied)
            study_text = (
                f"The study `{Path(str(study.get('study', 'study'))).name}` varies {varied} "
                f"on top of `{Path(str(study.get('base', 'base'))).name}`. "
            )
    counts = {s: sum(r.get("status") == s for r in rows) for s in ("finished", "failed", "pending")}
    state = ", ".join(f"{count} {status}" for status, count in counts.items() if count)
    if counts["failed"]:
        state += " (the Runs table shows each failure's last error line)"
    return [
        ("h1", f"Sweep report: {sweep_dir.name}"),
        (
            "p",
            f"{study_text}Each run trains a model, prunes it, exports TFLite files and measures "
            f"every file on the test split. Runs: {len(rows)} in all, {state}.",
        ),
        (
            "p",
            "Reading the numbers: accuracies are on the test split; 1 KiB is 1024 bytes; "
            "compression is how many times smaller a file is than the dense (unpruned) float32 "
            "file; latency is the median time per image at batch 1 on the machine that ran the "
            "sweep. Sections: best model, runs, accuracy vs size, comparisons, TFLite files, "
            "training and pruning.",
        ),
    ]


def write_report(
    sweep_dir: str | os.PathLike,
    max_bytes: float | None = None,
    max_latency_ms: float | None = None,
    metric: str = "tflite.int8.accuracy",
) -> Path:
    """Writes report.md, report.html, charts/*.png and best/ for a sweep directory.

    Args:
        sweep_dir: A directory written by `compactcnn.sweep.run_sweep`.
        max_bytes: Largest allowed file size in bytes of the metric's format.
        max_latency_ms: Largest allowed latency of the metric's format.
        metric: `tflite.<format>.<field>` to maximize when choosing the best model.

    Returns:
        The path of report.md.

    Raises:
        UserError: When results.json is missing, the metric is invalid or nothing fits the
            budgets (nothing is written then).
    """
    sweep_dir = Path(sweep_dir)
    rows = load_results(sweep_dir)
    budgets = {"max_bytes": max_bytes, "max_latency_ms": max_latency_ms}
    best = choose_best(rows, metric, max_bytes, max_latency_ms)
    charts = _write_charts(sweep_dir, rows)
    blocks: list[Block] = [
        *_intro_blocks(sweep_dir, rows),
        ("h2", "Best model"),
        *_best_blocks(rows, best, metric, budgets),
        *_write_best(sweep_dir, best, metric, budgets),
        ("h2", "Runs"),
        ("p", "One row per run; the setting columns are the values the study varies."),
        _runs_table(rows, metric),
        ("h2", "Accuracy vs size"),
        (
            "p",
            "Every TFLite file of every finished run. The Pareto front holds the files that no "
            "other file beats on both gzip size and accuracy: the sensible choices.",
        ),
        *charts["accuracy_vs_size"][1:],
        _pareto_table(rows),
        ("h2", "Comparisons"),
        (
            "p",
            "Each row pairs two runs that are equal in every setting except the compared one. "
            "Accuracy changes are in percentage points (pp); size, latency and time changes are "
            "relative (%). Negative size, latency and time changes are improvements.",
        ),
        *_comparison_blocks(rows, metric),
        ("h2", "TFLite files"),
        _files_table(rows),
        *charts["size_by_format"],
        ("h2", "Training and pruning"),
        *charts["training_curves"],
        *charts["sparsity_schedule"],
        *charts["layer_sparsity"],
        *charts["training_time"],
    ]
    _write_text(sweep_dir / "report.md", _render_markdown(blocks))
    _write_text(sweep_dir / "report.html", _render_html(blocks, sweep_dir))
    return sweep_dir / "report.md"


# --------------------------------------------------------------------------- rendering


def _render_markdown(blocks: Sequence[Block]) -> str:
    lines = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            lines += ["#" * int(kind[1]) + " " + block[1], ""]
        elif kind in ("p", "best"):
            lines += [block[1], ""]
        elif kind == "image":
            lines += [f"![{block[2]}]({block[1]})", ""]
        elif kind == "table":
            headers, table = block[1], block[2]
            if not table:
                lines += [MISSING, ""]
                continue
            cell = lambda text: str(text).replace("|", "\\|").replace("\n", " ")  # noqa: E731
            lines.append("| " + " | ".join(cell(h) for h in headers) + " |")
            lines.append("|" + "---|" * len(headers))
            lines += ["| " + " | ".join(cell(c) for c in line) + " |" for line in table]
            lines.append("")
    return "\n".join(lines)


HTML_STYLE = """body{font-family:system-ui,sans-serif;line-height:1.45;color:#222;max-width:1300px;
margin:2em auto;padding:0 1em}h2{border-bottom:1px solid #ddd;padding-bottom:0.2em;margin-top:1.8em}
.scroll{overflow-x:auto;margin:0.5em 0 1.5em}table{border-collapse:collapse;font-size:0.85em}
th,td{border:1px solid #ccc;padding:0.3em 0.6em;text-align:left;vertical-align:top}
th{background:#f0f0f0;vertical-align:bottom}tbody tr:nth-child(even){background:#fafafa}
td:first-child{white-space:nowrap}.num{text-align:right;white-space:nowrap;
font-variant-numeric:tabular-nums}summary{cursor:pointer;color:#245;margin:0.3em 0}
code{background:#f3f3f3;padding:0 0.2em}img{max-width:100%;display:block;margin:0.5em 0 1.5em}
.best{font-size:1.1em;background:#eef6ee;border-left:4px solid #3a3;padding:0.6em 0.9em}"""

# A cell that reads as a number (with its unit) is right-aligned and never wrapped.
NUMBER_CELL = re.compile(r"^(—|[+-]?[\d,]*\.?\d+(e[+-]?\d+)?\s?(%|×|KiB|ms|s|pp)?)$")
# Tables longer than this start folded in the HTML page, behind a one-line summary.
FOLD_ROWS = 24


def _html_table(headers: Sequence[str], table: Sequence[Sequence[Any]], fold: bool) -> str:
    numeric = [
        all(NUMBER_CELL.match(str(line[column])) for line in table)
        for column in range(len(headers))
    ]

    def cell(tag: str, text: Any, column: int) -> str:
        escaped = html.escape(str(text)).replace("\n", "<br>")
        return (
            f"<{tag} class='num'>{escaped}</{tag}>"
            if numeric[column]
            else f"<{tag}>{escaped}</{tag}>"
        )

    head = "".join(cell("th", header, column) for column, header in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(cell("td", text, column) for column, text in enumerate(line)) + "</tr>"
        for line in table
    )
    page = (
        f"<div class='scroll'><table><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table></div>"
    )
    if fold and len(table) > FOLD_ROWS:
        return f"<details><summary>Show all {len(table)} rows</summary>{page}</details>"
    return page


def _render_html(blocks: Sequence[Block], sweep_dir: Path) -> str:
    def inline(text: str) -> str:
        escaped = html.escape(text)
        escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", escaped)

    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><style>{HTML_STYLE}</style>"]
    parts.append(f"<title>{html.escape(sweep_dir.name)}</title></head><body>")
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3", "p"):
            parts.append(f"<{kind}>{inline(block[1])}</{kind}>")
        elif kind == "best":
            parts.append(f"<p class='best'>{inline(block[1])}</p>")
        elif kind == "image":
            encoded = base64.b64encode((sweep_dir / block[1]).read_bytes()).decode("ascii")
            parts.append(
                f"<img alt='{html.escape(block[2])}' src='data:image/png;base64,{encoded}'>"
            )
        elif kind == "table":
            headers, table = block[1], block[2]
            if not table:
                parts.append(f"<p>{MISSING}</p>")
                continue
            parts.append(_html_table(headers, table, fold=len(block) > 3 and block[3] == "fold"))
    parts.append("</body></html>")
    return "\n".join(parts)


def _write_text(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
