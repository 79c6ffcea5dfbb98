"""Paired comparisons: runs equal in every setting but one, and what changing it did.

A pair holds a baseline run and a run that differs from it in exactly one compared setting, so
the difference between their metrics is the effect of that setting alone (on this data, with
this seed). Each comparison becomes a table of per-pair deltas and a sentence saying whether the
deltas agree in sign across pairs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import mean
from typing import Any

from compactcnn.config import PRECISIONS
from compactcnn.report.formatting import (
    MISSING,
    as_number,
    config_label,
    config_value,
    metric_label,
    signed,
)
from compactcnn.report.pieces import Heading, Paragraph, Piece, Table
from compactcnn.report.results import Row, varying_keys
from compactcnn.report.selection import metric_format


@dataclass(frozen=True)
class Comparison:
    """Runs that differ only in `key`: `baseline` against each of `alternatives`.

    With `baseline` None, the values present are sorted naturally and the first is the baseline.

    Attributes:
        title: The subsection title.
        key: The compared config key, e.g. `prune.schedule`.
        baseline: The value the others are compared against.
        alternatives: The values compared against the baseline.
        focus: A second column worth a sentence besides the chosen metric: `gzip`, `latency` or
            `train.seconds`; empty for none.
    """

    title: str
    key: str
    baseline: Any = None
    alternatives: tuple = ()
    focus: str = ""


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

# `Comparison.focus` -> the index of its column among the delta columns of `comparison_pieces`.
_FOCUS_COLUMNS = {"gzip": 2, "latency": 3, "train.seconds": 4}


def _natural_key(value: Any) -> tuple:
    """Sorts numbers by value and texts with their digits as numbers: resnet20 before resnet110."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value)
    return (1, [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(value))])


def comparison_pairs(rows: Sequence[Row], comparison: Comparison) -> list[tuple[Row, Row]]:
    """Pairs of finished runs equal in every overridden config key except `comparison.key`.

    Args:
        rows: The rows of results.json.
        comparison: What to compare.

    Returns:
        (baseline run, alternative run) pairs, in row order.
    """
    column = f"config.{comparison.key}"
    finished = [row for row in rows if row.get("status") == "finished" and column in row]
    baseline, alternatives = comparison.baseline, comparison.alternatives
    if baseline is None:
        # Values may be lists or dicts (not hashable), so distinct values are found as JSON.
        values = sorted({json.dumps(row[column]) for row in finished})
        ordered = sorted((json.loads(value) for value in values), key=_natural_key)
        if len(ordered) < 2:
            return []
        baseline, alternatives = ordered[0], tuple(ordered[1:])

    def others(row: Row) -> str:
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
    before, after = as_number(before), as_number(after)
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
            f"{signed(deltas[0], kind)}."
        )
    mean_delta = signed(mean(deltas), kind)
    if all(delta > 0 for delta in deltas) or all(delta < 0 for delta in deltas):
        direction = "higher" if deltas[0] > 0 else "lower"
        pairs = "both pairs" if len(deltas) == 2 else f"all {len(deltas)} pairs"
        return f"In {pairs}, {change} gave {direction} {measured} (mean {mean_delta})."
    ups = sum(delta > 0 for delta in deltas)
    return (
        f"No consistent effect of {change} on {measured}: higher in {ups} of {len(deltas)} "
        f"pairs (mean {mean_delta})."
    )


def comparisons_for(rows: Sequence[Row]) -> list[Comparison]:
    """The known comparisons, then a plain one for every other key the study varies."""
    known = {comparison.key for comparison in COMPARISONS}
    extra = [
        Comparison(config_label(key[len("config.") :]).capitalize(), key[len("config.") :])
        for key in varying_keys(rows)
        if key[len("config.") :] not in known
    ]
    return [*COMPARISONS, *extra]


def comparison_pieces(rows: Sequence[Row], metric: str) -> list[Piece]:
    """The Comparisons section: per comparison with pairs, a heading, a table and sentences.

    Args:
        rows: The rows of results.json.
        metric: `tflite.<format>.<field>`; its format's size and latency are compared too.

    Returns:
        The pieces, or a paragraph saying that no two runs can be compared.
    """
    file_format = metric_format(metric)
    # (key, name, kind) of the delta columns: `points` deltas are differences in percentage
    # points, the others relative changes.
    columns = [
        ("keras.test_accuracy", "Keras accuracy", "points"),
        (metric, metric_label(metric), "points"),
        (f"tflite.{file_format}.gzip_bytes", f"{file_format} gzip size", "relative"),
        (f"tflite.{file_format}.latency_ms", f"{file_format} latency", "relative"),
        ("train.seconds", "training time", "relative"),
    ]
    pieces: list[Piece] = []
    for comparison in comparisons_for(rows):
        pairs = comparison_pairs(rows, comparison)
        if not pairs:
            continue
        column = f"config.{comparison.key}"
        label = config_label(comparison.key)
        pieces.append(Heading(f"{comparison.title} ({comparison.key})", level=3))
        table = []
        for before, after in pairs:
            deltas = [_delta(before.get(key), after.get(key), kind) for key, _, kind in columns]
            table.append(
                [
                    f"{before['name']} →\n{after['name']}",
                    f"{config_value(before[column])} → {config_value(after[column])}",
                    *[
                        MISSING if d is None else signed(d, kind)
                        for d, (_, _, kind) in zip(deltas, columns, strict=True)
                    ],
                ]
            )
        headers = ["baseline → changed run", label, *[f"Δ {name}" for _, name, _ in columns]]
        pieces.append(Table(headers, table))
        # The chosen metric always gets a sentence; the focus column when it is the point of
        # the comparison (e.g. mixed precision is about training time, not accuracy).
        sentence_columns = [1] + ([_FOCUS_COLUMNS[comparison.focus]] if comparison.focus else [])
        after_values = "/".join(dict.fromkeys(config_value(after[column]) for _, after in pairs))
        change = f"{label} {after_values} instead of {config_value(pairs[0][0][column])}"
        for index in sentence_columns:
            key, name, kind = columns[index]
            deltas = [_delta(before.get(key), after.get(key), kind) for before, after in pairs]
            sentence = _effect_sentence(change, [d for d in deltas if d is not None], kind, name)
            if sentence:
                pieces.append(Paragraph(sentence))
    if not pieces:
        pieces.append(Paragraph("No two runs differ in only one setting, so nothing is compared."))
    return pieces
