"""What every benchmark shares: arguments, machine description, timing, interleaving, results JSON.

A benchmark is a module with `main(argv)`. It measures its variants in interleaved rounds (the
machine is shared and noisy, so only ratios taken side by side in one run mean anything), prints a
table, and writes `bench/results/<name>.json` with the machine, the settings, every command it ran
with its wall time, the results and the targets. A `--quick` run writes to `bench/results/quick/`
instead, so it never overwrites the committed full results.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import tf_keras as keras

from compactcnn import files
from compactcnn.cli import run_command_line

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"
# Where --quick runs write by default (git-ignored), so the committed full results stay as they are.
QUICK_RESULTS_DIR = RESULTS_DIR / "quick"
CACHE_DIR = REPO_ROOT / "bench" / "cache"
# The shared CIFAR-10 JPEG archive, as the repo's configs name it (relative to the repo root).
SHARED_DATA = "../shared/data/cifar10-jpeg.tar.gz"
JPEG_CONFIG = "configs/resnet20_cifar10_jpeg.yaml"


def default_results_dir(quick: bool) -> Path:
    """Where results go when `--results-dir` is not given: quick runs apart from full ones."""
    return QUICK_RESULTS_DIR if quick else RESULTS_DIR


class _BenchParser(argparse.ArgumentParser):
    """Fills in the default `--results-dir` once `--quick` is known."""

    def parse_known_args(
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        namespace, extras = super().parse_known_args(args, namespace)
        if getattr(namespace, "results_dir", None) is None:
            namespace.results_dir = default_results_dir(getattr(namespace, "quick", False))
        return namespace, extras


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark takes.

    `--results-dir` defaults to `bench/results/` for full runs and to `bench/results/quick/` for
    `--quick` runs; the parsed arguments always hold the resolved directory.
    """
    arguments = _BenchParser(description=description)
    arguments.add_argument(
        "--quick", action="store_true", help="tiny smoke version on the bundled sample"
    )
    arguments.add_argument(
        "--results-dir",
        type=Path,
        default=None,
        help=f"where <name>.json goes (default: {relative(RESULTS_DIR)}/, "
        f"or {relative(QUICK_RESULTS_DIR)}/ with --quick)",
    )
    return arguments


def data_arguments(arguments: argparse.ArgumentParser) -> None:
    """Adds `--data-path`, the CIFAR-10 JPEG archive (--quick uses the bundled sample instead)."""
    arguments.add_argument(
        "--data-path", default=SHARED_DATA, help="CIFAR-10 JPEG archive, relative to the repo root"
    )


def load_images(quick: bool, data_path: str = SHARED_DATA):
    """Loads the shared CIFAR-10 (or, when quick, the bundled 700-image sample).

    Returns:
        A `compactcnn.data.ImageData`.
    """
    from compactcnn.config import DataConfig
    from compactcnn.data import load_data

    if quick:
        return load_data(DataConfig(name="sample"))
    return load_data(DataConfig(name="imagefolder", path=str(resolve(data_path))))


def resolve(path: str | os.PathLike) -> Path:
    """Reads a relative path as relative to the repo root, where the configs' paths start."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def machine() -> dict[str, Any]:
    """Describes the machine and software stack, so a result can be compared with a rerun."""
    cpu_model = platform.processor() or "unknown"
    flags: list[str] = []
    found_model = False
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not found_model:
                cpu_model, found_model = value.strip(), True
            if key.strip() == "flags" and not flags:
                flags = value.split()
    except OSError:
        pass
    versions = {}
    for package in ("tensorflow", "tf_keras", "tensorflow-model-optimization", "ai-edge-litert"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu_model": cpu_model,
        # Instruction sets that decide which kernels TF and XNNPACK pick (bf16 needs avx512_bf16).
        "cpu_flags": sorted(
            set(flags) & {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "fma"}
        ),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "load_average": [round(value, 2) for value in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "git_commit": _git_commit(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _git_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return result.stdout.strip()


class Recorder:
    """Collects what a benchmark ran (commands with wall times) and writes its results JSON."""

    def __init__(self, name: str, argv: Sequence[str] | None, settings: dict[str, Any]):
        self.name = name
        self.settings = settings
        self.commands: list[dict[str, Any]] = []
        self.started = time.perf_counter()
        self.machine = machine()
        self.argv = list(sys.argv[1:] if argv is None else argv)

    def command(self, command: str, seconds: float, **extra: Any) -> None:
        """Records one command (a shell line anyone can rerun from the repo root)."""
        self.commands.append({"command": command, "seconds": round(seconds, 2), **extra})

    def write(self, results_dir: Path, results: dict[str, Any], targets: dict[str, Any]) -> Path:
        """Writes `<results_dir>/<name>.json` atomically; the benchmark's own command comes first.

        Returns:
            The path written.
        """
        own = {
            "command": shlex.join(["python", "-m", f"bench.{self.name}", *self.argv]),
            "seconds": round(time.perf_counter() - self.started, 2),
        }
        payload = {
            "benchmark": self.name,
            "machine": {**self.machine, "load_average_end": list(os.getloadavg())},
            "settings": self.settings,
            "commands": [own, *self.commands],
            "results": results,
            "targets": targets,
        }
        results_dir = Path(results_dir)
        results_dir.mkdir(parents=True, exist_ok=True)
        path = results_dir / f"{self.name}.json"
        files.write_text(path, json.dumps(payload, indent=2, default=_plain) + "\n")
        print(f"wrote {path}")
        return path


def _plain(value: Any) -> Any:
    """JSON fallback for numpy scalars and paths."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def target(value: float | None, goal: float, higher_is_better: bool = True) -> dict[str, Any]:
    """One target check, as written into the results JSON."""
    met = None
    if value is not None:
        met = bool(value >= goal) if higher_is_better else bool(value <= goal)
    return {"value": value, "target": goal, "higher_is_better": higher_is_better, "met": met}


def interleave(variants: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Measures every variant once per round, reversing the order every other round.

    A/B/C, C/B/A, A/B/C...: a slow drift of the machine's load then hits every variant alike.

    Returns:
        Each variant's measurements, one per round.
    """
    names = list(variants)
    measured: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        order = names if index % 2 == 0 else names[::-1]
        for name in order:
            value = variants[name]()
            measured[name].append(value)
            print(f"round {index + 1}/{rounds} {name}: {value:.1f}", flush=True)
    return measured


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """The median over rounds of numerator / denominator, each pair measured side by side."""
    return round(statistics.median(a / b for a, b in zip(numerator, denominator, strict=True)), 3)


def summary(values: list[float]) -> dict[str, Any]:
    """Median, spread and raw values of one variant's per-round measurements."""
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
        "rounds": [round(value, 2) for value in values],
    }


class StepTimer(keras.callbacks.Callback):
    """Times the training steps after the first `warmup_steps` of each `fit` call.

    The clock starts when the last warm-up step ends and stops when the last step ends, so tracing,
    iterator start-up (shuffle-buffer filling) and the first slow steps are excluded.
    """

    def __init__(self, warmup_steps: int):
        super().__init__()
        self.warmup_steps = warmup_steps
        self.completed = 0
        self.started = self.stopped = 0.0

    def on_train_begin(self, logs=None):
        self.completed = 0
        self.started = self.stopped = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.completed += 1
        now = time.perf_counter()
        if self.completed <= self.warmup_steps:
            self.started = now
        self.stopped = now

    @property
    def timed_steps(self) -> int:
        """Steps inside the timed window of the last `fit`."""
        return max(0, self.completed - self.warmup_steps)

    @property
    def seconds(self) -> float:
        """Wall seconds of the timed window of the last `fit`."""
        return self.stopped - self.started


def timed_fit(model, dataset, batch_size: int, warmup_steps: int, steps: int, callbacks=()):
    """Runs `warmup_steps + steps` training steps and returns the timed images per second."""
    timer = StepTimer(warmup_steps)
    model.fit(
        dataset,
        epochs=1,
        steps_per_epoch=warmup_steps + steps,
        callbacks=[*callbacks, timer],
        verbose=0,
    )
    return timer.timed_steps * batch_size / timer.seconds


# What a cached run depends on besides its settings: the code that trains and exports it.
CODE_PATHS = ("compactcnn", "bench/baseline.py")


def code_digest(root: Path = REPO_ROOT) -> str:
    """A short hash of the Python sources under `CODE_PATHS`: the cache keys include it, so a run
    made by other code is trained again instead of reused."""
    digest = hashlib.sha256()
    for name in CODE_PATHS:
        path = root / name
        for source in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(f"{source.relative_to(root).as_posix()}\0".encode())
            digest.update(source.read_bytes())
    return digest.hexdigest()[:10]


def run_key(config: str, overrides: Sequence[str]) -> str:
    """A short hash of a run's config file contents, overrides and code: equal key, equal run."""
    text = resolve(config).read_text() + "\n" + "\n".join(overrides) + "\n" + code_digest()
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def compactcnn_run(
    recorder: Recorder,
    label: str,
    overrides: Sequence[str],
    cache_dir: Path,
    config: str = JPEG_CONFIG,
) -> tuple[Path, dict[str, Any]]:
    """Runs `compactcnn run` in a subprocess into a cache folder, or reuses a finished run there.

    The folder is `<cache_dir>/<label>-<hash of config and overrides>`, so benchmarks that ask
    for identical settings share one run.

    Returns:
        The run directory (relative to the repo root when inside it) and its metrics.
    """
    run_dir = relative(Path(cache_dir) / f"{label}-{run_key(config, overrides)}")
    metrics_path = resolve(run_dir) / "metrics.json"
    command = run_command_line(config, list(overrides), run_dir, python="python") + [
        "--verbose",
        "2",
    ]
    if metrics_path.exists():
        print(f"reusing {run_dir}")
        recorder.command(shlex.join(command), 0.0, cached=True, run_dir=str(run_dir))
    else:
        seconds = run_command(recorder, command, run_dir=str(run_dir))
        print(f"{label}: {seconds:.0f} s")
    return run_dir, json.loads(metrics_path.read_text())


def run_command(
    recorder: Recorder, command: list[str], env: dict[str, str] | None = None, **extra
) -> float:
    """Runs a command from the repo root (`python` = this interpreter); records and times it."""
    executable = [sys.executable if command[0] == "python" else command[0], *command[1:]]
    started = time.perf_counter()
    subprocess.run(executable, cwd=REPO_ROOT, check=True, env=env)
    seconds = time.perf_counter() - started
    recorder.command(shlex.join(command), seconds, **extra)
    return seconds


def relative(path: Path) -> Path:
    """The path relative to the repo root when it is inside it (portable in results JSON)."""
    path = resolve(path)
    try:
        return path.relative_to(REPO_ROOT)
    except ValueError:
        return path


def quick_run_overrides() -> list[str]:
    """Overrides that shrink a `compactcnn run` of the JPEG config to a seconds-long smoke run."""
    return [
        "data.name=sample",
        "data.path=",
        "train.batch_size=32",
        "train.steps_per_epoch=3",
        "prune.frequency=1",
        "quantize.formats=[float32, int8]",
        "quantize.calibration_samples=20",
        "output.latency_runs=5",
        "output.tensorboard=false",
    ]


def table(rows: list[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Formats rows of plain values as a fixed-width text table."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0])
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [
        max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)
    ]
    lines = ["  ".join(column.ljust(width) for column, width in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * width for width in widths))
    for line in cells:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
    return "\n".join(line.rstrip() for line in lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)
