"""Sweep: study validation, run names, and a resumable sweep driven by a fake runner script."""

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from compactcnn import sweep
from compactcnn.config import parse_override
from compactcnn.errors import UserError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# Stands in for `python -m compactcnn run BASE --set k=v ... --out RUN_DIR`: logs each call,
# fails on sparsity 0.7, otherwise writes a metrics.json derived from the overrides.
FAKE_RUNNER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    args = sys.argv[1:]
    assert args[0] == "run", args
    overrides = dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--set")
    run_dir = Path(args[args.index("--out") + 1])
    with open(Path(__file__).with_name("calls.log"), "a") as log:
        log.write(run_dir.name + "\\n")
    if overrides.get("prune.final_sparsity") == "0.7":
        print("Traceback (most recent call last):", file=sys.stderr)
        print("ValueError: fake failure at 70%", file=sys.stderr)
        sys.exit(3)
    run_dir.mkdir(parents=True, exist_ok=True)
    accuracy = 0.8 if overrides.get("prune.schedule") == "polynomial" else 0.7
    metrics = {
        "run": {"model": "resnet20", "data": "synthetic"},
        "keras": {"test_accuracy": accuracy},
        "pruning": {"overall_sparsity": float(overrides.get("prune.final_sparsity", 0)),
                    "layers": {"conv": {"params": 10, "zeros": 6, "sparsity": 0.6}}},
        "tflite": {"int8": {"accuracy": accuracy - 0.01, "gzip_bytes": 1234}},
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    """
)


@pytest.fixture
def study(tmp_path):
    """A base config, a 2x2 study and a command builder that runs the fake runner."""
    (tmp_path / "base.yaml").write_text("train: {epochs: 4}\nprune: {schedule: polynomial}\n")
    study_path = tmp_path / "studies" / "tiny.yaml"
    study_path.parent.mkdir()
    study_path.write_text(
        yaml.safe_dump(
            {
                "base": "../base.yaml",
                "set": {"data.name": "synthetic", "quantize.formats": ["int8"]},
                "grid": {
                    "prune.schedule": ["constant", "polynomial"],
                    "prune.final_sparsity": [0.6, 0.7],
                },
            },
            sort_keys=False,
        )
    )
    runner = tmp_path / "fake_runner.py"
    runner.write_text(FAKE_RUNNER)

    def fake_command(base, overrides, run_dir):
        real = sweep.build_command(base, overrides, run_dir)
        assert real[:3] == [sys.executable, "-m", "compactcnn"]
        return [sys.executable, str(runner), *real[3:]]

    return study_path, fake_command, tmp_path / "calls.log"


def _calls(log: Path) -> list[str]:
    return sorted(log.read_text().split()) if log.exists() else []


def test_sweep_records_failures_continues_and_skips_finished_runs(study, tmp_path):
    study_path, fake_command, log = study
    out = tmp_path / "sweep"

    assert sweep.run_sweep(study_path, out, jobs=2, command_builder=fake_command) == out

    names = [
        "constant-sparsity0.6",
        "constant-sparsity0.7",
        "polynomial-sparsity0.6",
        "polynomial-sparsity0.7",
    ]
    assert _calls(log) == names
    rows = json.loads((out / "results.json").read_text())
    assert [row["name"] for row in rows] == names
    by_name = {row["name"]: row for row in rows}
    finished = by_name["polynomial-sparsity0.6"]
    assert finished["status"] == "finished"
    assert finished["config.prune.schedule"] == "polynomial"
    assert finished["config.data.name"] == "synthetic"
    assert finished["keras.test_accuracy"] == 0.8
    assert finished["tflite.int8.gzip_bytes"] == 1234
    assert not any(key.startswith("pruning.layers") for key in finished)
    failed = by_name["constant-sparsity0.7"]
    assert failed["status"] == "failed"
    assert "ValueError: fake failure at 70%" in failed["error"]
    assert "exit status 3" in failed["error"]
    assert "fake failure" in (out / "runs" / "constant-sparsity0.7" / "error.txt").read_text()
    with (out / "results.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [line["status"] for line in table] == ["finished", "failed", "finished", "failed"]
    assert table[0]["tflite.int8.accuracy"] == "0.69"
    assert table[0]["config.prune.final_sparsity"] == "0.6"
    assert "&id" not in (out / "study.yaml").read_text()  # No YAML anchors for readers.
    resolved = yaml.safe_load((out / "study.yaml").read_text())
    assert resolved["base"] == str((tmp_path / "base.yaml").resolve())
    assert [run["name"] for run in resolved["runs"]] == names

    # The second launch re-runs only the two unfinished (failed) points.
    log.unlink()
    sweep.run_sweep(study_path, out, jobs=1, command_builder=fake_command)
    assert _calls(log) == ["constant-sparsity0.7", "polynomial-sparsity0.7"]


def test_a_damaged_metrics_json_is_failed_with_its_fix_and_run_again(study, tmp_path):
    study_path, fake_command, log = study
    out = tmp_path / "sweep"
    sweep.run_sweep(study_path, out, jobs=1, command_builder=fake_command)
    damaged = out / "runs" / "polynomial-sparsity0.6" / "metrics.json"
    damaged.write_text("{}")
    points = sweep.load_study(study_path).points
    rows = {row["name"]: row for row in sweep.collect_results(out, points)}
    assert rows["polynomial-sparsity0.6"]["status"] == "failed"
    assert "damaged" in rows["polynomial-sparsity0.6"]["error"]
    assert "delete the folder" in rows["polynomial-sparsity0.6"]["error"]
    log.unlink()
    sweep.run_sweep(study_path, out, jobs=1, command_builder=fake_command)
    assert "polynomial-sparsity0.6" in _calls(log)  # not counted as finished
    assert "constant-sparsity0.6" not in _calls(log)


def test_run_that_exits_cleanly_without_metrics_is_failed(study, tmp_path):
    study_path, _, _ = study

    def silent_command(base, overrides, run_dir):
        return [sys.executable, "-c", "pass"]

    out = sweep.run_sweep(study_path, tmp_path / "sweep", command_builder=silent_command)

    rows = json.loads((out / "results.json").read_text())
    assert {row["status"] for row in rows} == {"failed"}
    assert "wrote no metrics.json" in rows[0]["error"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"grid": {"model.nme": ["resnet20"]}}, "unknown config key 'model.nme'"),
        ({"grid": {"prune.schedule": ["cubic"]}}, "'cubic' is not one of"),
        ({"grid": {}}, "empty grid"),
        ({"grid": {"model.name": []}}, "non-empty list"),
        ({"grid": {"model.name": "resnet20"}}, "non-empty list"),
        ({"gird": {"model.name": ["resnet20"]}}, "unknown study key 'gird'"),
        ({"set": {"model.name": "resnet20"}}, "both in 'set' and in 'grid'"),
        ({"base": "missing.yaml"}, "not found"),
        ({"sample": 0}, "positive integer"),
        ({"vary": {"model.name": ["resnet44"]}}, "both 'grid' and 'vary'"),
    ],
)
def test_invalid_study_is_one_line_error_before_anything_runs(study, tmp_path, change, message):
    study_path, fake_command, log = study
    values = {"base": "../base.yaml", "grid": {"model.name": ["resnet20"]}, **change}
    study_path.write_text(yaml.safe_dump(values, sort_keys=False))

    with pytest.raises(UserError, match=message) as error:
        sweep.run_sweep(study_path, tmp_path / "sweep", command_builder=fake_command)

    assert "\n" not in str(error.value)
    assert not log.exists()
    assert not (tmp_path / "sweep").exists()


def test_sample_draws_a_seeded_subset_in_grid_order(study):
    study_path, _, _ = study
    grid = {"model.name": ["resnet20", "resnet44"], "train.seed": [0, 1, 2, 3]}
    study_path.write_text(yaml.safe_dump({"base": "../base.yaml", "grid": grid, "sample": 3}))

    first = [point.name for point in sweep.load_study(study_path).points]
    second = [point.name for point in sweep.load_study(study_path).points]

    assert first == second
    assert len(first) == 3
    everything = [f"{m}-seed{s}" for m in grid["model.name"] for s in grid["train.seed"]]
    assert first == [name for name in everything if name in first]


def test_point_names_are_short_readable_and_unique():
    assert (
        sweep.point_name(
            {
                "model.name": "resnet44",
                "prune.final_sparsity": 0.7,
                "data.augment": False,
                "prune.m_by_n": [2, 4],
            }
        )
        == "resnet44-sparsity0.7-noaugment-mbyn2x4"
    )
    assert sweep.point_name({"data.path": "/tmp/my data/x.tar"}) == "tmp_my_data_x.tar"
    long_name = sweep.point_name({"data.path": "x" * 200})
    assert len(long_name) <= sweep.MAX_NAME_LENGTH
    assert long_name != sweep.point_name({"data.path": "x" * 199})
    points = [
        sweep.Point(sweep.point_name({"data.path": p}), {"data.path": p}, [])
        for p in ("a b", "a/b", "c")
    ]
    sweep._make_names_unique(points)
    assert len({point.name for point in points}) == 3
    assert points[2].name == "c"


@pytest.mark.parametrize("value", ["resnet20", "on", "0.7", "", 0.7, 3, True, None, [2, 4]])
def test_format_value_round_trips_through_parse_override(value):
    assert parse_override(f"key={sweep.format_value(value)}") == ("key", value)


@pytest.mark.parametrize("name, runs", [("quick.yaml", 3), ("seed.yaml", 64), ("seed_cpu.yaml", 6)])
def test_shipped_studies_validate(name, runs):
    study = sweep.load_study(CONFIGS / "studies" / name)
    assert len(study.points) == runs
    assert len({point.name for point in study.points}) == runs


def test_sigterm_stops_the_running_run_and_exits_like_ctrl_c(study, tmp_path):
    study_path, _, _ = study
    pid_file = tmp_path / "child.pid"
    # The runs sleep; each writes its process id so the test can check it was stopped.
    script = textwrap.dedent(
        f"""
        import sys
        from compactcnn import sweep
        from compactcnn.cli import main

        def sleeper(base, overrides, run_dir):
            code = "import os, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)"
            return [sys.executable, "-c", "import sys; " + code, {str(pid_file)!r}]

        # The CLI calls run_sweep with its default command builder: swap in the sleeper.
        sweep.run_sweep.__kwdefaults__["command_builder"] = sleeper
        sys.exit(main(["sweep", {str(study_path)!r}, "--out", {str(tmp_path / "sweep")!r}]))
        """
    )
    process = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    child = int(pid_file.read_text())

    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)

    assert process.returncode == 130, stderr
    assert "run the same command again to resume" in stderr
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)  # The run was stopped and reaped, not orphaned.
    assert not list((tmp_path / "sweep" / "runs").glob("*/error.txt"))  # Interrupted, not failed.


def test_vary_runs_the_centre_then_one_change_at_a_time(study):
    study_path, _, _ = study
    vary = {
        "model.name": ["resnet44"],
        "prune.schedule": ["constant", "polynomial"],  # polynomial is the centre's: no new run
        "prune.final_sparsity": [0.6],
    }
    study_path.write_text(
        yaml.safe_dump(
            {"base": "../base.yaml", "set": {"train.epochs": 2}, "vary": vary}, sort_keys=False
        )
    )

    loaded = sweep.load_study(study_path)

    centre = {
        "train.epochs": 2,
        "model.name": "resnet20",  # the default, written out so the report can pair runs
        "prune.schedule": "polynomial",  # from base.yaml
        "prune.final_sparsity": 0.5,
    }
    assert [point.name for point in loaded.points] == [
        "centre",
        "resnet44",
        "constant",
        "sparsity0.6",
    ]
    assert loaded.points[0].values == centre
    for point, (key, value) in zip(
        loaded.points[1:],
        [("model.name", "resnet44"), ("prune.schedule", "constant"), ("prune.final_sparsity", 0.6)],
        strict=True,
    ):
        assert point.values == {**centre, key: value}
    assert loaded.grid["prune.schedule"] == ["polynomial", "constant"]


def test_vary_with_an_unknown_key_is_one_line(study):
    study_path, _, _ = study
    study_path.write_text(yaml.safe_dump({"base": "../base.yaml", "vary": {"model.nme": ["x"]}}))
    with pytest.raises(UserError, match="unknown config key 'model.nme'") as error:
        sweep.load_study(study_path)
    assert "\n" not in str(error.value)


def test_vary_takes_the_centre_value_of_a_varied_key_from_set(study):
    study_path, _, _ = study
    values = {"base": "../base.yaml", "set": {"prune.final_sparsity": 0.7}}
    values["vary"] = {"prune.final_sparsity": [0.6]}
    study_path.write_text(yaml.safe_dump(values))
    points = sweep.load_study(study_path).points
    assert [(p.name, p.values["prune.final_sparsity"]) for p in points] == [
        ("centre", 0.7),
        ("sparsity0.6", 0.6),
    ]


def test_a_run_another_process_finished_is_skipped_not_reported_done(tmp_path, capsys):
    """Two sweeps on one folder: the other one may finish a run after this one listed it."""
    from compactcnn import ownership

    sweep_dir = tmp_path / "sweep"
    (sweep_dir / "logs").mkdir(parents=True)
    point = sweep.Point("seed0", {"train.seed": 0}, ["train.seed=0"])
    run_dir = sweep_dir / "runs" / "seed0"
    record = json.dumps({"keras": {}, "tflite": {}})
    # What `compactcnn run` does when it finds the folder finished: a line, exit 0.
    finished_by_other = textwrap.dedent(
        f"""
        import pathlib
        run_dir = pathlib.Path({str(run_dir)!r})
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.json").write_text({record!r})
        print(run_dir, {ownership.ALREADY_FINISHED!r})
        """
    )
    launched = []

    def builder(base, overrides, folder):
        launched.append(folder)
        return [sys.executable, "-c", finished_by_other]

    # Finished between this sweep's launch of the run and the run's own lock.
    assert sweep._execute(point, tmp_path, sweep_dir, builder, sweep._Runs()) is None
    assert launched == [run_dir]
    assert "sweep: skip  seed0 (another process finished it)" in capsys.readouterr().out
    # Finished before this sweep reached it: nothing is launched at all.
    assert sweep._execute(point, tmp_path, sweep_dir, builder, sweep._Runs()) is None
    assert launched == [run_dir]
    assert "sweep: skip  seed0 (another process finished it)" in capsys.readouterr().out
    assert not (run_dir / "error.txt").exists()
