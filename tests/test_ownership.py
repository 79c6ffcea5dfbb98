"""A run directory belongs to one config and one process (compactcnn.ownership), through the
real CLI where it matters: locks, config fingerprints, torn files, several sweeps on one study."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from compactcnn import ownership, train
from compactcnn.cli import main
from compactcnn.config import load_config, save_config

REPO = Path(__file__).resolve().parent.parent
# A run of a few seconds' training: synthetic images, one step, one exported file.
FAST = [
    "model.name=resnet8_tiny",  # ownership is the point, not the model: the smallest one
    "data.name=synthetic",
    "data.synthetic_size=64",
    "train.epochs=2",
    "train.batch_size=16",
    "train.steps_per_epoch=2",
    "prune.schedule=none",
    "quantize.formats=[float32]",
    "output.latency_runs=2",
    "output.tensorboard=false",
]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPACTCNN_DATA", str(tmp_path / "cache"))


def _set(overrides):
    return [part for override in overrides for part in ("--set", override)]


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in folder.rglob("*")
    }


def _one_line_error(capsys, argv, *expected):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    for text in expected:
        assert text in err
    return err


@pytest.fixture
def held(tmp_path):
    """Another live process holding the lock of tmp_path/run."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("kept: as is\n")
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from compactcnn.ownership import lock
        with lock(Path({str(run_dir)!r})):
            print("ready", flush=True)
            time.sleep(120)
    """)
    holder = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "ready"
    yield run_dir, holder.pid
    holder.kill()
    holder.wait()


def test_a_second_process_gets_one_line_naming_the_holder_and_touches_nothing(held, capsys):
    run_dir, pid = held
    before = _snapshot(run_dir)
    argv = ["run", "configs/sample_scratch.yaml", "--out", str(run_dir)]
    _one_line_error(capsys, argv, "in use", f"pid {pid}", "since", "--out")
    assert _snapshot(run_dir) == before
    assert ownership.holder(run_dir)["pid"] == pid


def test_the_lock_dies_with_its_process(held):
    run_dir, _ = held
    holder = ownership.holder(run_dir)
    os.kill(holder["pid"], 9)
    deadline = time.monotonic() + 10
    while ownership.holder(run_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ownership.holder(run_dir) is None
    with ownership.lock(run_dir):
        assert ownership.holder(run_dir)["pid"] == os.getpid()
    assert ownership.holder(run_dir) is None
    assert (run_dir / ownership.LOCK_NAME).read_text() == ""  # no stale pid once released


def _started_run(tmp_path, overrides=()):
    """A run directory as a first start leaves it: config.yaml, then a backup."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_config(
        load_config(REPO / "configs/sample_scratch.yaml", list(overrides)), run_dir / "config.yaml"
    )
    (run_dir / "backup").mkdir()
    return run_dir


def test_a_restart_with_another_config_lists_the_changed_keys(tmp_path, capsys):
    run_dir = _started_run(tmp_path)
    before = _snapshot(run_dir)
    argv = ["run", "configs/sample_scratch.yaml", "--out", str(run_dir)]
    argv += _set(["prune.final_sparsity=0.9", "train.epochs=31"])
    _one_line_error(
        capsys,
        argv,
        "started with another config",
        "prune.final_sparsity: 0.7 -> 0.9",
        "train.epochs: 30 -> 31",
        "delete the folder",
    )
    after = _snapshot(run_dir)
    # The lock file stays (deleting a lock file races with other processes), naming nobody.
    assert (run_dir / ownership.LOCK_NAME).read_text() == ""
    after.pop(".lock")
    assert after == before


def test_keys_that_cannot_change_the_result_may_change():
    base = load_config(REPO / "configs/sample_scratch.yaml")
    neutral = load_config(
        REPO / "configs/sample_scratch.yaml",
        ["output.latency_runs=3", "output.tensorboard=false", "distribute.save_freq=7"],
    )
    assert ownership.changed_keys(base, neutral) == []
    other = load_config(REPO / "configs/sample_scratch.yaml", ["train.seed=1"])
    assert ownership.changed_keys(base, other) == ["train.seed: 0 -> 1"]


@pytest.mark.parametrize("content", ["", "train: [1, 2\n", "- a list\n"])
def test_a_damaged_config_yaml_of_a_started_run_is_one_line(tmp_path, capsys, content):
    run_dir = _started_run(tmp_path)
    (run_dir / "config.yaml").write_text(content)
    argv = ["run", "configs/sample_scratch.yaml", "--out", str(run_dir)]
    _one_line_error(capsys, argv, "config.yaml", "damaged", "delete the folder")
    assert (run_dir / "config.yaml").read_text() == content


@pytest.mark.parametrize("content", ['{"keras": {"test_acc', "[]", "{}", '{"keras": {}}'])
def test_a_damaged_metrics_json_is_one_line(tmp_path, capsys, content):
    run_dir = _started_run(tmp_path)
    (run_dir / "metrics.json").write_text(content)
    argv = ["run", "configs/sample_scratch.yaml", "--out", str(run_dir)]
    _one_line_error(capsys, argv, "metrics.json", "damaged", "delete the folder")


def test_a_config_yaml_cut_short_is_damaged_not_a_change(tmp_path, capsys):
    """Its lost keys would read as defaults and pass for changes the user never made."""
    run_dir = _started_run(tmp_path)
    lines = (run_dir / "config.yaml").read_text().splitlines(keepends=True)
    (run_dir / "config.yaml").write_text("".join(lines[: len(lines) // 2]))
    argv = ["run", "configs/sample_scratch.yaml", "--out", str(run_dir)]
    err = _one_line_error(capsys, argv, "config.yaml", "damaged", "cut short", "delete the folder")
    assert "another config" not in err


@pytest.mark.parametrize("case", ["a file", "under a file", "lock is a folder"])
def test_an_unusable_out_is_one_line(tmp_path, capsys, case):
    target = tmp_path / "out"
    if case == "a file":
        target.write_text("not a folder")
    elif case == "under a file":
        (tmp_path / "file").write_text("not a folder")
        target = tmp_path / "file" / "run"
    else:
        (target / ownership.LOCK_NAME).mkdir(parents=True)
    argv = ["run", "configs/sample_scratch.yaml", "--out", str(target)]
    _one_line_error(capsys, argv, "cannot use run directory", "pick another --out")


def test_a_brief_probe_of_the_lock_does_not_turn_a_run_away(tmp_path):
    """A sweep's `holder()` holds the lock for an instant; a run starting then still gets it."""
    import fcntl
    import threading

    folder = tmp_path / "run"
    folder.mkdir()
    with (folder / ownership.LOCK_NAME).open("a+") as probe:
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        threading.Timer(0.08, fcntl.flock, (probe, fcntl.LOCK_UN)).start()
        with ownership.lock(folder):
            assert ownership.holder(folder) is not None


def test_history_with_a_torn_line_and_repeated_headers_is_repaired(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text(
        "epoch,accuracy,loss\n0,0.1,2.3\n1,0.2,2.1\nepoch,accuracy,loss\n1,0.25,2.0\n2,0.3,1."
    )
    rows = train.dedupe_history(path)
    assert [(row["epoch"], row["accuracy"]) for row in rows] == [("0", "0.1"), ("1", "0.25")]
    assert path.read_text() == "epoch,accuracy,loss\n0,0.1,2.3\n1,0.25,2.0\n"


@pytest.mark.slow
def test_a_kill_between_writing_and_renaming_metrics_resumes_to_a_clean_finish(tmp_path):
    """SIGKILL right after metrics.json's temporary file is written, before its rename."""
    run_dir = tmp_path / "run"
    argv = [
        "run",
        "configs/sample_scratch.yaml",
        "--out",
        str(run_dir),
        *_set(FAST),
        "--verbose",
        "0",
    ]
    killer = textwrap.dedent(f"""
        import os, signal, sys
        real_replace = os.replace
        def replace(source, target):
            if str(target).endswith("metrics.json"):
                os.kill(os.getpid(), signal.SIGKILL)
            real_replace(source, target)
        os.replace = replace
        from compactcnn.cli import main
        sys.exit(main({argv!r}))
    """)
    env = dict(os.environ)  # $COMPACTCNN_DATA: the session's shared cache (conftest.py)
    first = subprocess.run([sys.executable, "-c", killer], cwd=REPO, env=env, capture_output=True)
    assert first.returncode == -9
    assert not (run_dir / "metrics.json").exists()
    assert list(run_dir.glob("metrics.*.tmp.json"))  # the torn write is there
    second = subprocess.run(
        [sys.executable, "-m", "compactcnn", *argv], cwd=REPO, env=env, capture_output=True
    )
    assert second.returncode == 0, second.stderr.decode()[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train"]["epochs"] == 2
    assert not any(".tmp" in path.name for path in run_dir.rglob("*"))
    assert (run_dir / ".lock").read_text() == "" and ownership.holder(run_dir) is None


@pytest.mark.slow
def test_two_sweeps_on_one_study_split_the_runs(tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text(
        yaml.safe_dump(
            {
                "base": str(REPO / "configs/sample_scratch.yaml"),
                "set": {
                    key: yaml.safe_load(value)
                    for key, value in (item.split("=", 1) for item in FAST)
                },
                "grid": {"train.seed": [0, 1, 2, 3]},
            }
        )
    )
    sweep_dir = tmp_path / "sweep"
    env = dict(os.environ)  # $COMPACTCNN_DATA: the session's shared cache (conftest.py)
    command = [sys.executable, "-m", "compactcnn", "sweep", str(study), "--out", str(sweep_dir)]
    sweeps = [
        subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [sweep.communicate(timeout=600)[0] for sweep in sweeps]
    assert [sweep.returncode for sweep in sweeps] == [0, 0], outputs
    done = [line.split()[2] for out in outputs for line in out.splitlines() if " done " in line]
    # Every run finished exactly once, whichever process ran it.
    assert sorted(done) == [f"seed{seed}" for seed in range(4)], outputs
    rows = json.loads((sweep_dir / "results.json").read_text())
    assert [row["status"] for row in rows] == ["finished"] * 4
    # Both ended with the same table: the second to finish waited for the other's runs.
    assert all(f"results: {sweep_dir}" in out for out in outputs)


def test_a_damaged_backup_is_one_line_naming_the_folder(tmp_path):
    import tensorflow as tf

    from compactcnn.errors import UserError

    backup = tmp_path / "backup"
    variable = tf.Variable(tf.range(1000, dtype=tf.float32))
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(v=variable), str(backup / "chief"), max_to_keep=1
    )
    manager.save()
    train.check_backup(backup)  # a good backup passes
    (data,) = (backup / "chief").glob("*.data-*")
    data.write_bytes(data.read_bytes()[:100])  # torn
    with pytest.raises(UserError, match="backup .* is damaged .*delete that folder") as caught:
        train.check_backup(backup)
    assert str(backup) in str(caught.value) and "\n" not in str(caught.value)
    train.check_backup(tmp_path / "no_backup")  # nothing to check


def test_a_backup_without_its_index_is_one_line(tmp_path):
    """`latest_checkpoint` says None then, yet Keras would still try to restore it."""
    import tensorflow as tf

    from compactcnn.errors import UserError

    backup = tmp_path / "backup"
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(v=tf.Variable(1.0)), str(backup / "chief"), max_to_keep=1
    )
    manager.save()
    (index,) = (backup / "chief").glob("*.index")
    index.unlink()
    with pytest.raises(UserError, match="backup .* is damaged .*delete that folder"):
        train.check_backup(backup)


def _backup_at_step(backup: Path, steps: int) -> None:
    import tensorflow as tf

    # The names a tf_keras model's BackupAndRestore writes: model/optimizer/_iterations.
    optimizer = tf.train.Checkpoint(_iterations=tf.Variable(steps, dtype=tf.int64))
    checkpoint = tf.train.Checkpoint(model=tf.train.Checkpoint(optimizer=optimizer))
    tf.train.CheckpointManager(checkpoint, str(backup / "chief"), max_to_keep=1).save()


def test_history_that_lost_rows_the_backup_trained_is_one_line(tmp_path):
    """Resuming would finish a run whose history and metrics miss those epochs."""
    from compactcnn.errors import UserError

    backup, history = tmp_path / "backup", tmp_path / "history.csv"
    _backup_at_step(backup, steps=30)  # 3 epochs of 10 steps trained
    assert train.backed_up_steps(backup) == 30
    rows = [{"epoch": "0"}, {"epoch": "1"}, {"epoch": "2"}]
    train.check_history(history, rows, backup, steps_per_epoch=10)  # complete: resumes
    train.check_history(history, rows + [{"epoch": "3"}], backup, 10)  # a repeated row: fine
    with pytest.raises(UserError, match=r"lost the rows of epoch\(s\) 0-2, .*delete that folder"):
        train.check_history(history, [], backup, steps_per_epoch=10)
    with pytest.raises(UserError, match=r"epoch\(s\) 1, "):
        train.check_history(history, [rows[0], rows[2]], backup, steps_per_epoch=10)
    train.check_history(history, [], tmp_path / "no_backup", steps_per_epoch=10)


def test_a_started_run_without_its_config_yaml_is_one_line(tmp_path, capsys):
    run_dir = _started_run(tmp_path)
    (run_dir / "config.yaml").unlink()
    argv = ["run", "configs/sample_scratch.yaml", "--out", str(run_dir)]
    _one_line_error(capsys, argv, "config.yaml", "missing", "delete the folder")
    assert not (run_dir / "config.yaml").exists()
