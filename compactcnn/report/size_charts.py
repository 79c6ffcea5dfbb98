"""Charts of the TFLite files: accuracy against size, and size per format.

To add a chart here, write its function and add a `Chart` for it to `CHARTS` below.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import median

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from compactcnn.report.formatting import as_number
from compactcnn.report.plotting import KIB, PERCENT_AXIS, Chart, Section
from compactcnn.report.results import Row, file_points, finished, formats
from compactcnn.report.selection import pareto_front


def plot_accuracy_vs_size(rows: Sequence[Row]) -> Figure | None:
    """Accuracy against gzip size of every TFLite file, with the Pareto front numbered.

    The numbers match the rows of the report's Pareto table; run names would not fit.

    Returns:
        The figure, or None when no file has both an accuracy and a size.
    """
    files = file_points(rows)
    if not files:
        return None
    points = [(size / KIB, accuracy) for size, accuracy, _, _ in files]
    figure = Figure(figsize=(9, 5), layout="constrained")
    axes = figure.add_subplot()
    for file_format in formats(rows):
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


def plot_size_by_format(rows: Sequence[Row]) -> Figure | None:
    """Median file and gzip size per format across runs; whiskers span the minimum to maximum.

    Returns:
        The figure, or None when no finished run has a file size.
    """
    figure = Figure(figsize=(8, 5), layout="constrained")
    axes = figure.add_subplot()
    names = formats(rows)
    width = 0.38
    plotted = False
    for offset, (field, label) in enumerate((("bytes", "file size"), ("gzip_bytes", "gzip size"))):
        positions, medians, low, high = [], [], [], []
        for index, file_format in enumerate(names):
            values = [as_number(row.get(f"tflite.{file_format}.{field}")) for row in finished(rows)]
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
    baselines = [as_number(row.get("baseline.dense_float32_bytes")) for row in finished(rows)]
    baselines = [value for value in baselines if value is not None]
    if baselines:
        axes.axhline(
            median(baselines) / KIB,
            color="grey",
            linestyle=":",
            label="dense float32 file (unpruned)",
        )
    axes.set_xticks(range(len(names)), names)
    axes.set_xlabel("TFLite format")
    axes.set_ylabel("size (KiB)")
    axes.margins(y=0.12)
    axes.set_title("Size per format (median over runs; whiskers: min to max)")
    axes.legend(fontsize="small")
    return figure


CHARTS = (
    Chart(
        "accuracy_vs_size",
        "Accuracy vs gzip size",
        Section.ACCURACY_VS_SIZE,
        "no run has a measured accuracy and size",
        lambda data: plot_accuracy_vs_size(data.rows),
        # The section is about this chart; its own title under the section's would repeat it.
        headed=False,
    ),
    Chart(
        "size_by_format",
        "Size per format",
        Section.TFLITE_FILES,
        "no run has measured file sizes",
        lambda data: plot_size_by_format(data.rows),
    ),
)
