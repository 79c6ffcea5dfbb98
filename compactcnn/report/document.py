"""The report as a whole: its sections in order, written as report.md and report.html.

`write_report` is the one entry point: it reads the sweep, chooses the best model (failing
before anything is written when nothing fits), draws the charts, ships best/ and renders the
same list of pieces twice.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import yaml

from compactcnn import files
from compactcnn.report.best import best_pieces, write_best
from compactcnn.report.charts import write_charts
from compactcnn.report.comparisons import comparison_pieces
from compactcnn.report.formatting import config_value
from compactcnn.report.layer_targets import layer_target_pieces
from compactcnn.report.pieces import Heading, Paragraph, Piece
from compactcnn.report.plotting import Section
from compactcnn.report.render import render_html, render_markdown
from compactcnn.report.results import Row, load_results
from compactcnn.report.seed_claims import seed_claim_pieces
from compactcnn.report.selection import choose_best
from compactcnn.report.tables import files_table, pareto_table, runs_table

# Written by `compactcnn tune`: the folder is a tuning study's, its rows come from the storage.
TUNE_FILE = "tune.yaml"


def _study_sentence(sweep_dir: Path) -> str:
    """What the study varies, from the study.yaml the sweep copied; '' when unreadable."""
    study_path = sweep_dir / "study.yaml"
    if not study_path.is_file():
        return ""
    try:
        study = yaml.safe_load(study_path.read_text()) or {}
    except yaml.YAMLError:
        study = {}
    grid = study.get("grid") if isinstance(study, dict) else None
    if not isinstance(grid, dict) or not grid:
        return ""
    varied = [
        f"{key} ({', '.join(config_value(value) for value in values)})"
        for key, values in grid.items()
        if isinstance(values, list)
    ]
    varied = " and ".join([", ".join(varied[:-1]), varied[-1]] if varied[:-1] else varied)
    return (
        f"The study `{Path(str(study.get('study', 'study'))).name}` varies {varied} "
        f"on top of `{Path(str(study.get('base', 'base'))).name}`. "
    )


def _intro_pieces(sweep_dir: Path, rows: Sequence[Row], kind: str = "Sweep") -> list[Piece]:
    """What was swept, how to read the numbers, and the state of the runs."""
    counts = {s: sum(r.get("status") == s for r in rows) for s in ("finished", "failed", "pending")}
    # Tuning adds `pruned` and `running` trials; they are counted after the usual three.
    for status in [str(row.get("status")) for row in rows]:
        counts.setdefault(status, sum(str(r.get("status")) == status for r in rows))
    state = ", ".join(f"{count} {status}" for status, count in counts.items() if count)
    if counts["failed"]:
        state += " (the Runs table shows each failure's last error line)"
    return [
        Heading(f"{kind} report: {sweep_dir.name}", level=1),
        Paragraph(
            f"{_study_sentence(sweep_dir)}Each run trains a model, prunes it, exports TFLite files "
            f"and measures every file on the test split. Runs: {len(rows)} in all, {state}."
        ),
        Paragraph(
            "Reading the numbers: accuracies are on the test split; 1 KiB is 1024 bytes; "
            "compression is how many times smaller a file is than the dense (unpruned) float32 "
            "file; latency is the median time per image at batch 1 on the machine that ran the "
            "sweep. Sections: best model, runs, accuracy vs size, comparisons, TFLite files, "
            "training and pruning."
        ),
    ]


def write_report(
    sweep_dir: str | os.PathLike,
    max_bytes: float | None = None,
    max_latency_ms: float | None = None,
    metric: str = "tflite.int8.accuracy",
    storage: str | None = None,
) -> Path:
    """Writes report.md, report.html, charts/*.png and best/ for a sweep or tuning directory.

    Args:
        sweep_dir: A directory written by `compactcnn.sweep.run_sweep` or by
            `compactcnn.tuning.run_tuning` (its trials are read from the study's storage).
        max_bytes: Largest allowed file size in bytes of the metric's format; for a tuning
            study whose file sets `max_bytes`, that budget when None.
        max_latency_ms: Largest allowed latency of the metric's format.
        metric: `tflite.<format>.<field>` to maximize when choosing the best model.
        storage: A tuning study's storage URL, when tune.yaml hides its password.

    Returns:
        The path of report.md.

    Raises:
        UserError: When results.json is missing, the metric is invalid or nothing fits the
            budgets (nothing is written then).
    """
    sweep_dir = Path(sweep_dir)
    tuning = None
    if (sweep_dir / TUNE_FILE).is_file():
        from compactcnn.report import tuning as tuning_report  # Loads Optuna: tuning folders only.

        tuning = tuning_report.load_tuning(sweep_dir, storage)
        if max_bytes is None:
            max_bytes = tuning.study.max_bytes  # The study's own budget.
    rows = tuning.rows if tuning else load_results(sweep_dir)
    budgets = {"max_bytes": max_bytes, "max_latency_ms": max_latency_ms}
    # Chosen first: when nothing fits, the user error comes before any file is touched.
    best = choose_best(rows, metric, max_bytes, max_latency_ms)
    charts = write_charts(sweep_dir, rows)
    pieces: list[Piece] = [
        *_intro_pieces(sweep_dir, rows, "Tuning" if tuning else "Sweep"),
        Heading("Best model"),
        *best_pieces(rows, best, metric, budgets),
        *write_best(sweep_dir, best, metric, budgets),
        *(tuning_report.tuning_pieces(sweep_dir, tuning) if tuning else []),
        Heading("Runs"),
        Paragraph("One row per run; the setting columns are the values the study varies."),
        runs_table(rows, metric),
        Heading("Accuracy vs size"),
        Paragraph(
            "Every TFLite file of every finished run. The Pareto front holds the files that no "
            "other file beats on both gzip size and accuracy: the sensible choices."
        ),
        *charts[Section.ACCURACY_VS_SIZE],
        pareto_table(rows),
        Heading("Comparisons"),
        Paragraph(
            "Each row pairs two runs that are equal in every setting except the compared one. "
            "Accuracy changes are in percentage points (pp); size, latency and time changes are "
            "relative (%). Negative size, latency and time changes are improvements."
        ),
        *comparison_pieces(rows, metric),
        *seed_claim_pieces(rows, best),
        Heading("TFLite files"),
        files_table(rows),
        *charts[Section.TFLITE_FILES],
        Heading("Training and pruning"),
        *charts[Section.TRAINING],
        *layer_target_pieces(sweep_dir, best),
    ]
    # Written beside and renamed, so an open report is never seen half-written.
    files.write_text(sweep_dir / "report.md", render_markdown(pieces))
    files.write_text(sweep_dir / "report.html", render_html(pieces, sweep_dir))
    return sweep_dir / "report.md"
