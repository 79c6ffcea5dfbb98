"""The seed study's claims, each beside what this sweep's runs measured, and whether it held.

The study compactcnn was modelled on reported five findings in its own words (issue 16). Each
claim here is measured from the runs of a sweep: the paired ones (equal but in one setting, as
in the Comparisons section) for the effect of a setting, each run's own files for the size of
quantization. A claim *held* when the measured effect points the claimed way and is at least
half the claimed size; the rule is printed with the table, so a reader can apply another.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import mean

from compactcnn.report.comparisons import Comparison, comparison_pairs
from compactcnn.report.formatting import as_number
from compactcnn.report.pieces import Heading, Paragraph, Piece, Table
from compactcnn.report.results import Row

ACCURACY = "keras.test_accuracy"
# The seed's post-training quantization halved the file, as float16 does; int8 is our best.
SEED_FORMAT, BEST_FORMAT = "float16", "int8"


@dataclass(frozen=True)
class Claim:
    """One finding of the seed study and how to measure it.

    Attributes:
        text: The claim, in the seed's words.
        claimed: The claimed effect, in `unit`.
        unit: `x` (a ratio, effect = ratio - 1) or `pt` (a difference in percentage points).
        measure: Per-observation values from the rows (a ratio or a difference).
        how: What was measured, for the table.
    """

    text: str
    claimed: float
    unit: str
    measure: Callable[[Sequence[Row]], list[float]]
    how: str


def _paired(
    key: str, before_value, after_value, effect: Callable[[Row, Row], float | None]
) -> Callable[[Sequence[Row]], list[float]]:
    """`effect(before, after)` of every pair of runs differing only in `key`."""

    def measure(rows: Sequence[Row]) -> list[float]:
        comparison = Comparison(key, key, before_value, (after_value,))
        values = [effect(before, after) for before, after in comparison_pairs(rows, comparison)]
        return [value for value in values if value is not None]

    return measure


def _ratio(top_row: str, top_key: str, bottom_key: str) -> Callable[[Row, Row], float | None]:
    """after[top] / before[bottom] (or before[top] / after[bottom] with `top_row` "before")."""

    def effect(before: Row, after: Row) -> float | None:
        top_source, bottom_source = (after, before) if top_row == "after" else (before, after)
        top, bottom = as_number(top_source.get(top_key)), as_number(bottom_source.get(bottom_key))
        return top / bottom if top is not None and bottom else None

    return effect


def _points_lost(before: Row, after: Row) -> float | None:
    """How many accuracy points `after` has fewer than `before`."""
    first, second = as_number(before.get(ACCURACY)), as_number(after.get(ACCURACY))
    return None if first is None or second is None else 100 * (first - second)


def _quantized_smaller(model: str, file_format: str) -> Callable[[Sequence[Row]], list[float]]:
    """float32 gzip bytes / `file_format` gzip bytes of each finished run of `model`."""

    def measure(rows: Sequence[Row]) -> list[float]:
        values = []
        for row in rows:
            # Only runs whose study names the model: a study that leaves it unset says nothing.
            if row.get("status") != "finished" or row.get("config.model.name") != model:
                continue
            full = as_number(row.get("tflite.float32.gzip_bytes"))
            small = as_number(row.get(f"tflite.{file_format}.gzip_bytes"))
            if full and small:
                values.append(full / small)
        return values

    return measure


CLAIMS = (
    Claim(
        "augmentation gives about 1.5x the test accuracy at equal sparsity",
        1.5,
        "x",
        _paired("data.augment", False, True, _ratio("after", ACCURACY, ACCURACY)),
        "Keras test accuracy, augmented / not, paired runs",
    ),
    Claim(
        "70% instead of 60% sparsity costs about 1 pt",
        1.0,
        "pt",
        _paired("prune.final_sparsity", 0.6, 0.7, _points_lost),
        "Keras test accuracy, 60% - 70%, paired runs",
    ),
    Claim(
        "the quantized file is about 1.8x smaller (ResNet-20)",
        1.8,
        "x",
        _quantized_smaller("resnet20", SEED_FORMAT),
        f"gzip bytes, float32 / {SEED_FORMAT} file of each ResNet-20 run",
    ),
    Claim(
        "the quantized file is about 1.4x smaller (ResNet-44)",
        1.4,
        "x",
        _quantized_smaller("resnet44", SEED_FORMAT),
        f"gzip bytes, float32 / {SEED_FORMAT} file of each ResNet-44 run",
    ),
    Claim(
        "(the same, with our best format, ResNet-20)",
        1.8,
        "x",
        _quantized_smaller("resnet20", BEST_FORMAT),
        f"gzip bytes, float32 / {BEST_FORMAT} file of each ResNet-20 run",
    ),
    Claim(
        "(the same, with our best format, ResNet-44)",
        1.4,
        "x",
        _quantized_smaller("resnet44", BEST_FORMAT),
        f"gzip bytes, float32 / {BEST_FORMAT} file of each ResNet-44 run",
    ),
    Claim(
        "mixed precision trains about 1.2x faster",
        1.2,
        "x",
        _paired(
            "train.precision",
            "float32",
            "mixed_bfloat16",
            _ratio("before", "train.seconds", "train.seconds"),
        ),
        "training seconds, float32 / mixed_bfloat16, paired runs",
    ),
    Claim(
        "... without hurting accuracy (a cost of at most 0.5 pt)",
        0.5,
        "pt-max",
        _paired("train.precision", "float32", "mixed_bfloat16", _points_lost),
        "Keras test accuracy, float32 - mixed_bfloat16, paired runs",
    ),
)


def verdict(claim: Claim, values: list[float]) -> str:
    """`held`, `did not hold`, or `not measured` (no runs to measure it on)."""
    if not values:
        return "not measured"
    measured = mean(values)
    if claim.unit == "x":
        held = measured - 1 >= (claim.claimed - 1) / 2
    elif claim.unit == "pt":
        held = measured >= claim.claimed / 2
    else:  # pt-max: a cost that must stay below the bound
        held = measured <= claim.claimed
    return "held" if held else "did not hold"


def _shown(claim: Claim, values: list[float]) -> str:
    if not values:
        return "-"
    unit = "x" if claim.unit == "x" else " pt"
    text = f"{mean(values):.2f}{unit}"
    if len(values) > 1:
        text += f" (mean of {len(values)}: {min(values):.2f} to {max(values):.2f})"
    return text


def claims_table(rows: Sequence[Row]) -> list[list[str]]:
    """One row per claim: the claim, what was measured, the value, the verdict."""
    table = []
    for claim in CLAIMS:
        values = claim.measure(rows)
        table.append([claim.text, claim.how, _shown(claim, values), verdict(claim, values)])
    return table


def _best_sentence(best: Row | None) -> str:
    if best is None:
        return ""
    settings = ", ".join(
        f"{key[len('config.') :]} {best[key]}"
        for key in (
            "config.model.name",
            "config.data.augment",
            "config.prune.final_sparsity",
            "config.prune.schedule",
        )
        if key in best
    )
    return (
        "The seed's best model was ResNet-44 with augmentation and 60% polynomial sparsity; "
        f"this sweep's best is `{best.get('name')}` ({settings})."
    )


def seed_claim_pieces(rows: Sequence[Row], best: Row | None) -> list[Piece]:
    """The section "The seed's claims, measured", or nothing when no claim has runs.

    Args:
        rows: The rows of results.json.
        best: The run the report chose as best, for the fifth claim.
    """
    table = claims_table(rows)
    counts = sorted({int(e) for row in rows if (e := as_number(row.get("train.epochs")))})
    epochs = f"{' or '.join(map(str, counts)) or 'unknown'} epochs per run"
    if all(row[-1] == "not measured" for row in table):
        return []
    return [
        Heading("The seed's claims, measured"),
        Paragraph(
            "Each claim of the study this tool was modelled on, beside what this sweep "
            "measured. A claim held when the measured effect points the claimed way and is at "
            "least half the claimed size (a ratio r counts by r - 1). "
            f"The seed's quantization is taken to be post-training {SEED_FORMAT} (it halves the "
            f"file, as the seed's did); the {BEST_FORMAT} file is our best format. "
            f"Limits: {epochs}, one seed per setting unless a range is shown, "
            "and the JPEG (quality 75) re-encoding of CIFAR-10."
        ),
        Table(["claim", "measured as", "measured", "verdict"], table),
        Paragraph(_best_sentence(best)),
    ]
