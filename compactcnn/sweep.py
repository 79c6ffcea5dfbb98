"""Study grid -> one run directory per point, each run a subprocess; resumable; results table.

A study YAML names a base config and a grid of `--set` overrides:

    base: ../sample_scratch.yaml          # relative to the study file
    set: {train.epochs: 2}            # optional, applied to every point
    grid: {prune.schedule: [constant, polynomial], prune.final_sparsity: [0.6, 0.7]}
    sample: 3                         # optional: a seeded random subset of the grid points
    seed: 0                           # optional: seed of that subset

or, instead of `grid`, one factor at a time around a centre point (the base with `set:`, which
may name the varied keys too, for their centre values):

    vary: {model.name: [resnet44], prune.final_sparsity: [0.6]}   # centre + 2 runs

Each `vary` run changes one key of the centre; the centre's own value of every varied key is
written out, so the runs are points of the grid `{key: [centre value, *values]}` and the report
pairs each with the centre as it pairs grid points.

Every point is validated with `load_config` before anything runs. Each point runs as
`python -m compactcnn run BASE --set k=v ... --out DIR/runs/<name>` in its own process, which
isolates TensorFlow state and crashes. A run is finished iff its `metrics.json` exists, so a
re-launched sweep skips finished runs and re-launches the others (which resume from their backup).
An interrupted sweep (Ctrl-C, or SIGTERM from `kill` or a scheduler) stops its running runs
before it exits, so no orphaned run keeps writing into a directory that the next launch resumes.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
import random
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from compactcnn import files, ownership
from compactcnn.config import load_config, read_study_file, to_dict
from compactcnn.errors import UserError

STUDY_KEYS = ("base", "description", "grid", "sample", "seed", "set", "vary")
CENTRE_NAME = "centre"
DEFAULT_SWEEPS_DIR = Path("runs/sweeps")
ERROR_LINES = 20
MAX_NAME_LENGTH = 80

# Short readable labels for keys whose leaf name is long; other keys use their leaf name.
KEY_LABELS = {
    "final_sparsity": "sparsity",
    "initial_sparsity": "initsparsity",
    "learning_rate": "lr",
    "batch_size": "batch",
    "weight_decay": "wd",
    "label_smoothing": "smoothing",
    "validation_size": "val",
}

# `_execute`'s answer for a run another process holds.
TAKEN = "taken"
OTHER_PROCESS_POLL_SECONDS = 2.0
CommandBuilder = Callable[[Path, list[str], Path], list[str]]


class _Runs:
    """The run processes in flight, so that an interrupted sweep can stop them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.processes: set[subprocess.Popen] = set()
        self.stopping = False

    def start(self, command: list[str], stdout: Any, stderr: Any) -> subprocess.Popen | None:
        """Starts one run, or returns None once the sweep is stopping."""
        with self.lock:
            if self.stopping:
                return None
            process = subprocess.Popen(command, stdout=stdout, stderr=stderr)
            self.processes.add(process)
            return process

    def finish(self, process: subprocess.Popen) -> None:
        with self.lock:
            self.processes.discard(process)

    def stop(self) -> None:
        """Terminates every running run; each resumes from its backup at the next launch."""
        with self.lock:
            self.stopping = True
            for process in self.processes:
                process.terminate()


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    # SIGTERM takes the same path as Ctrl-C: stop the runs, print how to resume, exit.
    raise KeyboardInterrupt


@dataclass
class Point:
    """One grid point: its run name and the `key=value` overrides that define it.

    Attributes:
        name: Run directory name, unique within the study.
        values: The overridden config keys (fixed `set:` keys first, then grid keys) and values.
        overrides: The same as `key=value` texts for `load_config` and `--set`.
    """

    name: str
    values: dict[str, Any]
    overrides: list[str]


@dataclass
class Study:
    """A validated study: base config, overrides and the expanded points.

    Attributes:
        path: The study file.
        base: Absolute path of the base config.
        fixed: The `set:` overrides applied to every point.
        grid: Config key -> list of values.
        sample: Number of grid points drawn at random, or None for all of them.
        seed: Seed of that draw.
        points: The points to run, in grid order.
    """

    path: Path
    base: Path
    fixed: dict[str, Any]
    grid: dict[str, list[Any]]
    sample: int | None
    seed: int
    points: list[Point]


def build_command(base: Path, overrides: list[str], run_dir: Path) -> list[str]:
    """Returns the command that executes one run in a fresh Python process."""
    from compactcnn.cli import run_command_line

    return run_command_line(base, overrides, run_dir)


def format_value(value: Any) -> str:
    """Writes a value so that `config.parse_override` reads back exactly the same value."""
    if isinstance(value, str) and _parses_as_itself(value):
        return value
    return json.dumps(value)  # JSON is YAML, so lists, booleans, null and quoted strings survive.


def _parses_as_itself(text: str) -> bool:
    try:
        return yaml.safe_load(text) == text
    except yaml.YAMLError:
        return False


def point_name(grid_values: dict[str, Any]) -> str:
    """Derives a short, filesystem-safe run name from a point's grid values.

    Strings stand for themselves (`resnet44`, `polynomial`), numbers get a label
    (`sparsity0.7`), booleans become `augment` / `noaugment`.

    Args:
        grid_values: Config key -> value of the keys that vary in the grid.

    Returns:
        A name such as `resnet44-polynomial-sparsity0.7`.
    """
    parts = []
    for key, value in grid_values.items():
        leaf = key.rsplit(".", 1)[-1]
        label = KEY_LABELS.get(leaf, leaf.replace("_", ""))
        if isinstance(value, bool):
            part = label if value else f"no{label}"
        elif isinstance(value, str):
            part = value or f"{label}empty"
        elif isinstance(value, list):
            part = label + "x".join(str(item) for item in value)
        elif value is None:
            part = f"{label}none"
        else:
            part = f"{label}{value}"
        parts.append(re.sub(r"[^A-Za-z0-9._]+", "_", part).strip("._") or label)
    name = "-".join(parts) or "run"
    if len(name) > MAX_NAME_LENGTH:
        name = name[: MAX_NAME_LENGTH - 7].rstrip("-_.") + "-" + _digest(grid_values)
    return name


def _digest(values: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:6]


def load_study(study_path: str | os.PathLike) -> Study:
    """Reads a study YAML, expands its grid and validates every point with `load_config`.

    Raises:
        UserError: On a missing or malformed study, an unknown study key, an empty grid, or a
            point whose config is invalid (unknown key, bad value).
    """
    study_path = Path(study_path)
    study, base, fixed = read_study_file(study_path, STUDY_KEYS, "study")
    grid, vary = study.get("grid"), study.get("vary")
    if grid is not None and vary is not None:
        raise UserError(f"study '{study_path}' has both 'grid' and 'vary'; keep one")
    factors = vary if vary is not None else grid
    if not isinstance(factors, dict) or not factors:
        raise UserError(
            f"study '{study_path}' has an empty grid; add e.g. 'grid: {{model.name: [resnet20]}}'"
        )
    for key, values in factors.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"grid key '{key}' must be a non-empty list of values, got {values!r}")
        if key in fixed and vary is None:  # under `vary`, `set` gives the centre's value
            raise UserError(f"config key '{key}' is both in 'set' and in 'grid'; keep one")
    sample, seed = study.get("sample"), study.get("seed", 0)
    if sample is not None and (
        not isinstance(sample, int) or isinstance(sample, bool) or sample < 1
    ):
        raise UserError(f"study key 'sample' must be a positive integer, got {sample!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise UserError(f"study key 'seed' must be an integer, got {seed!r}")

    if vary is not None:
        grid, combinations = _one_factor_at_a_time(base, fixed, vary)
    else:
        combinations = [
            dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())
        ]
    if sample is not None and sample < len(combinations):
        chosen = sorted(random.Random(seed).sample(range(len(combinations)), sample))
        combinations = [combinations[index] for index in chosen]
    points = []
    for grid_values in combinations:
        values = {**fixed, **grid_values}
        overrides = [f"{key}={format_value(value)}" for key, value in values.items()]
        load_config(base, overrides)  # Raises the one-line UserError that names the bad key.
        points.append(Point(_name(grid_values, grid, vary is not None), values, overrides))
    _make_names_unique(points)
    return Study(study_path, base, fixed, grid, sample, seed, points)


def _one_factor_at_a_time(
    base: Path, fixed: dict[str, Any], vary: dict[str, list[Any]]
) -> tuple[dict[str, list[Any]], list[dict[str, Any]]]:
    """The grid a `vary` study spans, and its points: the centre, then one change at a time."""
    fixed_overrides = [f"{key}={format_value(value)}" for key, value in fixed.items()]
    for key, values in vary.items():  # the usual one-line error for an unknown key or value
        load_config(base, [*fixed_overrides, f"{key}={format_value(values[0])}"])
    centre_config = to_dict(load_config(base, fixed_overrides))
    centre = {}
    for key in vary:
        value: Any = centre_config
        for part in key.split("."):
            value = value[part]
        centre[key] = value
    points = [centre]
    for key, values in vary.items():
        points += [{**centre, key: value} for value in values if value != centre[key]]
    grid = {
        key: [centre[key], *(v for v in values if v != centre[key])] for key, values in vary.items()
    }
    return grid, points


def _name(grid_values: dict[str, Any], grid: dict[str, list[Any]], one_factor: bool) -> str:
    """A grid point's name; a `vary` run is named by the one key it changes."""
    if not one_factor:
        return point_name(grid_values)
    changed = {key: value for key, value in grid_values.items() if value != grid[key][0]}
    return point_name(changed) if changed else CENTRE_NAME


def _make_names_unique(points: list[Point]) -> None:
    """Appends a digest of the values to names that sanitizing made collide."""
    counts: dict[str, int] = {}
    for point in points:
        counts[point.name] = counts.get(point.name, 0) + 1
    for point in points:
        if counts[point.name] > 1:
            point.name = f"{point.name}-{_digest(point.values)}"


def run_sweep(
    study_path: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    jobs: int = 1,
    *,
    command_builder: CommandBuilder = build_command,
) -> Path:
    """Runs every unfinished point of a study and writes `results.csv` and `results.json`.

    Args:
        study_path: The study YAML.
        out_dir: The sweep directory; defaults to `runs/sweeps/<study stem>`.
        jobs: Runs executed at the same time.
        command_builder: Builds the command of one run from (base, overrides, run_dir). Tests
            replace it with a fake runner.

    Returns:
        The sweep directory.

    Raises:
        UserError: When the study is invalid (nothing has run then) or `jobs` is below 1.
    """
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    study = load_study(study_path)
    sweep_dir = Path(out_dir) if out_dir is not None else DEFAULT_SWEEPS_DIR / study.path.stem
    (sweep_dir / "runs").mkdir(parents=True, exist_ok=True)
    (sweep_dir / "logs").mkdir(exist_ok=True)
    files.write_text(
        sweep_dir / "study.yaml",
        yaml.dump(_resolved_study(study), Dumper=_PlainDumper, sort_keys=False),
    )

    pending = [p for p in study.points if not ownership.finished(sweep_dir / "runs" / p.name)]
    finished = len(study.points) - len(pending)
    if finished:
        print(f"sweep: {finished} of {len(study.points)} runs already finished, skipping them")

    # Another sweep process may share this folder (the same machine, or another one on a shared
    # filesystem): a run it holds is skipped, waited for at the end, and taken over if that
    # process died before finishing it.
    taken = _run_points(pending, study.base, sweep_dir, jobs, command_builder)
    while taken:
        print(f"sweep: waiting for {len(taken)} run(s) that another process is running", flush=True)
        while any(ownership.holder(sweep_dir / "runs" / point.name) for point in taken):
            time.sleep(OTHER_PROCESS_POLL_SECONDS)
        taken = [p for p in taken if not ownership.finished(sweep_dir / "runs" / p.name)]
        taken = _run_points(taken, study.base, sweep_dir, jobs, command_builder)

    rows = collect_results(sweep_dir, study.points)
    write_results(sweep_dir, rows)
    failed = sum(row["status"] == "failed" for row in rows)
    print(f"sweep: {len(rows) - failed} finished, {failed} failed; results in {sweep_dir}")
    return sweep_dir


def _run_points(
    points: list[Point],
    base: Path,
    sweep_dir: Path,
    jobs: int,
    command_builder: CommandBuilder,
) -> list[Point]:
    """Runs `points`, `jobs` at a time, stopping them all on Ctrl-C or SIGTERM.

    Returns:
        The points skipped because another process holds their run directory.
    """
    runs = _Runs()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = (
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt) if in_main_thread else None
    )
    try:
        with ThreadPoolExecutor(max_workers=jobs) as executor:
            futures = [
                executor.submit(_execute, point, base, sweep_dir, command_builder, runs)
                for point in points
            ]
            try:
                outcomes = [future.result() for future in futures]
            except BaseException:
                # Launch nothing new and stop the running runs; the pool then waits for them.
                for future in futures:
                    future.cancel()
                runs.stop()
                raise
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_handler)
    return [point for point, outcome in zip(points, outcomes, strict=True) if outcome == TAKEN]


class _PlainDumper(yaml.SafeDumper):
    """Writes repeated values in full: `&id001` anchors and `*id001` aliases puzzle readers."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _resolved_study(study: Study) -> dict[str, Any]:
    return {
        "study": str(study.path.resolve()),
        "base": str(study.base),
        "set": study.fixed,
        "grid": study.grid,
        "sample": study.sample,
        "seed": study.seed,
        "runs": [{"name": point.name, "set": point.values} for point in study.points],
    }


def _execute(
    point: Point, base: Path, sweep_dir: Path, command_builder: CommandBuilder, runs: _Runs
) -> str | None:
    """Runs one point; on failure writes the last stderr lines to `<run>/error.txt`.

    Returns:
        `TAKEN` when another process holds the run directory (nothing was written), else None.
    """
    run_dir = sweep_dir / "runs" / point.name
    if ownership.holder(run_dir):
        print(f"sweep: skip  {point.name} (another process is running it)", flush=True)
        return TAKEN
    if ownership.finished(run_dir):  # by another process since this one listed its runs
        print(f"sweep: skip  {point.name} (another process finished it)", flush=True)
        return None
    error_path = run_dir / "error.txt"
    error_path.unlink(missing_ok=True)  # A stale error from an earlier attempt would mislead.
    stdout_path = sweep_dir / "logs" / f"{point.name}.out"
    stderr_path = sweep_dir / "logs" / f"{point.name}.err"
    started = time.monotonic()
    # Files, not pipes: a chatty run cannot block on a full pipe, and the logs stay for reading.
    # Appended to: a process that loses the race for the folder must not truncate the logs of
    # the one running it, and a resumed run's log keeps its earlier attempts.
    with stdout_path.open("a") as stdout, stderr_path.open("a") as stderr:
        log_start = stdout_path.stat().st_size  # this attempt's output starts here
        process = runs.start(command_builder(base, point.overrides, run_dir), stdout, stderr)
        if process is None:
            return None
        print(f"sweep: start {point.name}", flush=True)
        try:
            returncode = process.wait()
        finally:
            runs.finish(process)
    if runs.stopping:
        return None  # Interrupted, not failed: the next launch resumes it.
    seconds = time.monotonic() - started
    if returncode == 0 and (run_dir / "metrics.json").exists():
        with stdout_path.open("rb") as log:
            log.seek(log_start)
            # Another process finished it between the check above and this run's own lock.
            by_another = ownership.ALREADY_FINISHED.encode() in log.read()
        state = "skip " if by_another else "done "
        reason = "another process finished it" if by_another else f"{seconds:.0f} s"
        print(f"sweep: {state} {point.name} ({reason})", flush=True)
        return None
    if returncode != 0 and ownership.holder(run_dir):
        # Another process took the folder between our check and the run's own lock.
        print(f"sweep: skip  {point.name} (another process is running it)", flush=True)
        return TAKEN
    lines = stderr_path.read_text(errors="replace").splitlines()[-ERROR_LINES:]
    if returncode == 0:
        lines.append("the run exited with status 0 but wrote no metrics.json")
    else:
        lines.append(f"exit status {returncode}; full log: {stderr_path}")
    run_dir.mkdir(parents=True, exist_ok=True)
    files.write_text(error_path, "\n".join(lines) + "\n")
    reason = lines[-2] if len(lines) > 1 else lines[-1]
    print(f"sweep: FAILED {point.name} ({seconds:.0f} s): {reason}", flush=True)
    return None


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flattens nested mappings into dotted keys: {"a": {"b": 1}} -> {"a.b": 1}."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def collect_results(sweep_dir: str | os.PathLike, points: Sequence[Point]) -> list[dict[str, Any]]:
    """Builds one row per point: name, status, `config.<key>` overrides and flattened metrics.

    The per-layer table `pruning.layers` is left out of the rows (it would add hundreds of
    columns); it stays in each run's metrics.json.

    Returns:
        Rows with keys `name`, `status` (finished, failed or pending), `run_dir` (relative to
        the sweep directory), `config.<key>` for every override, every metric, and `error`.
    """
    sweep_dir = Path(sweep_dir)
    rows = []
    for point in points:
        run_dir = sweep_dir / "runs" / point.name
        row: dict[str, Any] = {
            "name": point.name,
            "status": "pending",
            "run_dir": f"runs/{point.name}",
        }
        row.update({f"config.{key}": value for key, value in point.values.items()})
        error_path = run_dir / "error.txt"
        try:
            metrics = ownership.read_metrics(run_dir)
        except UserError as damaged:  # Counted as failed, with the fix, not as finished.
            metrics, row["status"], row["error"] = None, "failed", str(damaged)
        if metrics is not None:
            if isinstance(metrics.get("pruning"), dict):
                metrics["pruning"].pop("layers", None)
            row["status"] = "finished"
            row.update(flatten(metrics))
        elif row["status"] == "pending" and error_path.exists():
            row["status"] = "failed"
            row["error"] = error_path.read_text().strip()
        rows.append(row)
    return rows


def write_results(sweep_dir: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """Writes `results.json` (a list of rows) and `results.csv` (their union of columns)."""
    sweep_dir = Path(sweep_dir)
    files.write_text(sweep_dir / "results.json", json.dumps(rows, indent=2) + "\n")
    columns = list(dict.fromkeys(key for row in rows for key in row if key != "error"))
    columns.append("error")
    with (
        files.atomic_path(sweep_dir / "results.csv") as temporary,
        temporary.open("w", newline="") as handle,
    ):
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _csv_value(value) for key, value in row.items()})


def _csv_value(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict)) else value
