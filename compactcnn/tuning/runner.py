"""`compactcnn tune`: ask Optuna for parameters, run each trial as a normal run, tell the result.

One process runs one trial at a time; more processes (on this machine or others) on the same
storage share the study. Each process:

1. validates the study file and opens the storage (nothing starts when either is wrong), and
   checks that a study already in the storage under this name was started with the same config,
   search space and objectives;
2. holds a lock on `<dir>/workers/<host>-<pid>-<random>/` while it lives, and names it in every
   trial it runs, so the others can tell a live trial from one whose process died;
3. reclaims such orphans: a trial whose process died but whose run finished is told its result;
   any other is failed and re-enqueued with the same parameters, and the new trial takes over the
   run directory (renamed to its own number), so the run resumes from its backup. Trials of a
   process on another machine, whose folder is not visible here, are reclaimed the same way once
   their heartbeat stops (Optuna's `fail_stale_trials`);
4. runs trials until the study has `trials` finished ones (complete, pruned or failed), then
   waits for the trials other processes still run and writes results.json / results.csv.

A finished trial is never rerun. Two processes that ask at the same instant for the last trial
may both get one, so a shared study can end one trial over its budget per extra process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from compactcnn import files, ownership
from compactcnn.config import from_dict, load_config
from compactcnn.errors import UserError
from compactcnn.sweep import CommandBuilder, build_command, write_results
from compactcnn.tuning import engine, storage, trial
from compactcnn.tuning.results import (
    ERROR_ATTR,
    METRICS_ATTR,
    RESUMES_ATTR,
    RUN_DIR_ATTR,
    WORKER_ATTR,
    constraint_value,
    flat_metrics,
    objective_values,
    pareto_rows,
    superseded,
    trial_name,
    trial_rows,
)
from compactcnn.tuning.study import TuningStudy, load_tuning_study

DEFAULT_TUNING_DIR = Path("runs/tuning")
TUNE_FILE = "tune.yaml"
WORKERS_DIR = "workers"
# The study's user attribute recording what its trials run (see TuningStudy.fingerprint).
STUDY_ATTR = "compactcnn.study"
WAIT_SECONDS = 2.0


class TrialFailed(Exception):
    """A trial's run failed or reported no objective; Optuna records the trial as failed."""


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    # SIGTERM takes the same path as Ctrl-C: stop the run, re-enqueue the trial, exit.
    raise KeyboardInterrupt


def run_tuning(
    study_path: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    storage_url: str | None = None,
    study_name: str | None = None,
    *,
    command_builder: CommandBuilder = build_command,
) -> Path:
    """Runs a tuning study until it has its trials, then writes results.json and results.csv.

    Args:
        study_path: The study YAML.
        out_dir: The tuning folder; defaults to `runs/tuning/<study stem>`.
        storage_url: An Optuna RDB URL; defaults to `sqlite:///<out_dir>/optuna.db`.
        study_name: The study's name in the storage; defaults to the study file's stem.
        command_builder: Builds the command of one run from (base, overrides, run_dir). Tests
            replace it with a fake runner.

    Returns:
        The tuning folder.

    Raises:
        UserError: When the study file is invalid, the storage unreachable, or the storage holds
            a study of this name started with another config, space or objectives (nothing has
            run then).
    """
    study = load_tuning_study(study_path)
    tune_dir = Path(out_dir) if out_dir is not None else DEFAULT_TUNING_DIR / study.path.stem
    verbosity = optuna.logging.get_verbosity()
    # Optuna logs each study it opens and each failure with a traceback; the tuner prints one
    # line per trial instead.
    optuna.logging.set_verbosity(logging.ERROR)
    try:
        if storage_url is None:
            tune_dir.mkdir(parents=True, exist_ok=True)  # The default database lives in it.
            storage_url = storage.default_url(tune_dir)
        name = study_name or study.path.stem
        Tuner(study, tune_dir, storage_url, name, command_builder).run()
    finally:
        optuna.logging.set_verbosity(verbosity)
    return tune_dir


def open_study(
    study: TuningStudy, rdb: optuna.storages.RDBStorage, storage_url: str, study_name: str
) -> optuna.Study:
    """Creates or loads the Optuna study and checks it belongs to this study file.

    Raises:
        UserError: When the storage's study of this name optimizes other objectives or was
            started with another config or space.
    """
    try:
        optuna_study = optuna.create_study(
            storage=rdb,
            study_name=study_name,
            directions=study.directions,
            sampler=engine.sampler(study),
            pruner=engine.pruner(study),
            load_if_exists=True,
        )
    except (ValueError, optuna.exceptions.StorageInternalError) as error:
        raise UserError(f"cannot open study '{study_name}': {error}") from None
    wanted = study.fingerprint()
    recorded = optuna_study.user_attrs.get(STUDY_ATTR)
    directions = [d.name.lower() for d in optuna_study.directions]
    if recorded is None and directions == study.directions:
        optuna_study.set_user_attr(STUDY_ATTR, wanted)
    elif recorded != wanted or directions != study.directions:
        changes = _study_changes(recorded or {}, wanted, directions, study.directions)
        raise UserError(
            f"study '{study_name}' in '{storage.masked(storage_url)}' was started with another "
            f"study file (changed: {'; '.join(changes)}); pick another --study-name or storage, "
            "or restore the file"
        )
    return optuna_study


def _study_changes(
    recorded: dict[str, Any], wanted: dict[str, Any], old_dirs: list[str], new_dirs: list[str]
) -> list[str]:
    changes = []
    if old_dirs != new_dirs:
        changes.append(f"directions {old_dirs} -> {new_dirs}")
    for key in ("space", "objectives", "max_bytes"):
        if recorded.get(key) != wanted.get(key):
            changes.append(f"{key} {recorded.get(key)!r} -> {wanted.get(key)!r}")
    try:
        changes += ownership.changed_keys(
            from_dict(recorded.get("config") or {}), from_dict(wanted["config"])
        )
    except UserError:
        changes.append("config (the recorded one is unreadable)")
    return changes or ["an unknown record"]


class Tuner:
    """One `compactcnn tune` process on one study (see the module docstring)."""

    def __init__(
        self,
        study: TuningStudy,
        tune_dir: Path,
        storage_url: str,
        study_name: str,
        command_builder: CommandBuilder = build_command,
    ) -> None:
        self.study = study
        self.tune_dir = tune_dir
        self.storage_url = storage_url
        self.study_name = study_name
        self.command_builder = command_builder
        # The random part: a restarted container may get the same host name and pid.
        self.worker = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        # Raw storage calls (on trials of other, dead processes) go to `self.storage`.
        self.storage = storage.open_storage(storage_url, on_stale=self._resume_later)
        self.optuna_study = open_study(study, self.storage, storage_url, study_name)
        self._study_id = self.storage.get_study_id_from_name(study_name)

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> None:
        """Runs trials until the study has its budget, then writes the results."""
        (self.tune_dir / "runs").mkdir(parents=True, exist_ok=True)
        (self.tune_dir / "logs").mkdir(exist_ok=True)
        resolved = {
            **self.study.to_dict(),
            "study_name": self.study_name,
            "storage": storage.masked(self.storage_url),
        }
        files.write_text(self.tune_dir / TUNE_FILE, yaml.safe_dump(resolved, sort_keys=False))
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = (
            signal.signal(signal.SIGTERM, _raise_keyboard_interrupt) if in_main_thread else None
        )
        try:
            with self._worker_lock():
                self._loop()
        finally:
            if in_main_thread:
                signal.signal(signal.SIGTERM, previous)
        self.write_results(final=True)

    def _loop(self) -> None:
        first, waiting_said = True, False
        while True:
            self.reclaim()
            trials = self.optuna_study.get_trials(deepcopy=False)
            resumed = superseded(trials)
            states = [t.state for t in trials if t.number not in resumed]
            finished = sum(state.is_finished() for state in states)
            running = states.count(TrialState.RUNNING)
            waiting = states.count(TrialState.WAITING)
            if first:
                print(
                    f"tune: study '{self.study_name}' in {storage.masked(self.storage_url)}: "
                    f"{finished} of {self.study.trials} trials finished, {running} running",
                    flush=True,
                )
                first = False
            if waiting or finished + running < self.study.trials:
                self._run_one()
                waiting_said = False
            elif running:
                if not waiting_said:
                    print(
                        f"tune: waiting for {running} trial(s) that another process runs",
                        flush=True,
                    )
                    waiting_said = True
                time.sleep(WAIT_SECONDS)
            else:
                return

    def _run_one(self) -> None:
        self.optuna_study.optimize(
            self._objective, n_trials=1, catch=(TrialFailed,), gc_after_trial=False
        )
        self.write_results()

    # -- one trial -------------------------------------------------------------------------

    def _objective(self, optuna_trial: optuna.Trial) -> list[float]:
        """Runs one trial's run; returns its objective values (Optuna's objective function)."""
        # First, so that no other process mistakes this trial for an orphan.
        optuna_trial.set_user_attr(WORKER_ATTR, self.worker)
        name = trial_name(optuna_trial.number)
        for param in self.study.space:
            _suggest(optuna_trial, param)
        values = engine.config_values(self.study, optuna_trial.params)
        overrides = self.study.overrides(values)
        try:
            load_config(self.study.base, overrides)
        except UserError as error:
            # A combination the config rejects (e.g. prune.end_epoch past train.epochs).
            optuna_trial.set_user_attr(ERROR_ATTR, str(error))
            print(f"tune: FAILED {name}: {error}", flush=True)
            raise TrialFailed(str(error)) from None
        run_dir = self._take_run_dir(optuna_trial)
        optuna_trial.set_user_attr(RUN_DIR_ATTR, f"runs/{name}")
        shown = ", ".join(f"{key}={_short(value)}" for key, value in values.items())
        print(f"tune: start {name} ({shown})", flush=True)
        command = self.command_builder(self.study.base, overrides, run_dir)
        pruning = _pruning(optuna_trial) if self.study.pruner != "none" else None
        try:
            outcome = trial.run(command, run_dir, self.tune_dir / "logs" / name, pruning)
        except KeyboardInterrupt:
            # Interrupted, not failed: the next launch resumes it in the same folder.
            self._resume_later(self.optuna_study, optuna_trial.number, optuna_trial.params)
            raise
        if outcome.status == "pruned":
            print(f"tune: pruned {name} ({outcome.seconds:.0f} s)", flush=True)
            raise optuna.TrialPruned()
        if outcome.status == "failed":
            optuna_trial.set_user_attr(ERROR_ATTR, outcome.error)
            reason = (outcome.error or "").splitlines()
            reason = reason[-2] if len(reason) > 1 else (reason or ["failed"])[-1]
            print(f"tune: FAILED {name} ({outcome.seconds:.0f} s): {reason}", flush=True)
            raise TrialFailed(reason)
        objectives = self._record_metrics(optuna_trial, outcome.metrics or {})
        shown = ", ".join(
            f"{o.metric}={v:.4g}" for o, v in zip(self.study.objectives, objectives, strict=True)
        )
        print(f"tune: done  {name} ({outcome.seconds:.0f} s): {shown}", flush=True)
        return objectives

    def _record_metrics(self, optuna_trial: Any, metrics: dict[str, Any]) -> list[float]:
        """Stores the run's metrics and constraint with the trial; returns its objective values.

        Args:
            optuna_trial: An `optuna.Trial`, or a trial id for a trial of another process.
            metrics: The run's metrics.json.
        """
        flat = flat_metrics(metrics)
        values = objective_values(self.study, flat)
        own = isinstance(optuna_trial, optuna.Trial)
        set_attr = (
            optuna_trial.set_user_attr
            if own
            else lambda key, value: self.storage.set_trial_user_attr(optuna_trial, key, value)
        )
        set_attr(METRICS_ATTR, flat)
        if values is None:
            missing = [o.metric for o in self.study.objectives if o.metric not in flat]
            message = f"the run reported no {', '.join(missing) or 'finite objective value'}"
            set_attr(ERROR_ATTR, message)
            raise TrialFailed(message)
        constraint = constraint_value(self.study, flat)
        if constraint is not None:
            # A file that was not measured cannot fit: a huge finite excess (JSON has no inf).
            constraint = min(constraint, 1e30)
            if own:
                optuna_trial.set_constraint(engine.CONSTRAINT, constraint)
            else:
                self.storage.set_trial_system_attr(
                    optuna_trial, engine.CONSTRAINT_SYSTEM_ATTR, constraint
                )
        return values

    def _take_run_dir(self, optuna_trial: optuna.Trial) -> Path:
        """The trial's run directory; a resumed trial first takes over its predecessor's folder."""
        run_dir = self.tune_dir / "runs" / trial_name(optuna_trial.number)
        previous = optuna_trial.user_attrs.get(RESUMES_ATTR)
        if previous is None or run_dir.exists():
            return run_dir
        old = self.tune_dir / "runs" / trial_name(previous)
        if not old.is_dir():
            return run_dir  # Its folder is on another machine: start afresh here.
        if ownership.holder(old):
            # The killed trial's run may take a moment to die (or finish, on systems where it
            # does not die with its tuner).
            print(f"tune: waiting for the run in {old} to stop", flush=True)
        while ownership.holder(old):
            time.sleep(WAIT_SECONDS)
        os.rename(old, run_dir)
        print(f"tune: {trial_name(optuna_trial.number)} resumes {old.name}", flush=True)
        return run_dir

    def _resume_later(
        self, optuna_study: optuna.Study, trial_or_number: Any, params: Any = None
    ) -> None:
        """Enqueues a trial with the same parameters that takes over the given one's run.

        Used as the storage's stale-heartbeat callback `(study, frozen_trial)` and directly.
        """
        if isinstance(trial_or_number, FrozenTrial):
            number, params = trial_or_number.number, trial_or_number.params
        else:
            number = trial_or_number
        optuna_study.enqueue_trial(params, user_attrs={RESUMES_ATTR: number})

    # -- orphans ---------------------------------------------------------------------------

    def reclaim(self) -> None:
        """Takes over the trials of processes that died (see the module docstring, step 3)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.optuna_study)
        running = self.optuna_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        for frozen in running:
            worker = frozen.user_attrs.get(WORKER_ATTR)
            if not worker or worker == self.worker or self._alive(worker):
                continue
            run_dir = self.tune_dir / frozen.user_attrs.get(
                RUN_DIR_ATTR, f"runs/{trial_name(frozen.number)}"
            )
            if run_dir.is_dir() and ownership.holder(run_dir):
                continue  # Its run outlived its tuner; it is told when the run ends.
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(
                self._study_id, frozen.number
            )
            if ownership.finished(run_dir):
                self._adopt(frozen, trial_id, run_dir)
            else:
                self._fail_and_resume(frozen, trial_id)
        self._remove_dead_workers(
            self.optuna_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        )

    def _alive(self, worker: str) -> bool:
        """False only when the worker's folder is visible here and its lock is free."""
        folder = self.tune_dir / WORKERS_DIR / worker
        try:
            return not folder.is_dir() or ownership.holder(folder) is not None
        except OSError:
            return True  # Removed while we looked: its trials are someone else's to judge.

    def _adopt(self, frozen: FrozenTrial, trial_id: int, run_dir: Path) -> None:
        """Tells a finished orphan's result; another process may have done so first."""
        metrics = json.loads((run_dir / "metrics.json").read_text())
        try:
            values = self._record_metrics(trial_id, metrics)
        except TrialFailed as error:
            self.optuna_study.tell(frozen.number, state=TrialState.FAIL, skip_if_finished=True)
            print(f"tune: {trial_name(frozen.number)} finished without its objective: {error}")
            return
        self.optuna_study.tell(frozen.number, values, skip_if_finished=True)
        print(f"tune: {trial_name(frozen.number)} had finished after its process died; recorded")

    def _fail_and_resume(self, frozen: FrozenTrial, trial_id: int) -> None:
        try:
            # The note first: a finished trial can no longer be changed.
            self.storage.set_trial_user_attr(
                trial_id, ERROR_ATTR, "interrupted: its process died; a later trial resumes its run"
            )
            if not self.storage.set_trial_state_values(trial_id, TrialState.FAIL):
                return
        except optuna.exceptions.UpdateFinishedTrialError:
            return  # Another process reclaimed it first.
        self._resume_later(self.optuna_study, frozen)
        print(f"tune: {trial_name(frozen.number)} lost its process; it will be resumed", flush=True)

    def _remove_dead_workers(self, running: list[FrozenTrial]) -> None:
        """Deletes the folders of dead processes once no running trial names them."""
        named = {t.user_attrs.get(WORKER_ATTR) for t in running}
        workers = self.tune_dir / WORKERS_DIR
        if not workers.is_dir():
            return
        for folder in workers.iterdir():
            if folder.name.startswith(".") or folder.name == self.worker or folder.name in named:
                continue
            with contextlib.suppress(OSError):
                if ownership.holder(folder) is None:
                    shutil.rmtree(folder, ignore_errors=True)

    @contextlib.contextmanager
    def _worker_lock(self) -> Iterator[None]:
        """Holds `workers/<host>-<pid>/` for this process's life.

        The folder is locked under a hidden name and then renamed, so no other process ever
        sees it unlocked and takes this process for dead.
        """
        workers = self.tune_dir / WORKERS_DIR
        workers.mkdir(exist_ok=True)
        hidden = workers / f".{self.worker}"
        hidden.mkdir(exist_ok=True)
        folder = workers / self.worker
        with ownership.lock(hidden):
            os.replace(hidden, folder)
            try:
                yield
            finally:
                shutil.rmtree(folder, ignore_errors=True)

    # -- results ---------------------------------------------------------------------------

    def write_results(self, final: bool = False) -> list[dict[str, Any]]:
        """Writes results.json and results.csv from the storage; at the end, a summary line."""
        rows = trial_rows(self.tune_dir, self.study, self.optuna_study.get_trials(deepcopy=False))
        write_results(self.tune_dir, rows)
        if final:
            counts: dict[str, int] = {}
            for row in rows:
                counts[row["status"]] = counts.get(row["status"], 0) + 1
            front = [row["name"] for row in pareto_rows(rows, self.study.directions)]
            best = ", ".join(front) or (
                "no finished trial fits max_bytes" if self.study.max_bytes else "none"
            )
            print(
                "tune: "
                + ", ".join(f"{count} {status}" for status, count in counts.items())
                + f"; Pareto front: {best}; results in {self.tune_dir}",
                flush=True,
            )
        return rows


def _short(value: Any) -> str:
    """A parameter value for a progress line: floats to 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _suggest(optuna_trial: optuna.Trial, param: Any) -> Any:
    """Asks the trial for one parameter (an enqueued trial returns its fixed value)."""
    if param.kind == "float":
        return optuna_trial.suggest_float(
            param.key, param.low, param.high, log=param.log, step=param.step
        )
    if param.kind == "int":
        return optuna_trial.suggest_int(
            param.key, param.low, param.high, log=param.log, step=param.step or 1
        )
    return optuna_trial.suggest_categorical(param.key, engine.distribution(param).choices)


def _pruning(optuna_trial: optuna.Trial) -> trial.Pruning:
    """Reports each epoch's validation accuracy to Optuna; True when the pruner says stop."""

    def report(epoch: int, accuracy: float) -> bool:
        optuna_trial.report(accuracy, epoch)
        return optuna_trial.should_prune()

    return report
