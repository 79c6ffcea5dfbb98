"""`compactcnn tune`: study validation, resuming, sharing a study, pruning, the report.

Every trial here is a fake run (tests/tune_fakes.py: no TensorFlow, a second or less), so these
tests exercise the tuner itself: asking, telling, taking over a killed trial's run directory,
two processes on one storage. tests/test_tune_end_to_end.py runs the real tiny study.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from tune_fakes import calls, environment, fake_builder, write_study

from compactcnn import report
from compactcnn.cli import main
from compactcnn.errors import UserError
from compactcnn.report.tuning import load_tuning
from compactcnn.tuning import load_tuning_study, trial
from compactcnn.tuning.results import pareto_rows
from compactcnn.tuning.runner import run_tuning

POSTGRES_URL = os.environ.get(
    "COMPACTCNN_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)


def _trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


def _drive(folder, *arguments, **variables) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(folder / "drive.py"), "tune", str(folder / "study.yaml"), *arguments],
        env=environment(**variables),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _front_names(folder) -> list[str]:
    """The Pareto table of the written report, as trial names."""
    text = (folder / "report.md").read_text()
    section = text.split("### Pareto front of the trials", 1)[1].split("###", 1)[0]
    return [line.split("|")[2].strip() for line in section.splitlines() if "| trial-" in line]


# -- the study file -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"space": {"train.lerning_rate": {"float": [0.01, 0.1]}}},
            "unknown config key 'train.lerning_rate'",
        ),
        ({"space": {"train.learning_rate": {"float": [0.3, 0.01]}}}, "low 0.3 is above high 0.01"),
        ({"space": {"train.epochs": {"float": [1.0, 3.0]}}}, "expected int"),
        (
            {"space": {"train.learning_rate": {"float": [0, 0.1], "log": True}}},
            "log range needs low > 0",
        ),
        ({"objectives": {"tflite.float16.accuracy": "maximize"}}, "reported by no run"),
        ({"objectives": {"tflite.int8.accuracy": "up"}}, "not maximize or minimize"),
        ({"grid": {"model.name": ["resnet20"]}}, "`compactcnn sweep` runs grids"),
        ({"pruner": "median"}, "one objective only"),
        (
            {"objectives": {"keras.test_accuracy": "maximize"}, "max_bytes": 1000},
            "list a TFLite objective",
        ),
        ({"trials": 0}, "'trials' must be a positive integer"),
        ({"sampler": "grid"}, "'sampler': 'grid' is not one of"),
        (
            {"space": {"prune.final_sparsity": {"float": [0.5, 0.6], "step": 0.5}}},
            "step 0.5 is wider than the range",
        ),
    ],
)
def test_bad_study_is_one_line_and_starts_nothing(tmp_path, capsys, changes, message):
    study_path = write_study(tmp_path, **changes)
    with pytest.raises(UserError, match=message):
        load_tuning_study(study_path)
    out = tmp_path / "out"
    assert main(["tune", str(study_path), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1, error
    assert not out.exists()


def test_pruner_needs_validation_accuracy(tmp_path):
    study_path = write_study(
        tmp_path, objectives={"tflite.int8.accuracy": "maximize"}, pruner="median"
    )
    with pytest.raises(UserError, match="set data.validation_size"):
        load_tuning_study(study_path)


def test_space_forms_and_corners_checked_together(tmp_path):
    study_path = write_study(
        tmp_path,
        space={
            "prune.begin_epoch": {"float": [0.0, 1.5]},
            "prune.end_epoch": {"float": [1.0, 2.0]},
            "train.batch_size": {"int": [16, 64], "step": 16},
            "quantize.formats": {"choice": [["int8"], ["float32", "int8"]]},
            "model.name": ["resnet20", "resnet32"],
        },
    )
    # begin_epoch 1.5 is past the base's end_epoch 1.2, but fine beside the searched end 2.0:
    # a corner needs one valid combination with the other keys' corners.
    base = yaml.safe_load((tmp_path / "base.yaml").read_text())
    base["prune"]["end_epoch"] = 1.2
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    study = load_tuning_study(study_path)
    assert [p.kind for p in study.space] == ["float", "float", "int", "choice", "choice"]
    assert study.space[2].step == 16 and study.space[3].choices == (["int8"], ["float32", "int8"])


def test_unreachable_storage_is_one_line_and_starts_nothing(tmp_path, capsys):
    study_path = write_study(tmp_path)
    out = tmp_path / "out"
    for url in (
        "postgresql://postgres@127.0.0.1:1/test",
        "not a url",
        "sqlite:////no/such/dir/x.db",
    ):
        assert main(["tune", str(study_path), "--out", str(out), "--storage", url]) == 2
        error = capsys.readouterr().err
        assert error.startswith("error: ") and error.count("\n") == 1, error
        assert "storage" in error
        assert not out.exists()


# -- one process ----------------------------------------------------------------------------


def test_tune_finishes_never_reruns_and_reports_the_storage_front(tmp_path, capsys):
    study_path = write_study(tmp_path)
    out = tmp_path / "out"
    run_tuning(study_path, out, command_builder=fake_builder(tmp_path))
    assert [name for name, _ in calls(tmp_path)] == [f"trial-{n}" for n in range(4)]
    run_tuning(study_path, out, command_builder=fake_builder(tmp_path))  # Nothing left to do.
    assert len(calls(tmp_path)) == 4

    trials = _trials(f"sqlite:///{out}/optuna.db", "study")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    # Seeded per trial number: four different suggestions, in range.
    sparsities = [t.params["prune.final_sparsity"] for t in trials]
    assert len(set(sparsities)) == 4 and all(0.3 <= s <= 0.9 for s in sparsities)
    rows = json.loads((out / "results.json").read_text())
    assert [row["name"] for row in rows] == [f"trial-{n}" for n in range(4)]
    assert rows[0]["tflite.int8.accuracy"] == trials[0].values[0]
    assert rows[0]["config.prune.final_sparsity"] == trials[0].params["prune.final_sparsity"]

    assert main(["report", str(out)]) == 0
    storage_front = {
        f"trial-{t.number}"
        for t in optuna.load_study(
            study_name="study", storage=f"sqlite:///{out}/optuna.db"
        ).best_trials
    }
    assert set(_front_names(out)) == storage_front
    assert len(_front_names(out)) == len(storage_front)
    for stem in ("tuning_pareto", "tuning_history", "tuning_importances"):
        assert (out / "charts" / f"{stem}.png").stat().st_size > 5000
    text = (out / "report.md").read_text()
    assert text.startswith("# Tuning report: out") and "## Tuning" in text
    assert (out / "best" / "model.tflite").read_bytes() == b"TFL3"


def test_max_bytes_budget_keeps_oversized_trials_off_the_front(tmp_path):
    study_path = write_study(tmp_path, max_bytes=200_000, trials=5)
    out = tmp_path / "out"
    run_tuning(study_path, out, command_builder=fake_builder(tmp_path))
    tuning = load_tuning(out)
    oversized = [r for r in tuning.rows if r["tflite.int8.bytes"] > 200_000]
    fitting = [r for r in tuning.rows if r["tflite.int8.bytes"] <= 200_000]
    assert oversized and fitting  # The seeded sampler draws both kinds in five trials.
    assert all(row["trial.feasible"] is False for row in oversized)
    front = pareto_rows(tuning.rows, tuning.study.directions)
    assert front and all(row["tflite.int8.bytes"] <= 200_000 for row in front)
    # The report's best model respects the study's budget without --max-bytes.
    report.write_report(out)
    best = json.loads((out / "best" / "best.json").read_text())
    assert best["bytes"] <= 200_000 and best["budgets"]["max_bytes"] == 200_000


def test_failed_trial_counts_and_tune_goes_on(tmp_path):
    study_path = write_study(
        tmp_path, space={"train.seed": {"choice": [13, 14]}}, trials=3, sampler="random"
    )
    out = tmp_path / "out"
    run_tuning(study_path, out, command_builder=fake_builder(tmp_path))
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 3
    failed = [row for row in rows if row["status"] == "failed"]
    assert failed and all("fake failure" in row["error"] for row in failed)
    assert all((out / row["run_dir"] / "error.txt").exists() for row in failed)


def test_a_finished_orphan_is_recorded_not_rerun(tmp_path):
    """A trial whose tuner died but whose run finished gets the run's result, budget included."""
    study_path = write_study(tmp_path, trials=1, max_bytes=100_000)
    out = tmp_path / "out"
    run_tuning(study_path, out, command_builder=fake_builder(tmp_path))
    study = optuna.load_study(study_name="study", storage=f"sqlite:///{out}/optuna.db")
    orphan = study.ask(fixed_distributions=study.trials[0].distributions)
    orphan.set_user_attr("worker", "gone-1")
    (out / "workers" / "gone-1").mkdir(parents=True)  # Its folder is here, and unlocked.
    (out / "runs" / "trial-1").mkdir()
    (out / "runs" / "trial-1" / "metrics.json").write_text(
        (out / "runs" / "trial-0" / "metrics.json").read_text()
    )
    write_study(tmp_path, trials=2, max_bytes=100_000)
    run_tuning(study_path, out, command_builder=fake_builder(tmp_path))
    assert len(calls(tmp_path)) == 1  # Only trial-0 ever ran.
    first, adopted = _trials(f"sqlite:///{out}/optuna.db", "study")
    assert adopted.state == TrialState.COMPLETE and adopted.values == first.values
    # The budget constraint is recorded as `Trial.set_constraint` records it.
    assert adopted.constraints == first.constraints and len(first.constraints) == 1
    assert not (out / "workers" / "gone-1").exists()


def test_changed_study_is_refused(tmp_path):
    study_path = write_study(tmp_path, trials=1)
    out = tmp_path / "out"
    run_tuning(study_path, out, command_builder=fake_builder(tmp_path))
    write_study(tmp_path, trials=2, space={"prune.final_sparsity": {"float": [0.3, 0.8]}})
    with pytest.raises(UserError, match="started with another study file .*space"):
        run_tuning(study_path, out, command_builder=fake_builder(tmp_path))
    # More trials of the same study are fine.
    write_study(tmp_path, trials=2)
    run_tuning(study_path, out, command_builder=fake_builder(tmp_path))
    assert len(calls(tmp_path)) == 2


def test_pruner_stops_a_trial_below_the_median(tmp_path, monkeypatch):
    monkeypatch.setattr(trial, "POLL_SECONDS", 0.05)
    monkeypatch.setenv("FAKE_EPOCHS", "4")
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "0.25")
    study_path = write_study(
        tmp_path,
        space={"train.learning_rate": {"float": [0.1, 0.6]}},
        objectives={"tflite.int8.accuracy": "maximize"},
        pruner="median",
        sampler="random",
        trials=6,
        seed=1,  # trial 3 draws a rate above the median of those before it
    )
    base = yaml.safe_load((tmp_path / "base.yaml").read_text())
    base["data"]["validation_size"] = 16
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    out = tmp_path / "out"
    run_tuning(study_path, out, command_builder=fake_builder(tmp_path))
    trials = _trials(f"sqlite:///{out}/optuna.db", "study")
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert pruned and len(complete) >= 2, [(t.params, t.state) for t in trials]
    # Accuracy falls with the learning rate (tune_fakes): a pruned trial was worse than the
    # median of the trials finished before it, after the warm-up epoch and before its end.
    for pruned_trial in pruned:
        before = [t for t in complete if t.number < pruned_trial.number]
        rate = pruned_trial.params["train.learning_rate"]
        assert rate > sorted(t.params["train.learning_rate"] for t in before)[len(before) // 2 - 1]
        assert 1 <= max(pruned_trial.intermediate_values) < 3
    rows = json.loads((out / "results.json").read_text())
    assert {row["status"] for row in rows} == {"finished", "pruned"}


# -- killed, and several processes -------------------------------------------------------------


def test_killed_tune_resumes_its_trial_and_reruns_no_finished_one(tmp_path):
    write_study(tmp_path, trials=3)
    out = tmp_path / "out"
    slow = {"FAKE_EPOCHS": "3", "FAKE_EPOCH_SECONDS": "0.5"}
    first = _drive(tmp_path, "--out", str(out), **slow)
    deadline = time.monotonic() + 60
    while not (out / "runs" / "trial-1" / "backup.json").exists():
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    second = _drive(tmp_path, "--out", str(out), **slow)
    stdout, stderr = second.communicate(timeout=120)
    assert second.returncode == 0, stderr

    runs = calls(tmp_path)
    started = [name for name, _ in runs]
    assert started.count("trial-0") == 1  # Finished before the kill: not rerun.
    assert ("trial-1", 0) in runs
    # The killed trial came back as trial-2, in trial-1's folder (renamed), from its backup.
    resumed = [start for name, start in runs if name == "trial-2"]
    assert resumed and resumed[0] >= 1, runs
    assert "trial-2 resumes trial-1" in stdout
    trials = _trials(f"sqlite:///{out}/optuna.db", "study")
    states = {t.number: t.state for t in trials}
    assert states[1] == TrialState.FAIL and trials[2].user_attrs["resumes_trial"] == 1
    assert sum(state == TrialState.COMPLETE for state in states.values()) == 3
    assert not (out / "runs" / "trial-1").exists()

    assert main(["report", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert "trial-1" not in [row["name"] for row in rows]  # trial-2 stands for it.
    best = optuna.load_study(study_name="study", storage=f"sqlite:///{out}/optuna.db").best_trials
    assert sorted(_front_names(out)) == sorted(f"trial-{t.number}" for t in best)


def test_sigterm_stops_the_run_and_the_next_launch_resumes_it(tmp_path):
    write_study(tmp_path, trials=2)
    out = tmp_path / "out"
    slow = {"FAKE_EPOCHS": "3", "FAKE_EPOCH_SECONDS": "0.5"}
    first = _drive(tmp_path, "--out", str(out), **slow)
    deadline = time.monotonic() + 60
    while not (out / "runs" / "trial-0" / "backup.json").exists():
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)
    _, stderr = first.communicate(timeout=60)
    assert first.returncode == 130 and "run the same command again to resume" in stderr
    trials = _trials(f"sqlite:///{out}/optuna.db", "study")
    # Stopped, not failed for good: re-enqueued at once, with the same parameters.
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[1].user_attrs["resumes_trial"] == 0
    second = _drive(tmp_path, "--out", str(out), **slow)
    _, stderr = second.communicate(timeout=120)
    assert second.returncode == 0, stderr
    runs = calls(tmp_path)
    assert runs[0] == ("trial-0", 0) and runs[1][0] == "trial-1" and runs[1][1] >= 1, runs
    assert [name for name, _ in runs[2:]] == ["trial-2"]
    trials = _trials(f"sqlite:///{out}/optuna.db", "study")
    assert trials[1].params == trials[0].params and trials[1].state == TrialState.COMPLETE


def _two_processes(tmp_path, *arguments) -> list[optuna.trial.FrozenTrial]:
    write_study(tmp_path, trials=4)
    out = tmp_path / "out"
    slow = {"FAKE_EPOCH_SECONDS": "0.3"}
    processes = [_drive(tmp_path, "--out", str(out), *arguments, **slow) for _ in range(2)]
    for process in processes:
        _, stderr = process.communicate(timeout=180)
        assert process.returncode == 0, stderr
    runs = calls(tmp_path)
    names = [name for name, _ in runs]
    assert len(names) == len(set(names)), runs  # No trial ran twice.
    return runs


def test_two_processes_share_a_sqlite_study(tmp_path):
    runs = _two_processes(tmp_path)
    trials = _trials(f"sqlite:///{tmp_path}/out/optuna.db", "study")
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    # Both processes ran trials; at most one over budget (both asked for the last one at once).
    assert 4 <= len(complete) <= 5 and len(complete) == len(trials)
    assert sorted(name for name, _ in runs) == sorted(f"trial-{t.number}" for t in complete)
    assert len({t.user_attrs["worker"] for t in complete}) == 2


def _postgres_or_skip() -> None:
    import sqlalchemy

    from compactcnn.tuning.storage import with_driver

    try:
        engine = sqlalchemy.create_engine(
            with_driver(POSTGRES_URL), connect_args={"connect_timeout": 5}
        )
        with engine.connect():
            pass
    except Exception as error:  # noqa: BLE001 - any failure means no server for this test
        reason = f"no PostgreSQL at {POSTGRES_URL}: {str(error).splitlines()[0]}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI must provide one)")
        pytest.skip(reason)


def test_two_processes_share_a_postgresql_study(tmp_path):
    _postgres_or_skip()
    name = f"compactcnn-test-{uuid.uuid4().hex[:12]}"
    try:
        _two_processes(tmp_path, "--storage", POSTGRES_URL, "--study-name", name)
        from compactcnn.tuning.storage import with_driver

        trials = _trials(with_driver(POSTGRES_URL), name)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        assert 4 <= len(complete) <= 5 and len(complete) == len(trials)
        assert len({t.user_attrs["worker"] for t in complete}) == 2
        # tune.yaml records the URL; the report reads the trials from PostgreSQL.
        assert yaml.safe_load((tmp_path / "out" / "tune.yaml").read_text())["storage"] == (
            POSTGRES_URL
        )
        assert main(["report", str(tmp_path / "out")]) == 0
        assert len(_front_names(tmp_path / "out")) >= 1
    finally:
        from compactcnn.tuning.storage import with_driver

        with contextlib.suppress(KeyError):  # The study may never have been created.
            optuna.delete_study(study_name=name, storage=with_driver(POSTGRES_URL))


def test_neighbouring_trials_draw_apart():
    """Seeds 0-3 once gave second draws of 0.715, 0.720, ..., 0.708: near-duplicate trials."""
    from compactcnn.tuning.engine import TrialSeededSampler

    def objective(trial: optuna.Trial) -> float:
        return trial.suggest_float("x", 0.0, 1.0) + trial.suggest_float("y", 0.0, 1.0)

    study = optuna.create_study(sampler=TrialSeededSampler(optuna.samplers.RandomSampler, seed=0))
    study.optimize(objective, n_trials=4)
    for name in ("x", "y"):
        draws = [trial.params[name] for trial in study.trials]
        assert max(draws) - min(draws) > 0.2, (name, draws)
