"""Optuna's own charts of a tuning study: Pareto front, optimization history, importances.

Drawn with `optuna.visualization.matplotlib`, which is marked experimental and warns on every
call; the warnings are silenced here. Those functions draw through pyplot and restyle it
(`ggplot`), so each chart is drawn inside `matplotlib.rc_context` (the style does not leak into
the report's other charts), saved, and closed (pyplot keeps no reference to it).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import optuna
from optuna.visualization import matplotlib as optuna_plots

from compactcnn import files
from compactcnn.report import pieces
from compactcnn.report.formatting import metric_label
from compactcnn.report.pieces import Heading, Paragraph, Piece
from compactcnn.tuning import engine
from compactcnn.tuning.study import Objective

CHARTS_DIR = "charts"
# (width, height) in inches: room for dotted parameter names on the importance chart's axis.
FIGURE_SIZE = (9.0, 5.0)


@dataclass(frozen=True)
class TuningChart:
    """One Optuna chart of the report.

    Attributes:
        stem: The PNG file name without `.png`, under charts/.
        title: The subsection title and the image's alt text.
        missing: Why there is no chart when `draw` returns None.
        draw: Draws on pyplot and returns the axes, or None when there is nothing to draw.
    """

    stem: str
    title: str
    missing: str
    draw: Callable[[optuna.Study, Sequence[Objective], bool], Any]


def _completed(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def plot_pareto(study: optuna.Study, objectives: Sequence[Objective], constrained: bool) -> Any:
    """The trials in the plane of the two objectives, the front highlighted."""
    if len(objectives) != 2 or _completed(study) < 1:
        return None
    return optuna_plots.plot_pareto_front(
        study,
        target_names=[metric_label(o.metric) for o in objectives],
        constraints_func=engine.constraint if constrained else None,
    )


def plot_history(study: optuna.Study, objectives: Sequence[Objective], constrained: bool) -> Any:
    """The first objective of every completed trial, and the best so far, by trial number."""
    if _completed(study) < 1:
        return None
    return optuna_plots.plot_optimization_history(
        study,
        target=lambda trial: trial.values[0],
        target_name=metric_label(objectives[0].metric),
    )


def plot_importances(
    study: optuna.Study, objectives: Sequence[Objective], constrained: bool
) -> Any:
    """How much each searched key explains of each objective (Optuna's default evaluator)."""
    if _completed(study) < 2:
        return None
    try:
        axes = optuna_plots.plot_param_importances(study)
    except (RuntimeError, ValueError, ZeroDivisionError):
        return None  # Too few distinct trials for the evaluator.
    handles, labels = axes.get_legend_handles_labels()
    if handles:
        # Optuna names the objectives "Objective Value 0, 1, ..."; readers know them by metric.
        names = [metric_label(o.metric) for o in objectives]
        labels = [names[i] if i < len(names) else label for i, label in enumerate(labels)]
        axes.legend(handles, labels, fontsize="small")
    return axes


CHARTS = (
    TuningChart(
        "tuning_pareto",
        "Trials and their Pareto front",
        "the study does not have two objectives, or no trial has completed",
        plot_pareto,
    ),
    TuningChart(
        "tuning_history",
        "Optimization history",
        "no trial has completed",
        plot_history,
    ),
    TuningChart(
        "tuning_importances",
        "Parameter importances",
        "fewer than two trials have completed, or they do not vary enough to rank the keys",
        plot_importances,
    ),
)


def write_tuning_charts(
    folder: Path, study: optuna.Study, objectives: Sequence[Objective], constrained: bool
) -> list[Piece]:
    """Saves each chart under `folder/charts/` and returns a heading and image (or note) each."""
    charts_dir = folder / CHARTS_DIR
    charts_dir.mkdir(exist_ok=True)
    result: list[Piece] = []
    for chart in CHARTS:
        result.append(Heading(chart.title, level=3))
        path = charts_dir / f"{chart.stem}.png"
        if _draw_and_save(chart, study, objectives, constrained, path):
            result.append(pieces.Figure(f"{CHARTS_DIR}/{path.name}", chart.title))
        else:
            path.unlink(missing_ok=True)  # A chart of an earlier report must not linger.
            result.append(Paragraph(f"No chart: {chart.missing}."))
    return result


def _draw_and_save(
    chart: TuningChart,
    study: optuna.Study,
    objectives: Sequence[Objective],
    constrained: bool,
    path: Path,
) -> bool:
    import matplotlib.pyplot as pyplot  # Here: only these charts need pyplot.

    with matplotlib.rc_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Experimental-API and evaluator warnings.
        axes = chart.draw(study, objectives, constrained)
        if axes is None:
            return False
        figure = axes.figure
        try:
            figure.set_size_inches(*FIGURE_SIZE)
            figure.set_layout_engine("constrained")
            with files.atomic_path(path) as temporary:
                figure.savefig(temporary, format="png", dpi=110)
        finally:
            pyplot.close(figure)
    return True
