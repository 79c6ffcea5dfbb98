"""compactcnn.files: the one atomic-write helper."""

import os

import pytest

from compactcnn import files


def test_write_text_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("old")
    files.write_text(path, "new")
    assert path.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_temporary_name_keeps_the_suffix_and_names_the_process(tmp_path):
    temporary = files.temporary_path(tmp_path / "model.keras")
    assert temporary.name == f"model.{os.getpid()}.tmp.keras"


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("good")
    with pytest.raises(RuntimeError), files.atomic_path(path) as temporary:
        temporary.write_text("half")
        raise RuntimeError("killed")
    assert path.read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.csv"]
