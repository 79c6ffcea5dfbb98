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

from matplotlib.figure import Figure

from compactcnn.config import EXPORT_FORMATS, PRECISIONS
from compactcnn.errors import UserError

MISSING = "—"
CHARTS_DIR = "charts"
BEST_DIR = "best"
BEST_FILE = "model.tflite"

Block = tuple  # ("h1"|"h2"|"p", text) | ("table", headers, rows) | ("image", relative_path, alt)


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
    budgets = {"bytes": max_bytes, "latency_ms": max_latency_ms}
    fitting = [
        row
        for row in measured
        if all(
            limit is None
            or (_number(row.get(prefix + field)) is not None and row[prefix + field] <= limit)
            for field, limit in budgets.items()
        )
    ]
    if not fitting:
        smallest = min(_sizes(measured, prefix + "bytes"), default=None)
        fastest = min(_sizes(measured, prefix + "latency_ms"), default=None)
        limits = ", ".join(f"{field} <= {limit}" for field, limit in budgets.items() if limit)
        raise UserError(
            f"no {file_format} model fits the budget ({limits}): the smallest is "
            f"{_integer(smallest)} bytes, the fastest {_milliseconds(fastest)}; relax a budget"
        )

    def rank(row: dict[str, Any]) -> tuple[float, float, str]:
        gzip_bytes = _number(row.get(prefix + "gzip_bytes"))
        return (-row[metric], math.inf if gzip_bytes is None else gzip_bytes, row["name"])

    return min(fitting, key=rank)


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
    """One sentence only when at least two pairs exist; it says whether their signs agree."""
    if len(deltas) < 2:
        return ""
    mean_delta = _signed(mean(deltas), kind)
    if all(delta > 0 for delta in deltas) or all(delta < 0 for delta in deltas):
        direction = "higher" if deltas[0] > 0 else "lower"
        return (
            f"In all {len(deltas)} pairs, {change} gave {direction} {measured} (mean {mean_delta})."
        )
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


def _legend(axes: Any, count: int) -> None:
    # Many runs would cover the data, so large legends go beside the plot in small print.
    if count > 6:
        axes.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        axes.legend(fontsize="small")


def plot_accuracy_vs_size(rows: Sequence[dict[str, Any]]) -> Figure | None:
    """Accuracy against gzip size of every TFLite file, with the Pareto front marked."""
    points, labels = [], []
    figure = Figure(figsize=(8, 5), layout="constrained")
    axes = figure.add_subplot()
    for file_format in _formats(rows):
        sizes, accuracies = [], []
        for row in _finished(rows):
            size = _number(row.get(f"tflite.{file_format}.gzip_bytes"))
            accuracy = _number(row.get(f"tflite.{file_format}.accuracy"))
            if size is not None and accuracy is not None:
                sizes.append(size)
                accuracies.append(accuracy)
                points.append((size, accuracy))
                labels.append(f"{row['name']} ({file_format})")
        if sizes:
            axes.scatter(sizes, accuracies, label=file_format, alpha=0.8)
    if not points:
        return None
    front = pareto_front(points)
    axes.plot(
        [points[i][0] for i in front],
        [points[i][1] for i in front],
        "k--",
        drawstyle="steps-post",
        marker="o",
        fillstyle="none",
        markersize=11,
        label="Pareto front",
    )
    for index in front:
        axes.annotate(
            labels[index],
            points[index],
            fontsize="xx-small",
            xytext=(4, -10),
            textcoords="offset points",
        )
    sizes = [size for size, _ in points]
    if max(sizes) > 10 * min(sizes):
        axes.set_xscale("log")
    axes.set_xlabel("gzip size (bytes)")
    axes.set_ylabel("test accuracy")
    axes.set_title("Accuracy vs compressed size")
    axes.legend(fontsize="small")
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
    plotted = 0
    for index, (name, records) in enumerate(histories.items()):
        color = f"C{index % 10}"
        for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
            epochs, values = _series(records, "epoch", metric)
            if epochs:
                axes.plot(epochs, values, color=color, label=name)
                plotted += axes is loss_axes
            epochs, values = _series(records, "epoch", f"val_{metric}")
            if epochs:
                axes.plot(epochs, values, color=color, linestyle="--")
    if not plotted:
        return None
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        axes.set_xlabel("epoch")
        axes.set_ylabel(metric)
        axes.set_title(f"{metric.capitalize()} (solid: training, dashed: validation)")
    _legend(accuracy_axes, len(histories))
    return figure


def plot_sparsity_schedule(
    schedules: dict[str, list[dict[str, float | None]]],
    histories: dict[str, list[dict[str, float | None]]],
) -> Figure | None:
    """Target sparsity (pruning_schedule.csv) and measured sparsity (history.csv) vs step."""
    figure = Figure(figsize=(8, 5), layout="constrained")
    axes = figure.add_subplot()
    plotted = 0
    for index, name in enumerate(sorted(set(schedules) | set(histories))):
        color = f"C{index % 10}"
        steps, targets = _series(schedules.get(name, []), "step", "target_sparsity")
        if steps:
            # Masks change only at update steps, so the target holds until the next row.
            axes.plot(
                steps,
                targets,
                color=color,
                linestyle="--",
                drawstyle="steps-post",
                label=f"{name} target",
            )
            plotted += 1
        steps, actual = _series(histories.get(name, []), "step", "sparsity")
        if steps:
            axes.plot(steps, actual, color=color, marker="o", linestyle="", label=f"{name} actual")
            plotted += 1
    if not plotted:
        return None
    axes.set_xlabel("training step")
    axes.set_ylabel("sparsity (fraction of zero weights)")
    axes.set_title("Pruning: target (dashed) and measured (dots) sparsity")
    _legend(axes, plotted)
    return figure


def plot_layer_sparsity(layers_by_run: dict[str, dict[str, dict[str, Any]]]) -> Figure | None:
    """Sparsity of each pruned layer, input to output, one line per run."""
    figure = Figure(figsize=(10, 5), layout="constrained")
    axes = figure.add_subplot()
    names_seen = []
    for name, layers in layers_by_run.items():
        sparsities = [_number(layer.get("sparsity")) for layer in layers.values()]
        if any(value is not None for value in sparsities):
            axes.plot(range(len(sparsities)), sparsities, marker=".", label=name)
            names_seen.append(list(layers))
    if not names_seen:
        return None
    if all(names == names_seen[0] for names in names_seen):
        axes.set_xticks(range(len(names_seen[0])), names_seen[0], rotation=90, fontsize="xx-small")
    axes.set_xlabel("layer (input to output)")
    axes.set_ylabel("sparsity (fraction of zero weights)")
    axes.set_title("Per-layer sparsity")
    _legend(axes, len(names_seen))
    return figure


def plot_size_by_format(rows: Sequence[dict[str, Any]]) -> Figure | None:
    """Median file and gzip size per format across runs; whiskers span the minimum to maximum."""
    figure = Figure(figsize=(8, 5), layout="constrained")
    axes = figure.add_subplot()
    formats = _formats(rows)
    width = 0.38
    plotted = False
    for offset, (field, label) in enumerate((("bytes", "file"), ("gzip_bytes", "gzip"))):
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
            axes.bar(positions, medians, width, yerr=[low, high], capsize=3, label=label)
            plotted = True
    if not plotted:
        return None
    baselines = [_number(row.get("baseline.dense_float32_bytes")) for row in _finished(rows)]
    baselines = [value for value in baselines if value is not None]
    if baselines:
        axes.axhline(median(baselines), color="grey", linestyle=":", label="dense float32 file")
    axes.set_xticks(range(len(formats)), formats)
    axes.set_xlabel("TFLite format")
    axes.set_ylabel("size (bytes)")
    axes.set_title("Size per format (median over runs; whiskers: min to max)")
    axes.legend(fontsize="small")
    return figure


def _precision(row: dict[str, Any]) -> str | None:
    for key in ("train.precision", "run.precision", "config.train.precision"):
        if isinstance(row.get(key), str):
            return row[key]
    return None


def plot_training_time(rows: Sequence[dict[str, Any]]) -> Figure | None:
    """Training seconds and images per second by precision: mean bars and one dot per run."""
    figure = Figure(figsize=(10, 4.5), layout="constrained")
    all_axes = figure.subplots(1, 2)
    for axes, field, label in zip(
        all_axes,
        ("train.seconds", "train.images_per_second"),
        ("training time (s)", "images per second"),
        strict=True,
    ):
        by_precision: dict[str, list[float]] = {}
        for row in _finished(rows):
            value, precision = _number(row.get(field)), _precision(row)
            if value is not None and precision is not None:
                by_precision.setdefault(precision, []).append(value)
        if not by_precision:
            return None
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
                label="runs" if index == 0 else None,
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


# (header, field, formatter): run fields are dotted metric keys, file fields sit under
# tflite.<format>.
RUN_COLUMNS = (
    ("Keras accuracy", "keras.test_accuracy", _percent),
    ("sparsity", "pruning.overall_sparsity", _sparsity),
    ("params", "keras.params", _integer),
    ("training s", "train.seconds", _integer),
    ("images/s", "train.images_per_second", _integer),
)
FILE_COLUMNS = (
    ("accuracy", "accuracy", _percent),
    ("agreement", "agreement", _percent),
    ("zeros", "zeros_fraction", _sparsity),
    ("bytes", "bytes", _kibibytes),
    ("gzip bytes", "gzip_bytes", _kibibytes),
    ("compression", "compression_bytes", _ratio),
    ("compression (gzip)", "compression_gzip", _ratio),
    ("latency", "latency_ms", _milliseconds),
)


def _metric_formatter(metric: str) -> Callable[[Any], str]:
    field = metric.rsplit(".", 1)[-1]
    return next((formatter for _, name, formatter in FILE_COLUMNS if name == field), _text)


def _runs_table(rows: Sequence[dict[str, Any]], metric: str) -> Block:
    columns = [*RUN_COLUMNS[:1], (metric, metric, _metric_formatter(metric)), *RUN_COLUMNS[1:]]
    table = []
    for row in rows:
        status = row.get("status", MISSING)
        if status == "failed":
            status = f"failed: {_short_error(row)}"
        table.append(
            [row["name"], status, *[formatter(row.get(key)) for _, key, formatter in columns]]
        )
    return ("table", ["run", "status", *[header for header, _, _ in columns]], table)


def _files_table(rows: Sequence[dict[str, Any]]) -> Block:
    table = []
    for row in _finished(rows):
        for file_format in _formats([row]):
            prefix = f"tflite.{file_format}."
            cells = [formatter(row.get(prefix + field)) for _, field, formatter in FILE_COLUMNS]
            table.append([row["name"], file_format, *cells])
    return ("table", ["run", "format", *[header for header, _, _ in FILE_COLUMNS]], table)


def _pareto_table(rows: Sequence[dict[str, Any]]) -> Block:
    points, names = [], []
    for row in _finished(rows):
        for file_format in _formats([row]):
            size = _number(row.get(f"tflite.{file_format}.gzip_bytes"))
            accuracy = _number(row.get(f"tflite.{file_format}.accuracy"))
            if size is not None and accuracy is not None:
                points.append((size, accuracy))
                names.append((row["name"], file_format))
    table = [
        [*names[i], _percent(points[i][1]), _kibibytes(points[i][0])] for i in pareto_front(points)
    ]
    return ("table", ["run", "format", "accuracy", "gzip size"], table)


def _comparison_blocks(rows: Sequence[dict[str, Any]], metric: str) -> list[Block]:
    file_format = metric_format(metric)
    columns = [
        ("keras.test_accuracy", "Keras accuracy", "points"),
        (metric, metric, "points"),
        (f"tflite.{file_format}.gzip_bytes", f"{file_format} gzip size", "relative"),
        (f"tflite.{file_format}.latency_ms", f"{file_format} latency", "relative"),
        ("train.seconds", "training time", "relative"),
    ]
    focus_columns = {"gzip": 2, "latency": 3, "train.seconds": 4}
    blocks: list[Block] = []
    for comparison in COMPARISONS:
        pairs = comparison_pairs(rows, comparison)
        if not pairs:
            continue
        column = f"config.{comparison.key}"
        blocks.append(("h3", f"{comparison.title} ({comparison.key})"))
        table = []
        for before, after in pairs:
            deltas = [_delta(before.get(key), after.get(key), kind) for key, _, kind in columns]
            table.append(
                [
                    f"{before['name']} → {after['name']}",
                    f"{_text(before[column])} → {_text(after[column])}",
                    *[
                        MISSING if d is None else _signed(d, kind)
                        for d, (_, _, kind) in zip(deltas, columns, strict=True)
                    ],
                ]
            )
        headers = ["runs", comparison.key, *[f"Δ {label}" for _, label, _ in columns]]
        blocks.append(("table", headers, table))
        sentence_columns = [1] + ([focus_columns[comparison.focus]] if comparison.focus else [])
        after_values = "/".join(dict.fromkeys(_text(after[column]) for _, after in pairs))
        change = f"{comparison.key} {after_values} instead of {_text(pairs[0][0][column])}"
        for index in sentence_columns:
            key, label, kind = columns[index]
            deltas = [_delta(before.get(key), after.get(key), kind) for before, after in pairs]
            sentence = _effect_sentence(change, [d for d in deltas if d is not None], kind, label)
            if sentence:
                blocks.append(("p", sentence))
    if not blocks:
        blocks.append(("p", "No two runs differ in only one compared key, so nothing is compared."))
    return blocks


def _write_charts(sweep_dir: Path, rows: Sequence[dict[str, Any]]) -> list[Block]:
    """Saves every chart that has data; returns image blocks and notes on skipped charts."""
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
    charts: list[tuple[str, str, Callable[[], Figure | None]]] = [
        ("accuracy_vs_size", "Accuracy vs gzip size", lambda: plot_accuracy_vs_size(rows)),
        ("training_curves", "Training curves", lambda: plot_training_curves(histories)),
        (
            "sparsity_schedule",
            "Sparsity vs step",
            lambda: plot_sparsity_schedule(schedules, histories),
        ),
        ("layer_sparsity", "Per-layer sparsity", lambda: plot_layer_sparsity(layers)),
        ("size_by_format", "Size per format", lambda: plot_size_by_format(rows)),
        ("training_time", "Training time by precision", lambda: plot_training_time(rows)),
    ]
    blocks: list[Block] = []
    for stem, title, plot in charts:
        blocks.append(("h3", title))
        figure = plot()
        # A chart with an empty panel says nothing; a note is clearer than a blank image.
        if figure is None or not figure_has_data(figure):
            blocks.append(("p", f"{MISSING} (no run has the data for this chart)"))
            continue
        _save_png(figure, charts_dir / f"{stem}.png")
        blocks.append(("image", f"{CHARTS_DIR}/{stem}.png", title))
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
    budget_text = ", ".join(f"{k} ≤ {v}" for k, v in budgets.items() if v is not None) or "none"
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
Chosen as the highest `{metric}` among the runs of the sweep within the budgets ({budget_text}).

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
    budget_text = ", ".join(f"{k} ≤ {v}" for k, v in budgets.items() if v is not None)
    return [
        (
            "p",
            f"Highest {metric} within the budgets ({budget_text or 'no budgets'}): "
            f"**{row['name']}** with {_percent(row[metric])}, "
            f"{_integer(row.get(prefix + 'bytes'))} bytes "
            f"({_integer(row.get(prefix + 'gzip_bytes'))} gzip), "
            f"{_milliseconds(row.get(prefix + 'latency_ms'))}. "
            f"Copied to `{BEST_DIR}/{BEST_FILE}` with `best.json` and `MODEL_CARD.md`.",
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
    counts = {s: sum(r.get("status") == s for r in rows) for s in ("finished", "failed", "pending")}
    blocks: list[Block] = [
        ("h1", f"Sweep report: {sweep_dir.name}"),
        (
            "p",
            ", ".join(f"{count} {status}" for status, count in counts.items() if count)
            + f" of {len(rows)} runs.",
        ),
        ("h2", "Best model"),
        *_write_best(sweep_dir, best, metric, budgets),
        ("h2", "Runs"),
        _runs_table(rows, metric),
        ("h2", "TFLite files"),
        ("p", "Compression is the dense float32 file's size divided by this file's size."),
        _files_table(rows),
        ("h2", "Pareto front (smallest gzip size for its accuracy)"),
        _pareto_table(rows),
        ("h2", "Comparisons"),
        (
            "p",
            "Each row pairs two runs equal in every overridden key except the compared one; "
            "accuracy deltas are in percentage points, sizes and times relative.",
        ),
        *_comparison_blocks(rows, metric),
        ("h2", "Charts"),
        *_write_charts(sweep_dir, rows),
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
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "image":
            lines += [f"![{block[2]}]({block[1]})", ""]
        elif kind == "table":
            _, headers, table = block
            if not table:
                lines += [MISSING, ""]
                continue
            cell = lambda text: str(text).replace("|", "\\|")  # noqa: E731
            lines.append("| " + " | ".join(cell(h) for h in headers) + " |")
            lines.append("|" + "---|" * len(headers))
            lines += ["| " + " | ".join(cell(c) for c in line) + " |" for line in table]
            lines.append("")
    return "\n".join(lines)


HTML_STYLE = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}
table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:0.25em 0.5em;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}img{max-width:100%}"""


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
        elif kind == "image":
            encoded = base64.b64encode((sweep_dir / block[1]).read_bytes()).decode("ascii")
            parts.append(
                f"<img alt='{html.escape(block[2])}' src='data:image/png;base64,{encoded}'>"
            )
        elif kind == "table":
            _, headers, table = block
            if not table:
                parts.append(f"<p>{MISSING}</p>")
                continue
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
            body = "".join(
                "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in line) + "</tr>"
                for line in table
            )
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _write_text(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
