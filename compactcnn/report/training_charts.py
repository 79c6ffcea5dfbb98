"""Charts of training and pruning: curves per epoch, sparsity over steps and per layer, time.

To add a chart here, write its function and add a `Chart` for it to `CHARTS` below.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from statistics import mean
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from compactcnn.config import PRECISIONS
from compactcnn.report.formatting import as_number
from compactcnn.report.plotting import (
    LINE_STYLES,
    MARKERS,
    PERCENT_AXIS,
    Chart,
    Section,
    default_group_label,
    legend,
    series,
)
from compactcnn.report.results import Records, Row, finished, precision


def plot_training_curves(histories: dict[str, Records]) -> Figure | None:
    """Loss and accuracy per epoch for each run: solid training, dashed validation.

    Returns:
        The figure, or None when no run has a training loss.
    """
    figure = Figure(figsize=(11, 4.5), layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    plotted = validated = 0
    for index, (name, records) in enumerate(histories.items()):
        color = f"C{index % 10}"
        marker = MARKERS[index % len(MARKERS)]
        for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
            # history.csv counts epochs from 0; readers count from 1.
            epochs, values = series(records, "epoch", metric)
            if epochs:
                axes.plot([e + 1 for e in epochs], values, color=color, marker=marker, label=name)
                plotted += axes is loss_axes
            epochs, values = series(records, "epoch", f"val_{metric}")
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
    legend(accuracy_axes, len(histories))
    return figure


def plot_sparsity_schedule(
    schedules: dict[str, Records],
    histories: dict[str, Records],
    group_label: Callable[[Sequence[str]], str] = default_group_label,
) -> Figure | None:
    """Target sparsity (pruning_schedule.csv) and measured sparsity (history.csv) vs step.

    Runs with the same target schedule share one line (and its colour), so a large sweep draws
    a few schedules rather than one line per run.

    Args:
        schedules: Each run's pruning_schedule.csv rows.
        histories: Each run's history.csv rows.
        group_label: Names the runs that share a line.

    Returns:
        The figure, or None when no run has a schedule or a measured sparsity.
    """
    groups: dict[tuple, list[str]] = {}
    for name in sorted(set(schedules) | set(histories)):
        steps, targets = series(schedules.get(name, []), "step", "target_sparsity")
        measured_steps, _ = series(histories.get(name, []), "step", "sparsity")
        if steps or measured_steps:
            groups.setdefault(tuple(zip(steps, targets, strict=True)), []).append(name)
    if not groups:
        return None
    figure = Figure(figsize=(9, 5), layout="constrained")
    axes = figure.add_subplot()
    for index, (schedule, names) in enumerate(groups.items()):
        color = f"C{index % 10}"
        # Only the first line of a group is labelled: one legend entry per group.
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
            steps, measured = series(histories.get(name, []), "step", "sparsity")
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
    legend(axes, len(groups))
    return figure


def plot_layer_sparsity(
    layers_by_run: dict[str, dict[str, dict[str, Any]]],
    group_label: Callable[[Sequence[str]], str] = default_group_label,
) -> Figure | None:
    """Sparsity of each pruned layer, input to output, one line per distinct profile.

    Runs with the same per-layer sparsity (e.g. two schedules reaching the same target) share
    one line whose label names them all; drawn separately they would hide each other.

    Args:
        layers_by_run: Each run's layer name -> {`sparsity`: fraction, ...}, input to output.
        group_label: Names the runs that share a line.

    Returns:
        The figure, or None when no layer has a sparsity.
    """
    groups: dict[tuple, list[str]] = {}
    layer_names: dict[tuple, list[str]] = {}
    for name, layers in layers_by_run.items():
        sparsities = tuple(as_number(layer.get("sparsity")) for layer in layers.values())
        if any(value is not None for value in sparsities):
            # Rounded, so profiles that differ only in float noise still share a line.
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
    # Layer names label the x axis only when every run has the same layers.
    if all(names == names_seen[0] for names in names_seen):
        axes.set_xticks(range(len(names_seen[0])), names_seen[0], rotation=90, fontsize="x-small")
    axes.set_xlabel("layer (input to output)")
    axes.set_ylabel("sparsity (share of zero weights)")
    axes.yaxis.set_major_formatter(PERCENT_AXIS)
    axes.margins(y=0.2)
    axes.set_title("Per-layer sparsity (runs with the same profile share a line)")
    legend(axes, len(groups))
    return figure


def plot_training_time(rows: Sequence[Row]) -> Figure | None:
    """Training seconds and images per second by precision: mean bars and one dot per run.

    Returns:
        The figure, or None unless at least two precisions were measured: one bar compares
        nothing.
    """
    by_field: dict[str, dict[str, list[float]]] = {}
    for field in ("train.seconds", "train.images_per_second"):
        for row in finished(rows):
            value, name = as_number(row.get(field)), precision(row)
            if value is not None and name is not None:
                by_field.setdefault(field, {}).setdefault(name, []).append(value)
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
        # Known precisions in their usual order (full first); unknown ones after them.
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


CHARTS = (
    Chart(
        "training_curves",
        "Training curves",
        Section.TRAINING,
        "no run has a history.csv",
        lambda data: plot_training_curves(data.files.histories),
    ),
    Chart(
        "sparsity_schedule",
        "Sparsity vs step",
        Section.TRAINING,
        "no run was pruned",
        lambda data: plot_sparsity_schedule(
            data.files.schedules, data.files.histories, data.group_label
        ),
    ),
    Chart(
        "layer_sparsity",
        "Per-layer sparsity",
        Section.TRAINING,
        "no run has a per-layer sparsity report",
        lambda data: plot_layer_sparsity(data.files.layers, data.group_label),
    ),
    Chart(
        "training_time",
        "Training time by precision",
        Section.TRAINING,
        "fewer than two precisions were trained; the Runs table lists each run's time",
        lambda data: plot_training_time(data.rows),
    ),
)
