"""The real tiny tuning study: `compactcnn tune` killed with SIGKILL mid-trial, resumed, reported.

One study serves every check (each trial costs ~20-30 s of CPU on the bundled sample): it is
killed as soon as its first trial has a backup, started again to the end, reported on, and
launched once more (nothing left to do).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parent.parent
STUDY = ROOT / "configs" / "studies" / "tune_tiny.yaml"
pytestmark = pytest.mark.slow


def _command(*args) -> list[str]:
    return [sys.executable, "-m", "compactcnn", *map(str, args)]


def _environment() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "3"}


def _processes_naming(folder: Path) -> list[int]:
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


def test_tiny_study_killed_mid_trial_resumes_reports_and_is_not_redone(tmp_path):
    out = tmp_path / "tune"
    checkpoint = out / "runs" / "trial-0" / "backup" / "chief" / "checkpoint"

    # 1. SIGKILL `tune` once its first trial has backed up an epoch.
    first = subprocess.Popen(
        _command("tune", STUDY, "--out", out),
        env=_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 600
    while not checkpoint.exists():
        assert first.poll() is None, first.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no backup of trial-0 within 10 minutes"
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    # The trial's run died with its tuner: nothing keeps writing into the folder.
    deadline = time.monotonic() + 30
    while _processes_naming(out) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _processes_naming(out)

    # 2. Started again: the interrupted trial resumes (as trial-1, in trial-0's folder) from its
    # backup, then the study finishes.
    second = subprocess.run(
        _command("tune", STUDY, "--out", out),
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert "trial-1 resumes trial-0" in second.stdout
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{out}/optuna.db"
    study = optuna.load_study(study_name="tune_tiny", storage=storage)
    states = [trial.state for trial in study.trials]
    assert states == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE], states
    assert study.trials[1].user_attrs["resumes_trial"] == 0
    assert study.trials[1].params == study.trials[0].params
    assert sorted(path.name for path in (out / "runs").iterdir()) == ["trial-1", "trial-2"]
    # The resumed run kept its first epoch: two epochs in history.csv, trained in two sittings.
    history = (out / "runs" / "trial-1" / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["0", "1"]

    # 3. The report's Pareto front is the storage's.
    report = subprocess.run(
        _command("report", out), env=_environment(), capture_output=True, text=True
    )
    assert report.returncode == 0, report.stderr[-3000:]
    text = (out / "report.md").read_text()
    section = text.split("### Pareto front of the trials", 1)[1].split("###", 1)[0]
    lines = [line for line in section.splitlines() if "| trial-" in line]
    front = sorted(line.split("|")[2].strip() for line in lines)
    assert front == sorted(f"trial-{trial.number}" for trial in study.best_trials)
    rows = json.loads((out / "results.json").read_text())
    assert [row["name"] for row in rows] == ["trial-1", "trial-2"]
    for stem in ("tuning_pareto", "tuning_history"):
        assert (out / "charts" / f"{stem}.png").is_file()

    # 4. Once more: nothing is rerun.
    finished = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/metrics.json")}
    third = subprocess.run(
        _command("tune", STUDY, "--out", out), env=_environment(), capture_output=True, text=True
    )
    assert third.returncode == 0, third.stderr[-3000:]
    assert "2 of 2 trials finished" in third.stdout
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/metrics.json")} == finished
    assert len(optuna.load_study(study_name="tune_tiny", storage=storage).trials) == 3
