"""What every chart shares: the chart description, its inputs, axis styles and legend rules.

The charts themselves live in `size_charts` and `training_charts`, each next to its `Chart`
entry; `charts` collects the entries and writes the PNG files.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from compactcnn.report.formatting import config_label, config_value
from compactcnn.report.results import Records, Row, RunFiles, varying_keys

# Fractions are plotted as they are and labelled as %; sizes are plotted in KiB so the tick
# positions are round numbers of KiB, as in the tables.
PERCENT_AXIS = PercentFormatter(xmax=1.0)
KIB = 1024

# Runs that land on the same values (e.g. two schedules reaching the same sparsity) would hide
# each other's lines; a different dash and marker per run keeps every run visible.
LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "v", "D", "x")


class Section(enum.Enum):
    """The report section a chart is shown in."""

    ACCURACY_VS_SIZE = enum.auto()
    TFLITE_FILES = enum.auto()
    TRAINING = enum.auto()


@dataclass(frozen=True)
class ChartData:
    """Everything a chart may draw from.

    Attributes:
        rows: The rows of results.json.
        files: The finished runs' history, pruning schedule and per-layer sparsity.
    """

    rows: Sequence[Row]
    files: RunFiles

    @property
    def group_label(self) -> Callable[[Sequence[str]], str]:
        """Labels a group of runs drawn as one line by the settings they share."""
        return group_labeller(self.rows)


@dataclass(frozen=True)
class Chart:
    """One chart of the report.

    Attributes:
        stem: The PNG file name without `.png`, under charts/.
        title: The subsection title and the image's alt text.
        section: Where in the report the chart goes.
        missing: Why there is no chart when `draw` has nothing to draw, e.g. `no run was pruned`.
        draw: Draws the chart, or returns None when there is no data.
        headed: False for a chart that is the point of its section and so needs no title of its
            own under the section's heading.
    """

    stem: str
    title: str
    section: Section
    missing: str
    draw: Callable[[ChartData], Figure | None]
    headed: bool = True


def figure_has_data(figure: Figure) -> bool:
    """True when every axes of the figure holds a line, bar or scatter with data."""

    def axes_has_data(axes: Any) -> bool:
        lines = any(len(line.get_xdata()) for line in axes.lines)
        collections = any(len(collection.get_offsets()) for collection in axes.collections)
        return lines or collections or bool(axes.patches)

    return bool(figure.axes) and all(axes_has_data(axes) for axes in figure.axes)


def legend(axes: Any, count: int, **options: Any) -> None:
    """Adds a legend where it hides no data, given `count` entries."""
    # Many or long entries would cover the data, so such legends go beside the plot.
    _, labels = axes.get_legend_handles_labels()
    if max((len(label) for label in labels), default=0) > 40:
        # Long labels beside the plot would squeeze it; below it they have the full width.
        axes.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(0, -0.12), **options)
    elif count > 6:
        axes.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0), **options)
    else:
        axes.legend(fontsize="small", **options)


def series(records: Records, x: str, y: str) -> tuple[list, list]:
    """The x and y values of the records that have both."""
    pairs = [(r.get(x), r.get(y)) for r in records if r.get(x) is not None and r.get(y) is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def default_group_label(names: Sequence[str]) -> str:
    """Names of runs drawn as one line: all of them when few, else the first and a count."""
    if len(names) <= 2:
        return ", ".join(names)
    return f"{names[0]} and {len(names) - 1} more runs"


def group_labeller(rows: Sequence[Row]) -> Callable[[Sequence[str]], str]:
    """Labels a group of runs by the varied settings they share, e.g. `schedule constant (7 runs)`.

    One run keeps its name; a group with no shared varied setting falls back to
    `default_group_label`.
    """
    by_name = {row["name"]: row for row in rows}
    varying = varying_keys(rows)

    def label(names: Sequence[str]) -> str:
        if len(names) == 1:
            return names[0]
        group = [by_name[name] for name in names if name in by_name]
        shared = [
            f"{config_label(key[len('config.') :])} {config_value(group[0].get(key))}"
            for key in varying
            if group and all(row.get(key) == group[0].get(key) for row in group)
        ]
        return f"{', '.join(shared)} ({len(names)} runs)" if shared else default_group_label(names)

    return label
