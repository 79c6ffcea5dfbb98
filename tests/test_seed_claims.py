"""The seed's claims, measured from the rows of a one-factor-at-a-time sweep."""

from compactcnn.report import seed_claims
from compactcnn.report.pieces import Heading, Table

CENTRE = {
    "config.model.name": "resnet20",
    "config.data.augment": True,
    "config.prune.final_sparsity": 0.7,
    "config.train.precision": "float32",
}


def _run(name: str, accuracy: float, seconds: float = 100.0, **changes) -> dict:
    config = {**CENTRE, **{f"config.{k.replace('__', '.')}": v for k, v in changes.items()}}
    return {
        "name": name,
        "status": "finished",
        **config,
        "keras.test_accuracy": accuracy,
        "train.seconds": seconds,
        "train.epochs": 8,
        "tflite.float32.gzip_bytes": 400_000
        if config["config.model.name"] == "resnet20"
        else 800_000,
        "tflite.float16.gzip_bytes": 220_000
        if config["config.model.name"] == "resnet20"
        else 700_000,
        "tflite.int8.gzip_bytes": 130_000 if config["config.model.name"] == "resnet20" else 260_000,
    }


def _rows(sparse_accuracy: float = 0.81, mixed_seconds: float = 125.0) -> list[dict]:
    return [
        _run("centre", 0.80),
        _run("noaugment", 0.50, data__augment=False),
        _run("sparsity0.6", sparse_accuracy, prune__final_sparsity=0.6),
        _run("mixed_bfloat16", 0.801, mixed_seconds, train__precision="mixed_bfloat16"),
        _run("resnet44", 0.83, model__name="resnet44"),
        {"name": "broken", "status": "failed", **CENTRE, "config.data.augment": False},
    ]


def _verdicts(rows) -> dict[str, tuple[str, str]]:
    return {row[0]: (row[2], row[3]) for row in seed_claims.claims_table(rows)}


def test_each_claim_is_measured_from_its_pairs_or_files():
    verdicts = _verdicts(_rows())
    assert verdicts["augmentation gives about 1.5x the test accuracy at equal sparsity"] == (
        "1.60x",
        "held",
    )
    assert verdicts["70% instead of 60% sparsity costs about 1 pt"] == ("1.00 pt", "held")
    # float32 / float16 gzip bytes: 400,000 / 220,000 (ResNet-20), 800,000 / 700,000 (ResNet-44).
    # The ResNet-20 value is the mean over its 4 finished runs, all alike here.
    resnet20 = verdicts["the quantized file is about 1.8x smaller (ResNet-20)"]
    assert resnet20 == ("1.82x (mean of 4: 1.82 to 1.82)", "held")
    assert verdicts["the quantized file is about 1.4x smaller (ResNet-44)"] == (
        "1.14x",
        "did not hold",
    )
    assert verdicts["(the same, with our best format, ResNet-20)"][1] == "held"
    # 100 s in float32, 125 s mixed: slower, so the speed claim fails; accuracy kept.
    assert verdicts["mixed precision trains about 1.2x faster"] == ("0.80x", "did not hold")
    assert verdicts["... without hurting accuracy (a cost of at most 0.5 pt)"] == (
        "-0.10 pt",
        "held",
    )


def test_a_gain_where_a_cost_was_claimed_does_not_hold_and_missing_pairs_are_said():
    rows = _rows(sparse_accuracy=0.795)  # 60% *less* accurate than 70%
    assert _verdicts(rows)["70% instead of 60% sparsity costs about 1 pt"] == (
        "-0.50 pt",
        "did not hold",
    )
    without_mixed = [row for row in rows if row["name"] != "mixed_bfloat16"]
    assert _verdicts(without_mixed)["mixed precision trains about 1.2x faster"] == (
        "-",
        "not measured",
    )


def test_the_section_names_the_limits_and_the_best_run_and_is_absent_without_runs():
    rows = _rows()
    pieces = seed_claims.seed_claim_pieces(rows, rows[4])
    assert isinstance(pieces[0], Heading) and pieces[0].text == "The seed's claims, measured"
    assert "8 epochs per run" in pieces[1].text and "JPEG" in pieces[1].text
    assert isinstance(pieces[2], Table) and len(pieces[2].rows) == len(seed_claims.CLAIMS)
    assert "this sweep's best is `resnet44` (model.name resnet44" in pieces[3].text
    assert seed_claims.seed_claim_pieces([], None) == []
    # A study that does not name the model: the size claims cannot say which network it is.
    unnamed = [{k: v for k, v in row.items() if k != "config.model.name"} for row in rows]
    sizes = [r for r in seed_claims.claims_table(unnamed) if "smaller" in r[0] or "same" in r[0]]
    assert {r[3] for r in sizes} == {"not measured"}
