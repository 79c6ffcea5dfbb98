"""Report: Pareto front, best-model choice, comparisons, charts and the written files."""

import json
import re

import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

from compactcnn import report, sweep
from compactcnn.errors import UserError

# name: (model, schedule, int8 accuracy, int8 bytes, int8 gzip bytes, int8 latency ms)
RUNS = {
    "r20-constant": ("resnet20", "constant", 0.80, 100_000, 40_000, 2.0),
    "r20-polynomial": ("resnet20", "polynomial", 0.85, 100_000, 38_000, 2.0),
    "r44-constant": ("resnet44", "constant", 0.86, 200_000, 70_000, 4.0),
    "r44-polynomial": ("resnet44", "polynomial", 0.88, 200_000, 72_000, 4.1),
}


def _metrics(model, schedule, accuracy, size, gzip_size, latency):
    precision = "float32" if model == "resnet20" else "mixed_bfloat16"
    file_metrics = {
        "path": "tflite/int8.tflite",
        "accuracy": accuracy,
        "bytes": size,
        "gzip_bytes": gzip_size,
        "latency_ms": latency,
        "threads": 2,
        "agreement": 0.99,
        "zeros_fraction": 0.7,
        "input_dtype": "uint8",
        "compression_bytes": 4 * 100_000 / size,
        "compression_gzip": None,
    }
    return {
        "run": {"model": model, "data": "cifar10", "num_classes": 10, "precision": precision},
        "keras": {"test_accuracy": accuracy + 0.01, "test_loss": 0.5, "params": 270_000},
        "train": {
            "seconds": 100.0 if model == "resnet20" else 200.0,
            "images_per_second": 500.0,
            "epochs": 3,
            "steps": 30,
            "precision": precision,
        },
        "pruning": {
            "schedule": schedule,
            "target_sparsity": 0.7,
            "overall_sparsity": 0.69,
            "layers": {
                f"conv{i}": {"params": 100, "zeros": 60 + i, "sparsity": 0.6 + i / 100}
                for i in range(4)
            },
        },
        "tflite": {
            "int8": file_metrics,
            "float32": {
                "accuracy": accuracy + 0.01,
                "bytes": 4 * 100_000,
                "gzip_bytes": float("nan"),
            },
        },
        "baseline": {"dense_float32_bytes": 400_000, "dense_float32_gzip_bytes": 370_000},
    }


@pytest.fixture
def sweep_dir(tmp_path):
    """Four finished fake runs (model x schedule) and one failed run, with results.json."""
    points = []
    for name, (model, schedule, *numbers) in RUNS.items():
        points.append(sweep.Point(name, {"model.name": model, "prune.schedule": schedule}, []))
        run_dir = tmp_path / "runs" / name
        (run_dir / "tflite").mkdir(parents=True)
        (run_dir / "tflite" / "int8.tflite").write_bytes(name.encode() * 10)
        (run_dir / "metrics.json").write_text(json.dumps(_metrics(model, schedule, *numbers)))
        history = ["epoch,step,loss,accuracy,val_loss,val_accuracy,lr,sparsity"]
        history += [
            f"{e},{10 * (e + 1)},{2 - e / 2},{0.3 + e / 5},{2.1 - e / 2},{0.25 + e / 5},"
            f"0.1,{0.2 * (e + 1)}"
            for e in range(3)
        ]
        (run_dir / "history.csv").write_text("\n".join(history) + "\n")
        schedule_lines = ["step,target_sparsity"] + [
            f"{s},{min(0.7, s / 30)}" for s in range(0, 31, 5)
        ]
        (run_dir / "pruning_schedule.csv").write_text("\n".join(schedule_lines) + "\n")
    points.append(
        sweep.Point("r44-broken", {"model.name": "resnet44", "prune.schedule": "none"}, [])
    )
    (tmp_path / "runs" / "r44-broken").mkdir()
    (tmp_path / "runs" / "r44-broken" / "error.txt").write_text(
        "Traceback\nValueError: boom\nexit status 1; full log: x\n"
    )
    sweep.write_results(tmp_path, sweep.collect_results(tmp_path, points))
    return tmp_path


def _row(name, accuracy, size, gzip_size, latency, status="finished"):
    return {
        "name": name,
        "status": status,
        "tflite.int8.accuracy": accuracy,
        "tflite.int8.bytes": size,
        "tflite.int8.gzip_bytes": gzip_size,
        "tflite.int8.latency_ms": latency,
    }


HAND_MADE = [
    _row("a", 0.90, 300, 100, 5.0),
    _row("b", 0.85, 150, 90, 2.0),
    _row("c", 0.85, 150, 80, 3.0),
    _row("d", None, 100, 50, 1.0),
    _row("e", 0.99, 10, 5, 0.1, status="failed"),
]


def test_pareto_front_keeps_only_undominated_points():
    points = [(10, 0.5), (20, 0.7), (15, 0.4), (20, 0.6), (30, 0.7), (5, 0.5), (40, 0.9)]
    assert report.pareto_front(points) == [5, 1, 6]
    assert report.pareto_front([(1, 0.5), (1, 0.5)]) == [0, 1]
    assert report.pareto_front([]) == []


@pytest.mark.parametrize(
    "max_bytes, max_latency_ms, best",
    [(None, None, "a"), (200, None, "c"), (200, 2.5, "b"), (300, 5.0, "a"), (None, 4.0, "c")],
)
def test_choose_best_respects_budgets_and_breaks_ties_by_gzip_size(max_bytes, max_latency_ms, best):
    chosen = report.choose_best(HAND_MADE, "tflite.int8.accuracy", max_bytes, max_latency_ms)
    assert chosen["name"] == best


def test_choose_best_breaks_full_ties_by_name():
    rows = [_row("z", 0.8, 100, 50, 1.0), _row("y", 0.8, 100, 50, 1.0)]
    assert report.choose_best(rows)["name"] == "y"


@pytest.mark.parametrize(
    "metric, max_bytes, message",
    [
        (
            "tflite.int8.accuracy",
            100,
            r"no int8 model fits the budget \(bytes <= 100\): the smallest is 150 bytes",
        ),
        ("keras.test_accuracy", None, "must be tflite.<format>.<field>"),
        ("tflite.float16.accuracy", None, "no finished run has 'tflite.float16.accuracy'"),
    ],
)
def test_choose_best_errors_are_one_line(metric, max_bytes, message):
    with pytest.raises(UserError, match=message) as error:
        report.choose_best(HAND_MADE, metric, max_bytes)
    assert "\n" not in str(error.value)


def test_choose_best_when_no_run_finished():
    with pytest.raises(UserError, match="no run of the sweep has finished"):
        report.choose_best([HAND_MADE[-1]])


def test_comparison_pairs_only_runs_that_differ_in_one_key(sweep_dir):
    rows = report.load_results(sweep_dir)
    schedule = report.COMPARISONS[0]
    pairs = report.comparison_pairs(rows, schedule)
    assert [(a["name"], b["name"]) for a, b in pairs] == [
        ("r20-constant", "r20-polynomial"),
        ("r44-constant", "r44-polynomial"),
    ]
    architecture = next(c for c in report.COMPARISONS if c.key == "model.name")
    assert len(report.comparison_pairs(rows, architecture)) == 2
    augment = next(c for c in report.COMPARISONS if c.key == "data.augment")
    assert report.comparison_pairs(rows, augment) == []


def test_write_report_writes_tables_charts_html_and_best_model(sweep_dir):
    path = report.write_report(sweep_dir)

    assert path == sweep_dir / "report.md"
    markdown = path.read_text()
    for name in [*RUNS, "r44-broken"]:
        assert name in markdown
    assert "failed: ValueError: boom" in markdown
    assert "nan" not in markdown.lower() and "{" not in markdown
    assert "| r20-polynomial | float32 | 86.00% | — |" in markdown  # Missing agreement -> —.
    assert "Polynomial vs constant" in markdown and "+5.00 pp" in markdown
    assert (
        "In both pairs, schedule polynomial instead of constant gave higher "
        "int8 accuracy (mean +3.50 pp)." in markdown
    )
    assert "Augmentation" not in markdown  # No pair differs only in data.augment.
    # Column headers are words; the settings the study varies are columns of the runs table.
    assert "| run | status | model | schedule | Keras accuracy | int8 accuracy |" in markdown
    assert "tflite.int8.accuracy |" not in markdown
    assert "| r44-polynomial | finished | resnet44 | polynomial | 89.00% | 88.00% |" in markdown
    # The best model comes first, with the reason it was chosen and the runner-up.
    assert markdown.index("## Best model") < markdown.index("## Runs")
    assert "**r44-polynomial** (model resnet44, schedule polynomial), int8 file: 88.00%" in markdown
    assert "highest int8 accuracy of the 4 measured runs" in markdown
    assert "The runner-up, r44-constant, has 86.00%." in markdown

    charts = sorted((sweep_dir / "charts").glob("*.png"))
    assert [chart.stem for chart in charts] == sorted(
        [
            "accuracy_vs_size",
            "training_curves",
            "sparsity_schedule",
            "layer_sparsity",
            "size_by_format",
            "training_time",
        ]
    )
    for chart in charts:
        pixels = imread(chart)
        assert pixels.shape[0] > 100 and pixels[..., :3].std() > 0.01, chart.name
    page = (sweep_dir / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == len(charts)
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert "charts/" not in text and "nan" not in text.lower() and "r44-broken" in text

    best = sweep_dir / "best"
    assert (best / "model.tflite").read_bytes() == b"r44-polynomial" * 10
    summary = json.loads((best / "best.json").read_text())
    assert summary["name"] == "r44-polynomial" and summary["value"] == 0.88
    card = (best / "MODEL_CARD.md").read_text()
    for text in ("resnet44", "cifar10", "88.00%", "200,000", "Intended use", "Limits", "4.1 ms"):
        assert text in card, text
    assert "nan" not in card.lower() and "None" not in card


def test_write_report_with_budget_replaces_the_best_model(sweep_dir):
    report.write_report(sweep_dir)
    report.write_report(sweep_dir, max_bytes=150_000, max_latency_ms=3)

    assert sorted(p.name for p in (sweep_dir / "best").iterdir()) == [
        "MODEL_CARD.md",
        "best.json",
        "model.tflite",
    ]
    assert json.loads((sweep_dir / "best" / "best.json").read_text())["name"] == "r20-polynomial"


def test_write_report_when_nothing_fits_writes_nothing(sweep_dir):
    with pytest.raises(UserError, match="no int8 model fits"):
        report.write_report(sweep_dir, max_bytes=10)
    assert not (sweep_dir / "report.md").exists()
    assert not (sweep_dir / "best").exists()


def test_write_report_without_results_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="results.json' not found"):
        report.write_report(tmp_path)


def test_every_chart_has_plotted_data_and_empty_inputs_give_no_chart(sweep_dir):
    rows = report.load_results(sweep_dir)
    history = report._read_csv(sweep_dir / "runs" / "r20-constant" / "history.csv")
    schedule = report._read_csv(sweep_dir / "runs" / "r20-constant" / "pruning_schedule.csv")
    layers = json.loads((sweep_dir / "runs" / "r20-constant" / "metrics.json").read_text())
    figures = [
        report.plot_accuracy_vs_size(rows),
        report.plot_training_curves({"r20-constant": history}),
        report.plot_sparsity_schedule({"r20-constant": schedule}, {"r20-constant": history}),
        report.plot_layer_sparsity({"r20-constant": layers["pruning"]["layers"]}),
        report.plot_size_by_format(rows),
        report.plot_training_time(rows),
    ]
    for figure in figures:
        assert figure is not None and report.figure_has_data(figure)
        for axes in figure.axes:
            assert axes.get_xlabel() and axes.get_ylabel()
            assert axes.get_legend() is not None or axes is figure.axes[0]
    assert report.plot_accuracy_vs_size([]) is None
    assert report.plot_training_curves({"x": []}) is None
    assert report.plot_sparsity_schedule({}, {"x": history[:0]}) is None
    assert report.plot_layer_sparsity({}) is None
    assert report.plot_size_by_format([]) is None
    assert report.plot_training_time([]) is None
    one_precision = [row for row in rows if row.get("run.model") == "resnet20"]
    assert report.plot_training_time(one_precision) is None  # One bar compares nothing.
    empty = Figure()
    empty.add_subplot()
    assert not report.figure_has_data(empty)


def test_budgeted_report_states_the_budget_and_how_many_runs_fit(sweep_dir):
    markdown = report.write_report(sweep_dir, max_bytes=150_000, max_latency_ms=3).read_text()

    assert "**r20-polynomial**" in markdown
    assert (
        "highest int8 accuracy of the 2 of 4 measured runs whose int8 file fits the budget "
        "(size ≤ 146.5 KiB, latency ≤ 3 ms)" in markdown
    )
    card = (sweep_dir / "best" / "MODEL_CARD.md").read_text()
    assert "size ≤ 146.5 KiB, latency ≤ 3 ms" in card


def test_a_single_pair_is_called_a_single_observation(sweep_dir):
    rows = [row for row in report.load_results(sweep_dir) if row["name"] != "r44-polynomial"]
    blocks = report._comparison_blocks(rows, "tflite.int8.accuracy")
    sentences = [block.text for block in blocks if isinstance(block, report.Paragraph)]

    assert (
        "One pair only, a single observation: schedule polynomial instead of constant "
        "changed int8 accuracy by +5.00 pp." in sentences
    )
    assert not any("In both pairs" in sentence for sentence in sentences)


def test_runs_with_identical_sparsity_share_one_labelled_line():
    same = {"conv0": {"sparsity": 0.7}, "conv1": {"sparsity": 0.7}}
    other = {"conv0": {"sparsity": 0.5}, "conv1": {"sparsity": 0.6}}
    figure = report.plot_layer_sparsity({"a": same, "b": dict(same), "c": other})

    labels = [line.get_label() for line in figure.axes[0].lines]
    assert labels == ["a, b", "c"]
    schedule = [{"step": 0.0, "target_sparsity": 0.0}, {"step": 10.0, "target_sparsity": 0.7}]
    runs = {name: schedule for name in ("a", "b", "c", "d")}
    figure = report.plot_sparsity_schedule(runs, {})
    assert [line.get_label() for line in figure.axes[0].lines] == ["a and 3 more runs"]


def test_labels_are_words():
    assert report.metric_label("tflite.int8.latency_ms") == "int8 latency ms"
    assert report.metric_label("keras.test_accuracy") == "Keras accuracy"
    assert report.config_label("model.name") == "model"
    assert report.config_label("prune.final_sparsity") == "final sparsity"
