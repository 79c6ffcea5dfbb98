"""One trial's run: a `compactcnn run` subprocess, watched until it finishes, fails or is pruned.

The run is a normal run directory in its own process, as in a sweep: TensorFlow state stays
isolated and the run locks its folder and resumes from its backup. On Linux the run is tied to
the tuning process (`PR_SET_PDEATHSIG`): a tuner killed even with SIGKILL takes its run down with
it, so the next launch finds the folder free and resumes it instead of racing a leftover.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compactcnn import files

ERROR_LINES = 20
POLL_SECONDS = 1.0
STOP_SECONDS = 30.0

# Runs in the child before `exec`: asks the kernel to send SIGTERM when the parent dies, then
# checks the parent is still the one that started it (it may have died before the request).
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(143)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)

# Called with (epoch, validation accuracy) for each finished epoch; True stops the run as pruned.
Pruning = Callable[[int, float], bool]


@dataclass
class Outcome:
    """How a trial's run ended.

    Attributes:
        status: `finished`, `failed` or `pruned`.
        metrics: The run's metrics.json when finished.
        error: The last lines of its stderr and the exit status when failed.
        seconds: Wall time of the run.
    """

    status: str
    metrics: dict[str, Any] | None = None
    error: str | None = None
    seconds: float = 0.0


def tied_to_parent(command: list[str]) -> list[str]:
    """`command` wrapped so that it dies with this process (Linux); elsewhere unchanged."""
    if not sys.platform.startswith("linux"):
        return command
    return [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *command]


def run(
    command: list[str], run_dir: Path, log_stem: Path, pruning: Pruning | None = None
) -> Outcome:
    """Runs one trial and waits for it; on failure writes `<run_dir>/error.txt`.

    Args:
        command: The `compactcnn run ...` command.
        run_dir: Its run directory.
        log_stem: Where its output goes: `<log_stem>.out` and `<log_stem>.err`.
        pruning: Asked after every epoch with validation accuracy, when the study prunes.

    Returns:
        The outcome. An interrupt (Ctrl-C, SIGTERM turned into KeyboardInterrupt) stops the run
        and propagates.
    """
    error_path = run_dir / "error.txt"
    error_path.unlink(missing_ok=True)  # A stale error from an earlier attempt would mislead.
    stderr_path = log_stem.with_suffix(".err")
    started = time.monotonic()
    pruned = False
    reported: set[int] = set()
    # Files, not pipes: a chatty run cannot block on a full pipe, and the logs stay for reading.
    with log_stem.with_suffix(".out").open("w") as stdout, stderr_path.open("w") as stderr:
        process = subprocess.Popen(tied_to_parent(command), stdout=stdout, stderr=stderr)
        try:
            while process.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=POLL_SECONDS)
                if pruning is not None and _should_prune(run_dir, reported, pruning):
                    pruned = True
                    break
        finally:
            _stop(process)
    seconds = time.monotonic() - started
    if pruned:
        return Outcome("pruned", seconds=seconds)
    metrics_path = run_dir / "metrics.json"
    if process.returncode == 0 and metrics_path.exists():
        return Outcome("finished", json.loads(metrics_path.read_text()), seconds=seconds)
    lines = stderr_path.read_text(errors="replace").splitlines()[-ERROR_LINES:]
    if process.returncode == 0:
        lines.append("the run exited with status 0 but wrote no metrics.json")
    else:
        lines.append(f"exit status {process.returncode}; full log: {stderr_path}")
    run_dir.mkdir(parents=True, exist_ok=True)
    files.write_text(error_path, "\n".join(lines) + "\n")
    return Outcome("failed", error="\n".join(lines), seconds=seconds)


def _stop(process: subprocess.Popen) -> None:
    """Terminates a run still going; it resumes from its backup if the trial runs again."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _should_prune(run_dir: Path, reported: set[int], pruning: Pruning) -> bool:
    """Feeds the epochs of history.csv not reported yet to `pruning`; True to stop the run."""
    for epoch, accuracy in validation_accuracy(run_dir / "history.csv"):
        if epoch in reported:
            continue
        reported.add(epoch)
        if pruning(epoch, accuracy):
            return True
    return False


def validation_accuracy(history_path: Path) -> list[tuple[int, float]]:
    """(epoch, val_accuracy) of each complete row of a history.csv being written."""
    if not history_path.is_file():
        return []
    text = history_path.read_text(errors="replace")
    # The last line may be half-written; only rows ended by a newline are complete.
    complete = text[: text.rfind("\n") + 1]
    points = []
    for row in csv.DictReader(complete.splitlines()):
        try:
            points.append((int(float(row["epoch"])), float(row["val_accuracy"])))
        except (KeyError, TypeError, ValueError):
            continue
    return points
