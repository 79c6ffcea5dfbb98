"""The real quick study: `compactcnn sweep` interrupted and resumed, `compactcnn report`, re-run.

One sweep serves every check (each run costs ~20-30 s of CPU): it is stopped with SIGTERM right
after its first run finishes, resumed to the end, reported on, then launched once more.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from matplotlib.image import imread

from compactcnn import sweep

ROOT = Path(__file__).resolve().parent.parent
STUDY = ROOT / "configs" / "studies" / "quick.yaml"
pytestmark = pytest.mark.slow


def command(*args):
    return [sys.executable, "-m", "compactcnn", *args]


@pytest.fixture
def environment():
    # $COMPACTCNN_DATA stays the session's shared cache (conftest.py).
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def finished_runs(out: Path) -> dict[str, int]:
    """Run name -> mtime (ns) of its metrics.json, for every finished run."""
    return {path.parent.name: path.stat().st_mtime_ns for path in out.glob("runs/*/metrics.json")}


def processes_writing_to(folder: Path) -> list[int]:
    """Ids of live processes whose command line names `folder` (only this test's runs do)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            arguments = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if entry.name.isdigit() and str(folder) in arguments:
            found.append(int(entry.name))
    return found


def test_quick_study_interrupted_resumed_reported_and_not_redone(tmp_path, environment):
    names = [point.name for point in sweep.load_study(STUDY).points]
    assert len(names) >= 2
    out = tmp_path / "sweep"

    # 1. SIGTERM the sweep as soon as its first run has finished.
    first = subprocess.Popen(
        command("sweep", str(STUDY), "--out", str(out)),
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not finished_runs(out) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert first.poll() is None, f"sweep ended before any run finished:\n{first.stdout.read()}"
    first.send_signal(signal.SIGTERM)
    first_output = first.communicate(timeout=60)[0]
    assert first.returncode == 130, first_output
    assert "run the same command again to resume" in first_output
    finished_before = finished_runs(out)
    assert len(finished_before) == 1, first_output
    assert not (out / "results.json").exists()
    # The sweep stopped the run it had started: nothing keeps writing into the sweep folder.
    time.sleep(0.5)
    assert processes_writing_to(out / "runs") == []

    # 2. The second launch skips the finished run and completes the others.
    resumed = subprocess.run(
        command("sweep", str(STUDY), "--out", str(out)),
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"1 of {len(names)} runs already finished" in resumed.stdout
    started = re.findall(r"sweep: start (\S+)", resumed.stdout)
    assert sorted(started) == sorted(set(names) - set(finished_before))
    finished = finished_runs(out)
    assert sorted(finished) == sorted(names)
    assert {name: finished[name] for name in finished_before} == finished_before
    rows = json.loads((out / "results.json").read_text())
    assert [row["name"] for row in rows] == names
    assert {row["status"] for row in rows} == {"finished"}
    for row in rows:
        assert 0 <= row["tflite.int8.accuracy"] <= 1
        assert row["tflite.int8.bytes"] < row["tflite.float32.bytes"]
        assert row["config.prune.schedule"] in ("constant", "polynomial")
    csv_header = (out / "results.csv").read_text().splitlines()[0]
    assert "tflite.int8.gzip_bytes" in csv_header and "config.prune.final_sparsity" in csv_header

    # 3. The report: tables, charts with data, a readable page and the best model.
    reported = subprocess.run(
        command("report", str(out)),
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert reported.returncode == 0, reported.stderr
    markdown = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+|<style>.*?</style>", "", page, flags=re.S)
    for document in (markdown, text):
        for name in names:
            assert name in document
        assert not re.search(r"\bnan\b|\bNone\b|\{|'[a-z_]+':", document, re.IGNORECASE)
        assert "Best model" in document and "Pareto" in document
        assert "schedule polynomial instead of constant" in document
        assert "final sparsity 0.7 instead of 0.6" in document
        # The seed's claims, measured: the study pairs 60% with 70%, so that one is measured.
        assert "claims, measured" in document  # (the page escapes the apostrophe)
        assert "70% instead of 60% sparsity costs about 1 pt" in document
    assert "tflite.int8.accuracy |" not in markdown  # Column headers are words, not keys.
    charts = sorted((out / "charts").glob("*.png"))
    assert {chart.stem for chart in charts} >= {
        "accuracy_vs_size",
        "size_by_format",
        "training_curves",
        "sparsity_schedule",
        "layer_sparsity",
    }
    for chart in charts:
        pixels = imread(chart)[..., :3]
        # Plotted data is coloured; axes, text and background are grey levels only.
        colourful = (pixels.max(axis=2) - pixels.min(axis=2)) > 0.2
        assert colourful.sum() > 400, chart.name
    assert page.count("src='data:image/png;base64,") == len(charts)

    best = json.loads((out / "best" / "best.json").read_text())
    assert best["name"] in names
    assert best["value"] == max(row["tflite.int8.accuracy"] for row in rows)
    chosen = out / "runs" / best["name"] / "tflite" / "int8.tflite"
    assert (out / "best" / "model.tflite").read_bytes() == chosen.read_bytes()
    card = (out / "best" / "MODEL_CARD.md").read_text()
    assert best["name"] in card and "Intended use" in card and "Limits" in card
    assert f"**{best['name']}**" in markdown

    # 4. Launching the finished sweep again redoes nothing and returns quickly.
    started_at = time.monotonic()
    again = subprocess.run(
        command("sweep", str(STUDY), "--out", str(out)),
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr
    assert time.monotonic() - started_at < 30
    assert f"{len(names)} of {len(names)} runs already finished" in again.stdout
    assert "sweep: start" not in again.stdout
    assert finished_runs(out) == finished
