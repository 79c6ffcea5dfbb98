"""A run directory belongs to one config and one process.

`claim()` is the first thing a run does, before anything is written:

- **One process.** An OS lock (`flock` on `<run>/.lock`) that the kernel releases when the process
  dies, however it dies. A second process gets a one-line error naming the holder (host, pid,
  start time) and leaves the folder as it was. Under multi-worker training the chief holds the run
  directory and every other worker its own temporary folder.
- **One config.** The run's config.yaml, written at its first start, is what the run is. A
  restart with a config that differs in a key that shapes the result is a one-line error listing
  the changed keys; keys that cannot change the result (`output.*`, the backup frequency) may.
- **Torn files.** Temporaries left by a kill between a write and its rename are removed; a
  damaged config.yaml or metrics.json is reported in one line with the fix. (history.csv is
  repaired by `train.dedupe_history`.)
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from compactcnn import files
from compactcnn.config import RESOLVED_KEY, Config, from_dict, to_dict
from compactcnn.errors import UserError

LOCK_NAME = ".lock"
# A busy lock is tried again this often before the folder counts as held by another process.
LOCK_ATTEMPTS = 5
LOCK_RETRY_SECONDS = 0.05
# What every finished run's metrics.json holds (read by `compactcnn run` when it was finished).
METRICS_KEYS = frozenset({"keras", "tflite"})
# What `compactcnn run` prints when its folder holds a finished run: a sweep that launched it
# reads it to tell a run another process finished from one it ran itself.
ALREADY_FINISHED = "is already finished; delete it to run again"
# Keys that cannot change what a run produces: a restart may change them.
RESULT_NEUTRAL_KEYS = ("output.", "distribute.save_freq")


class RunInUse(UserError):
    """Another live process holds the run directory."""


@dataclass
class Claim:
    """What `claim` found: whether the run had finished, and its metrics if so."""

    finished: bool = False
    metrics: dict[str, Any] | None = None


def holder(folder: Path) -> dict[str, Any] | None:
    """The process holding `folder`'s lock (host, pid, started), or None when it is free."""
    path = Path(folder) / LOCK_NAME
    if not path.exists():
        return None
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            return _parse_holder(handle.read())
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def _parse_holder(text: str) -> dict[str, Any]:
    try:
        found = json.loads(text)
    except json.JSONDecodeError:
        found = None
    return found if isinstance(found, dict) else {"host": "?", "pid": "?", "started": "?"}


def _try_lock(descriptor: int) -> bool:
    """Takes the lock without waiting for a holder, but past another process's brief probe.

    `holder()` (a sweep polling a run) holds the lock for an instant; a run starting in that
    instant would otherwise be told the folder is in use.
    """
    for attempt in range(LOCK_ATTEMPTS):
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt + 1 < LOCK_ATTEMPTS:
                time.sleep(LOCK_RETRY_SECONDS)
    return False


def _unusable(folder: Path, error: OSError) -> UserError:
    reason = error.strerror or type(error).__name__
    return UserError(f"cannot use run directory '{folder}' ({reason}); pick another --out")


@contextlib.contextmanager
def lock(folder: Path) -> Iterator[None]:
    """Holds `folder`'s lock for the block (the folder must exist).

    Raises:
        RunInUse: When another process holds it.
    """
    path = Path(folder) / LOCK_NAME
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise _unusable(folder, error) from None
    try:
        if not _try_lock(descriptor):
            other = _parse_holder(path.read_text(errors="replace"))
            raise RunInUse(
                f"run directory '{folder}' is in use by pid {other.get('pid')} on "
                f"{other.get('host')} since {other.get('started')}; wait for it to finish or "
                "pick another --out"
            ) from None
        # Written in place, not renamed: a new file would be a new, unlocked inode.
        me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, json.dumps(me).encode(), 0)
        try:
            yield
        finally:
            # Emptied while still held: a released lock that named this pid would mislead
            # anyone who reads the file (a killed process leaves its line, which is harmless).
            os.ftruncate(descriptor, 0)
    finally:
        os.close(descriptor)  # releases the lock


@contextlib.contextmanager
def claim(run_dir: Path, config: Config) -> Iterator[Claim]:
    """Takes the run directory for this process and checks it belongs to `config`.

    A folder this call created is removed again if the block fails before writing anything
    besides the lock, so a rejected run leaves nothing behind.

    Raises:
        RunInUse: When another live process holds the folder.
        UserError: When the folder was started with another config, or a record is damaged.
    """
    # Imported here: sweeps check locks with `holder` and should not load TensorFlow for that.
    from compactcnn import distribute

    run_dir = Path(run_dir)
    spec = distribute.cluster_spec_from_env()
    if not distribute.is_chief_task(spec):
        folder = distribute.worker_folder(run_dir, spec)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise _unusable(folder, error) from None
        with lock(folder):
            yield Claim()
        return
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _unusable(run_dir, error) from None
    try:
        with lock(run_dir):
            _check_config(run_dir, config)
            _remove_temporaries(run_dir)
            yield _finished(run_dir)
    except BaseException:
        if created and [path.name for path in run_dir.iterdir()] in ([], [LOCK_NAME]):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _finished(run_dir: Path) -> Claim:
    metrics = read_metrics(run_dir)
    return Claim() if metrics is None else Claim(finished=True, metrics=metrics)


def read_metrics(run_dir: Path) -> dict[str, Any] | None:
    """A finished run's metrics.json, or None when the run has not finished.

    Raises:
        UserError: When the file exists but is not a run's record (torn, emptied, edited).
    """
    path = Path(run_dir) / "metrics.json"
    if not path.exists():
        return None
    try:
        metrics = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        reason = "not valid JSON"
    else:
        if isinstance(metrics, dict) and metrics.keys() >= METRICS_KEYS:
            return metrics
        reason = f"not a run's record: it needs the keys {sorted(METRICS_KEYS)}"
    raise UserError(f"'{path}' is damaged ({reason}); delete the folder '{run_dir}' to run again")


def finished(run_dir: Path) -> bool:
    """Whether the run left a sound metrics.json (a damaged one counts as unfinished: running it
    again says in one line what to delete)."""
    try:
        return read_metrics(run_dir) is not None
    except UserError:
        return False


def changed_keys(recorded: Config, wanted: Config) -> list[str]:
    """Keys that shape the result and differ, as `key: old -> new`."""
    old = _flat(to_dict(recorded))
    new = _flat(to_dict(wanted))
    return [
        f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key) and not key.startswith(RESULT_NEUTRAL_KEYS)
    ]


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _check_config(run_dir: Path, config: Config) -> None:
    path = run_dir / "config.yaml"
    trained = any((run_dir / name).exists() for name in ("backup", "metrics.json", "history.csv"))
    if not path.exists():
        if trained:
            raise UserError(
                f"'{path}' is missing, so the config this run was started with is unknown; "
                f"delete the folder '{run_dir}' or pick another --out"
            )
        return
    try:
        values = yaml.safe_load(path.read_text())
        if not isinstance(values, dict):
            raise ValueError("not a mapping of sections")
        written = {k: v for k, v in values.items() if k != RESOLVED_KEY}
        # A file cut short still parses, and the keys it lost would read as their defaults:
        # every key `save_config` writes must be there.
        missing = sorted(set(_flat(to_dict(from_dict({})))) - set(_flat(written)))
        if missing:
            raise ValueError(f"cut short: {len(missing)} keys missing, from '{missing[0]}'")
        recorded = from_dict(written)
    except (yaml.YAMLError, ValueError, UserError) as error:
        if not trained:
            return  # nothing trained yet: the run starts afresh and writes a new one
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(
            f"'{path}' is damaged ({reason}), so the config this run was started with is "
            f"unknown; delete the folder '{run_dir}' or pick another --out"
        ) from None
    changes = changed_keys(recorded, config)
    if changes:
        raise UserError(
            f"run directory '{run_dir}' was started with another config (changed: "
            f"{'; '.join(changes)}); pick another --out or delete the folder"
        )


def _remove_temporaries(run_dir: Path) -> None:
    """Removes what a kill between a write and its rename left (`*.<pid>.tmp*`)."""
    for folder in (run_dir, run_dir / "tflite"):
        if folder.is_dir():
            for path in folder.glob(f"*{files.TEMPORARY_MARK}*"):
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
