"""CIFAR-10 and CIFAR-100 in the official binary format: download, verify, extract, decode.

Binary records are fixed-size: CIFAR-10 has 1 label byte then 3072 pixel bytes, CIFAR-100 has a
coarse and a fine label byte then 3072 pixel bytes. The pixels are three 32x32 planes (R, G, B),
so a record reshapes to (3, 32, 32) and transposes to the HWC layout every model here expects.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compactcnn import files
from compactcnn.data import ImageData, cache_dir, empty_images
from compactcnn.errors import UserError

PIXELS_PER_IMAGE = 32 * 32 * 3


@dataclass(frozen=True)
class Source:
    """Where one dataset's official archive lives and what is inside it."""

    url: str
    md5: str
    folder: str  # The folder the archive extracts to.
    train_files: tuple[str, ...]
    test_file: str
    label_bytes: int  # Label bytes before the pixels of each record.


# Module-level so tests can point the download at a local file:// archive.
SOURCES = {
    "cifar10": Source(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        md5="c32a1d4ab5d03f1284b67883e8d87530",
        folder="cifar-10-batches-bin",
        train_files=tuple(f"data_batch_{index}.bin" for index in range(1, 6)),
        test_file="test_batch.bin",
        label_bytes=1,
    ),
    "cifar100": Source(
        url="https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
        md5="03b5dce01913d631647c71ecec9e9cb8",
        folder="cifar-100-binary",
        train_files=("train.bin",),
        test_file="test.bin",
        label_bytes=2,
    ),
}


def load(name: str, path: str | os.PathLike | None = None, label_mode: str = "fine") -> ImageData:
    """Loads CIFAR-10 or CIFAR-100, downloading the official archive when no path is given.

    Args:
        name: `cifar10` or `cifar100`.
        path: A local official archive (.tar.gz) or its extracted folder. None downloads the
            archive into `$COMPACTCNN_DATA` (once) and verifies its md5.
        label_mode: CIFAR-100 only: `fine` (100 classes) or `coarse` (20 superclasses).

    Returns:
        Train and test images with labels and class names (no validation set).

    Raises:
        UserError: On a failed or corrupt download, a missing path, or a corrupt archive or file.
    """
    source = SOURCES[name]
    folder = _find_folder(_prepare(name, source, path), source)
    x_train, y_train = _read_records(
        [folder / file for file in source.train_files], source.label_bytes, label_mode
    )
    x_test, y_test = _read_records([folder / source.test_file], source.label_bytes, label_mode)
    class_names = _class_names(folder, name, label_mode)
    if max(y_train.max(), y_test.max()) >= len(class_names):
        raise UserError(
            f"'{folder}' has labels beyond its {len(class_names)} class names; the files are "
            "corrupt, delete them and extract again"
        )
    x_val, y_val = empty_images()
    return ImageData(x_train, y_train, x_val, y_val, x_test, y_test, class_names)


def _prepare(name: str, source: Source, path: str | os.PathLike | None) -> Path:
    """Returns a folder holding the extracted data, downloading and extracting as needed."""
    if path is None:
        archive = download(source.url, source.md5, cache_dir() / Path(source.url).name)
        return extract(archive, cache_dir() / f"{name}-extracted")
    path = Path(path).expanduser()
    if path.is_dir():
        return path
    if not path.is_file():
        raise UserError(f"data.path '{path}' does not exist; give the {name} archive or folder")
    # A user's archive may sit on a read-only disk, so it extracts into the cache, keyed by
    # identity so a replaced archive is extracted afresh.
    status = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{status.st_size}|{status.st_mtime_ns}".encode())
    return extract(path, cache_dir() / f"{name}-extracted-{key.hexdigest()[:16]}")


def download(url: str, md5: str, destination: Path) -> Path:
    """Downloads `url` to `destination` once, verifying its md5 before it gets its final name.

    Args:
        url: Where to fetch the file (any scheme urllib opens, including file://).
        md5: Expected hex md5 of the file.
        destination: Final path; nothing is written there unless the checksum matches.

    Returns:
        `destination`.

    Raises:
        UserError: When the download fails or its checksum does not match (the partial file is
            deleted).
    """
    if destination.is_file():
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    print(f"downloading {url} to {destination}", file=sys.stderr)
    digest = hashlib.md5()
    with files.atomic_path(destination) as temporary:
        try:
            with (
                temporary.open("wb") as output,
                urllib.request.urlopen(url, timeout=60) as response,
            ):
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    output.write(chunk)
        except (urllib.error.URLError, OSError) as error:
            raise UserError(
                f"could not download {url} ({error}); check the network or set data.path to a "
                "local copy of the archive"
            ) from None
        if digest.hexdigest() != md5:
            raise UserError(
                f"download of {url} is corrupt (md5 {digest.hexdigest()}, expected {md5}); the "
                "partial file was deleted, run again to retry"
            )
    return destination


def extract(archive: Path, target: Path) -> Path:
    """Extracts a tar archive into `target` once, refusing members that point outside it.

    The archive is extracted into a temporary folder next to `target`, then renamed, so an
    interrupted extraction never leaves a half-filled `target` behind.

    Args:
        archive: A .tar, .tar.gz or other archive that `tarfile` opens.
        target: The folder to create.

    Returns:
        `target`.

    Raises:
        UserError: When the archive is truncated or corrupt or holds an unsafe member.
    """
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = files.temporary_path(target)
    shutil.rmtree(temporary, ignore_errors=True)  # left by a killed attempt of this pid
    temporary.mkdir()
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(temporary, filter="data")
    except tarfile.FilterError as error:
        shutil.rmtree(temporary)
        raise UserError(
            f"archive '{archive}' has an unsafe member ({error}); use the official archive"
        ) from None
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        shutil.rmtree(temporary)
        raise UserError(
            f"archive '{archive}' is truncated or corrupt ({error}); delete it and download "
            "it again"
        ) from None
    try:
        os.replace(temporary, target)
    except OSError:
        # Another process finished the same extraction first; its copy is as good as ours.
        shutil.rmtree(temporary)
    return target


def _find_folder(root: Path, source: Source) -> Path:
    """Finds the folder holding the record files: `root` itself or its official sub-folder."""
    for folder in (root, root / source.folder):
        if (folder / source.test_file).is_file():
            return folder
    raise UserError(
        f"'{root}' holds no {source.folder}/{source.test_file}; give the official binary "
        f"archive ({Path(source.url).name}) or the folder it extracts to"
    )


def _read_records(
    files: list[Path], label_bytes: int, label_mode: str
) -> tuple[np.ndarray, np.ndarray]:
    """Reads fixed-size records into (uint8 NHWC images, int32 labels)."""
    record_size = label_bytes + PIXELS_PER_IMAGE
    blocks = []
    for file in files:
        if not file.is_file():
            raise UserError(
                f"'{file}' is missing; the CIFAR folder is incomplete, extract it again"
            )
        raw = np.fromfile(file, dtype=np.uint8)
        if raw.size == 0 or raw.size % record_size:
            raise UserError(
                f"'{file}' has {raw.size} bytes, not a multiple of the {record_size}-byte record; "
                "the file is truncated, delete it and extract again"
            )
        blocks.append(raw.reshape(-1, record_size))
    records = np.concatenate(blocks)
    # CIFAR-100 records start with the coarse label, then the fine label.
    label_column = 1 if label_bytes == 2 and label_mode == "fine" else 0
    labels = records[:, label_column].astype(np.int32)
    images = records[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _class_names(folder: Path, name: str, label_mode: str) -> list[str]:
    """Reads the class names shipped with the data, one per line."""
    if name == "cifar10":
        file = folder / "batches.meta.txt"
    else:
        file = folder / f"{label_mode}_label_names.txt"
    if not file.is_file():
        raise UserError(f"'{file}' is missing; the CIFAR folder is incomplete, extract it again")
    return [line.strip() for line in file.read_text().splitlines() if line.strip()]
