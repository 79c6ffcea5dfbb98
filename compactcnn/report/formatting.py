"""Values and keys as a reader reads them: percentages, KiB, milliseconds, words for keys.

Every formatter takes any value from results.json and returns text; a missing, non-numeric or
non-finite value becomes `MISSING`, so no table or sentence ever shows `None` or `nan`.
"""

from __future__ import annotations

import math
from typing import Any

MISSING = "—"


def as_number(value: Any) -> float | None:
    """Returns `value` as a finite float, or None for anything that is not a usable number."""
    # bool is an int subclass, but True is not a measurement.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def percent(value: Any, digits: int = 2) -> str:
    """A fraction as a percentage: 0.8812 -> `88.12%`."""
    number = as_number(value)
    return MISSING if number is None else f"{100 * number:.{digits}f}%"


def sparsity(value: Any) -> str:
    """A share of zero weights, to one decimal: 0.695 -> `69.5%`."""
    return percent(value, 1)


def kibibytes(value: Any) -> str:
    """Bytes in KiB (1024 bytes): 150000 -> `146.5 KiB`."""
    number = as_number(value)
    return MISSING if number is None else f"{number / 1024:,.1f} KiB"


def ratio(value: Any) -> str:
    """How many times smaller: 3.9 -> `3.90×`."""
    number = as_number(value)
    return MISSING if number is None else f"{number:.2f}×"


def milliseconds(value: Any) -> str:
    """A latency with three significant digits: 4.1 -> `4.1 ms`."""
    number = as_number(value)
    return MISSING if number is None else f"{number:.3g} ms"


def seconds(value: Any) -> str:
    """A duration: 100 -> `100.0 s`."""
    number = as_number(value)
    return MISSING if number is None else f"{number:,.1f} s"


def integer(value: Any) -> str:
    """A count with thousands separators: 270000 -> `270,000`."""
    number = as_number(value)
    return MISSING if number is None else f"{number:,.0f}"


def text(value: Any) -> str:
    """A plain value as text; containers and NaN, which read as noise, become `MISSING`."""
    if value is None or isinstance(value, (dict, list)) or _is_nan(value):
        return MISSING
    return str(value)


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def signed(value: float, kind: str) -> str:
    """A delta: accuracy-like values in percentage points, sizes and times relative (%).

    Args:
        value: The difference (kind `points`) or relative change (any other kind).
        kind: `points` for percentage points, else a relative change.
    """
    return f"{100 * value:+.2f} pp" if kind == "points" else f"{100 * value:+.1f}%"


def config_value(value: Any) -> str:
    """A config value as a reader writes it: yes/no, comma-separated lists, plain numbers."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(config_value(item) for item in value) or MISSING
    if isinstance(value, float) and len(str(value)) > 8:
        # A tuner's 0.6292881023563949: a reader writes 0.6293.
        return f"{value:.4g}"
    return text(value)


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
