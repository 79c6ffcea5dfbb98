"""CIFAR binary format: layout, labels, download/verify, safe extraction, corrupt files.

Tiny archives in the official binary layout are built in tmp_path; no test touches the network.
"""

import dataclasses
import hashlib
import io
import tarfile

import numpy as np
import pytest

from compactcnn.data import cifar
from compactcnn.errors import UserError

RECORDS = 20
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship"]
CIFAR10_NAMES.append("truck")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Points downloads and extractions at tmp_path."""
    monkeypatch.setenv("COMPACTCNN_DATA", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _records(labels: np.ndarray, images: np.ndarray) -> bytes:
    """Official record bytes: label byte(s), then the R, G and B planes."""
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    return (
        np.concatenate([labels.reshape(len(images), -1), planes], axis=1).astype(np.uint8).tobytes()
    )


def _known_first_record() -> bytes:
    """A CIFAR-10 record written plane by plane by hand: R=10, G=20, B=30, R[2, 5]=200, label 7."""
    red, green, blue = bytearray([10] * 1024), bytes([20] * 1024), bytes([30] * 1024)
    red[2 * 32 + 5] = 200
    return bytes([7]) + bytes(red) + green + blue


def _cifar10_files(seed: int = 0) -> dict[str, bytes]:
    generator = np.random.default_rng(seed)
    files = {"batches.meta.txt": ("\n".join(CIFAR10_NAMES) + "\n\n").encode()}
    for name in [f"data_batch_{index}.bin" for index in range(1, 6)] + ["test_batch.bin"]:
        images = generator.integers(0, 256, (RECORDS, 32, 32, 3), dtype=np.uint8)
        files[name] = _records(np.arange(RECORDS) % 10, images)
    files["data_batch_1.bin"] = _known_first_record() + files["data_batch_1.bin"][3073:]
    return files


def _write_archive(
    path, files: dict[str, bytes], folder: str, extra: dict[str, bytes] | None = None
):
    with tarfile.open(path, "w:gz") as tar:
        members = {f"{folder}/{name}": data for name, data in files.items()} | (extra or {})
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _write_folder(root, files: dict[str, bytes]):
    root.mkdir(parents=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


def test_cifar10_archive_pixel_layout_labels_and_names(tmp_path):
    archive = _write_archive(tmp_path / "c10.tar.gz", _cifar10_files(), "cifar-10-batches-bin")
    data = cifar.load("cifar10", archive)
    assert data.x_train.shape == (5 * RECORDS, 32, 32, 3) and data.x_train.dtype == np.uint8
    assert data.x_test.shape == (RECORDS, 32, 32, 3)
    assert data.y_train.dtype == np.int32
    assert data.class_names == CIFAR10_NAMES
    # The R plane lands in channel 0, row-major: byte 2*32+5 of the R plane is pixel (2, 5).
    assert data.x_train[0, 2, 5].tolist() == [200, 20, 30]
    assert data.x_train[0, 5, 2].tolist() == [10, 20, 30]
    assert data.y_train[0] == 7
    assert data.y_train[1:RECORDS].tolist() == [index % 10 for index in range(1, RECORDS)]
    assert data.y_test.tolist() == [index % 10 for index in range(RECORDS)]
    assert data.x_val.shape == (0, 32, 32, 3)


def test_cifar10_extracted_folder_matches_archive(tmp_path):
    files = _cifar10_files(seed=3)
    archive = _write_archive(tmp_path / "c10.tar.gz", files, "cifar-10-batches-bin")
    folder = _write_folder(tmp_path / "extracted" / "cifar-10-batches-bin", files)
    from_archive = cifar.load("cifar10", archive)
    for path in (folder, folder.parent):  # The official folder itself or its parent.
        from_folder = cifar.load("cifar10", path)
        np.testing.assert_array_equal(from_folder.x_train, from_archive.x_train)
        np.testing.assert_array_equal(from_folder.y_test, from_archive.y_test)


def test_cifar100_fine_and_coarse_labels(tmp_path):
    generator = np.random.default_rng(1)
    count = 120
    fine = np.arange(count) % 100
    coarse = fine // 5
    images = generator.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
    records = _records(np.stack([coarse, fine], axis=1), images)
    files = {
        "train.bin": records,
        "test.bin": records[: 10 * 3074],
        "fine_label_names.txt": "\n".join(f"fine{index}" for index in range(100)).encode(),
        "coarse_label_names.txt": "\n".join(f"coarse{index}" for index in range(20)).encode(),
    }
    archive = _write_archive(tmp_path / "c100.tar.gz", files, "cifar-100-binary")
    fine_data = cifar.load("cifar100", archive, "fine")
    coarse_data = cifar.load("cifar100", archive, "coarse")
    assert fine_data.y_train.tolist() == fine.tolist()
    assert coarse_data.y_train.tolist() == coarse.tolist()
    assert fine_data.num_classes == 100 and coarse_data.num_classes == 20
    assert coarse_data.class_names[3] == "coarse3"
    np.testing.assert_array_equal(fine_data.x_train, images)
    assert len(fine_data.y_test) == 10


def _point_source_at(monkeypatch, archive, md5: str):
    source = dataclasses.replace(cifar.SOURCES["cifar10"], url=archive.as_uri(), md5=md5)
    monkeypatch.setitem(cifar.SOURCES, "cifar10", source)


def test_download_with_good_checksum_loads(tmp_path, monkeypatch, private_cache):
    archive = _write_archive(
        tmp_path / "cifar-10-binary.tar.gz", _cifar10_files(), "cifar-10-batches-bin"
    )
    _point_source_at(monkeypatch, archive, hashlib.md5(archive.read_bytes()).hexdigest())
    data = cifar.load("cifar10")
    assert data.x_train[0, 2, 5, 0] == 200
    downloaded = private_cache / "cifar-10-binary.tar.gz"
    assert downloaded.read_bytes() == archive.read_bytes()
    # Only the verified archive and its extracted folder: no temporary leftovers.
    assert sorted(path.name for path in private_cache.iterdir()) == [
        "cifar-10-binary.tar.gz",
        "cifar10-extracted",
    ]


def test_download_with_bad_checksum_raises_and_leaves_nothing(tmp_path, monkeypatch, private_cache):
    archive = _write_archive(
        tmp_path / "cifar-10-binary.tar.gz", _cifar10_files(), "cifar-10-batches-bin"
    )
    _point_source_at(monkeypatch, archive, "0" * 32)
    with pytest.raises(UserError, match="md5") as error:
        cifar.load("cifar10")
    assert "\n" not in str(error.value)
    assert list(private_cache.iterdir()) == []


def test_member_escaping_the_target_is_not_written(tmp_path):
    archive = _write_archive(
        tmp_path / "evil.tar.gz",
        _cifar10_files(),
        "cifar-10-batches-bin",
        extra={"../evil": b"owned", "../../evil": b"owned"},
    )
    with pytest.raises(UserError, match="unsafe"):
        cifar.load("cifar10", archive)
    assert [path for path in tmp_path.parent.rglob("evil") if path.is_file()] == []


def test_truncated_archive_is_a_one_line_user_error(tmp_path, private_cache):
    archive = _write_archive(tmp_path / "c10.tar.gz", _cifar10_files(), "cifar-10-batches-bin")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated or corrupt") as error:
        cifar.load("cifar10", archive)
    assert "\n" not in str(error.value)
    assert list(private_cache.iterdir()) == []  # The half extraction was removed.


def test_record_file_of_wrong_size_is_a_user_error(tmp_path):
    files = _cifar10_files()
    files["data_batch_3.bin"] += b"\x00" * 5
    folder = _write_folder(tmp_path / "cifar-10-batches-bin", files)
    with pytest.raises(UserError, match="data_batch_3.bin.*multiple"):
        cifar.load("cifar10", folder)


def test_missing_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        cifar.load("cifar10", tmp_path / "nowhere.tar.gz")
