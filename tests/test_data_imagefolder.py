"""Class-folder images from a folder or a tar archive, the decoded cache, and the bundled sample."""

import io
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from compactcnn.data import imagefolder, sample
from compactcnn.errors import UserError


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPACTCNN_DATA", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _tree(seed: int = 0) -> dict[str, bytes]:
    """Lossless PNGs: dog/ and cat/ (out of order on purpose), plus a grey and an oversized one."""
    generator = np.random.default_rng(seed)
    files = {}
    for split, count in (("train", 3), ("test", 2)):
        for class_name in ("dog", "cat"):
            for index in range(count):
                pixels = generator.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                files[f"{split}/{class_name}/{index}.png"] = _png(pixels)
    files["train/cat/grey.png"] = _png(np.full((32, 32), 77, np.uint8))
    files["train/dog/big.png"] = _png(np.full((64, 48, 3), 150, np.uint8))
    files["train/.DS_Store"] = b"junk a Mac leaves behind"
    return files


def _write_folder(root, files):
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _write_archive(path, files, prefix=""):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_folder_classes_labels_pixels_and_resize(tmp_path):
    files = _tree()
    data = imagefolder.load(_write_folder(tmp_path / "images", files))
    assert data.class_names == ["cat", "dog"]
    assert data.x_train.shape == (8, 32, 32, 3) and data.x_train.dtype == np.uint8
    assert data.y_train.dtype == np.int32
    # Sorted by path: cat/0..2, cat/grey, then dog/0..2, dog/big.
    assert data.y_train.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert data.y_test.tolist() == [0, 0, 1, 1]
    expected = np.asarray(Image.open(io.BytesIO(files["train/cat/0.png"])))
    np.testing.assert_array_equal(data.x_train[0], expected)
    np.testing.assert_array_equal(data.x_train[3], np.full((32, 32, 3), 77))  # grey -> RGB
    np.testing.assert_array_equal(data.x_train[7], np.full((32, 32, 3), 150))  # 64x48 -> 32x32


def test_archive_equals_folder_with_or_without_a_wrapping_folder(tmp_path):
    files = _tree(seed=1)
    from_folder = imagefolder.load(_write_folder(tmp_path / "images", files))
    for prefix in ("", "my-dataset/"):
        archive = _write_archive(tmp_path / f"images{len(prefix)}.tar.gz", files, prefix)
        from_archive = imagefolder.load(archive)
        assert from_archive.class_names == from_folder.class_names
        np.testing.assert_array_equal(from_archive.x_train, from_folder.x_train)
        np.testing.assert_array_equal(from_archive.y_test, from_folder.y_test)


def test_archive_cache_is_reused_keyed_by_mtime_and_never_written_next_to_source(
    tmp_path, monkeypatch, private_cache
):
    source_dir = tmp_path / "source"
    source_dir.mkdir()
    archive = _write_archive(source_dir / "images.tar.gz", _tree(seed=2))
    monkeypatch.setattr(imagefolder, "CACHE_AFTER_SECONDS", 0.0)
    first = imagefolder.load(archive)
    caches = list((private_cache / "imagefolder").glob("*.npz"))
    assert len(caches) == 1
    assert os.listdir(source_dir) == ["images.tar.gz"]

    def refuse(path):
        raise AssertionError("the archive was read again instead of the cache")

    monkeypatch.setattr(imagefolder, "_read_archive", refuse)
    cached = imagefolder.load(archive)
    np.testing.assert_array_equal(cached.x_train, first.x_train)
    assert cached.class_names == first.class_names and cached.y_train.dtype == np.int32

    os.utime(archive, ns=(0, 10**18))  # A changed archive must be decoded again.
    with pytest.raises(AssertionError, match="read again"):
        imagefolder.load(archive)


def test_cache_not_written_when_decoding_is_fast(tmp_path, private_cache):
    imagefolder.load(_write_archive(tmp_path / "images.tar.gz", _tree()))
    assert not list(private_cache.rglob("*.npz"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"train/cat/notes.txt": b"not an image"},
            r"train/cat/notes\.txt.*not a readable image.*remove",
        ),
        (
            {"train/cat/broken.png": _png(np.zeros((32, 32, 3), np.uint8))[:60]},
            r"broken\.png.*remove",
        ),
        (
            {"test/bird/0.png": _png(np.zeros((32, 32, 3), np.uint8))},
            r"test class 'bird'.*train/bird",
        ),
        ({"train/readme.md": b"hello"}, r"train/readme\.md.*not inside a class folder"),
    ],
)
def test_bad_files_are_one_line_errors_naming_them(tmp_path, change, message):
    root = _write_folder(tmp_path / "images", _tree() | change)
    with pytest.raises(UserError, match=message) as error:
        imagefolder.load(root)
    assert "\n" not in str(error.value)


def test_empty_class_missing_train_and_missing_path(tmp_path):
    root = _write_folder(tmp_path / "images", _tree())
    (root / "train" / "empty").mkdir()
    with pytest.raises(UserError, match="'train/empty'.*no images"):
        imagefolder.load(root)
    no_train = _write_folder(
        tmp_path / "only-test", {"test/cat/0.png": _png(np.zeros((32, 32, 3), np.uint8))}
    )
    with pytest.raises(UserError, match="no train/ folder"):
        imagefolder.load(no_train)
    with pytest.raises(UserError, match="does not exist"):
        imagefolder.load(tmp_path / "missing.tar.gz")
    not_tar = tmp_path / "fake.tar.gz"
    not_tar.write_bytes(b"definitely not gzip")
    with pytest.raises(UserError, match="not a readable tar archive"):
        imagefolder.load(not_tar)


def test_bundled_sample_is_real_cifar10_subset():
    data = sample.load()
    assert data.class_names[0] == "airplane" and data.class_names[-1] == "truck"
    assert np.bincount(data.y_train).tolist() == [50] * 10
    assert np.bincount(data.y_test).tolist() == [20] * 10
    assert data.x_train.shape == (500, 32, 32, 3) and data.x_train.dtype == np.uint8
    assert 60 < data.x_train.mean() < 200 and data.x_train.std() > 30  # real photos, not blank


def test_build_sample_is_deterministic_and_takes_first_files_per_class(tmp_path):
    jpeg = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(jpeg, format="JPEG")
    files = {
        f"{split}/{class_name}/{index:04d}.jpg": jpeg.getvalue()
        for split in ("train", "test")
        for class_name in ("b", "a")
        for index in range(6)
    }
    source = _write_archive(tmp_path / "source.tar.gz", files)
    per_class = {"train": 3, "test": 2}
    first = sample.build_sample(source, tmp_path / "one.tar.gz", per_class)
    second = sample.build_sample(source, tmp_path / "two.tar.gz", per_class)
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tar:
        names = tar.getnames()
    assert names[:3] == ["test/a/0000.jpg", "test/a/0001.jpg", "test/b/0000.jpg"]
    assert len(names) == 2 * 2 + 2 * 3
    assert imagefolder.load(first).x_train.shape == (6, 32, 32, 3)
