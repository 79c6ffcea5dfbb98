"""The report's charts: the list of them, and writing each one that has data as a PNG.

`CHARTS` lists every chart in report order, gathered from the modules that draw them. Adding a
chart touches one module: write its drawing function in `size_charts` or `training_charts` and
add a `Chart` entry beside it. The PNG file, the "No chart" note, the section the chart goes in
and its place in both renderings all follow from that entry. (A chart in a new module also
needs that module's `CHARTS` added to the list below.)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from compactcnn import files
from compactcnn.report import pieces, size_charts, training_charts
from compactcnn.report.pieces import Heading, Paragraph, Piece
from compactcnn.report.plotting import Chart, ChartData, Section, figure_has_data
from compactcnn.report.results import Row, load_run_files

CHARTS_DIR = "charts"
CHARTS: tuple[Chart, ...] = (*size_charts.CHARTS, *training_charts.CHARTS)


def write_charts(
    sweep_dir: Path, rows: Sequence[Row], charts: Sequence[Chart] = CHARTS
) -> dict[Section, list[Piece]]:
    """Saves every chart that has data under `sweep_dir/charts/`.

    Args:
        sweep_dir: The sweep directory.
        rows: The rows of its results.json.
        charts: The charts to draw.

    Returns:
        Section -> the pieces of its charts, in the order of `charts`: per chart a heading (unless
        it is not `headed`) and the image, or a note when the chart has no data. Every section is
        present, with no pieces when none of its charts was listed.
    """
    charts_dir = sweep_dir / CHARTS_DIR
    charts_dir.mkdir(exist_ok=True)
    for stale in charts_dir.glob("*.png"):  # A chart skipped this time must not linger.
        stale.unlink()
    data = ChartData(rows, load_run_files(sweep_dir, rows))
    by_section: dict[Section, list[Piece]] = {section: [] for section in Section}
    for chart in charts:
        section_pieces = by_section[chart.section]
        if chart.headed:
            section_pieces.append(Heading(chart.title, level=3))
        figure = chart.draw(data)
        # A chart with an empty panel says nothing; a note is clearer than a blank image.
        if figure is None or not figure_has_data(figure):
            section_pieces.append(Paragraph(f"No chart: {chart.missing}."))
            continue
        _save_png(figure, charts_dir / f"{chart.stem}.png")
        section_pieces.append(pieces.Figure(f"{CHARTS_DIR}/{chart.stem}.png", chart.title))
    return by_section


def _save_png(figure: Figure, path: Path) -> None:
    # Written beside and renamed, so a reader of the folder never sees half an image.
    with files.atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=110)
