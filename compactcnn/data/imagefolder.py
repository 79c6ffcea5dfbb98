"""Images in class folders: `train/<class>/*` and `test/<class>/*`, in a folder or a tar archive.

Archives are read straight from the tar stream (nothing is extracted to disk) and decoded with
Pillow to RGB at one size (`data.image_size`, brought there as `data.resize` says). Decoding 60,000
small JPEGs takes several seconds, and every run re-reads the data, so the decoded arrays of an
archive are cached as an .npz under `$COMPACTCNN_DATA`, keyed by the archive's absolute path, size
and modification time (a changed archive is decoded afresh) and by the image size and resize mode.
The .npz is not compressed: photo pixels shrink by only 8% while zlib makes writing it 15x slower.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import sys
import tarfile
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from compactcnn import files
from compactcnn.data import IMAGE_SHAPE, ImageData, cache_dir, empty_images, resize
from compactcnn.errors import UserError

SPLITS = ("train", "test")
# Decoding faster than this is cheaper than writing and reading a cache file.
CACHE_AFTER_SECONDS = 2.0
CACHE_VERSION = 2
# Pillow modes of 16- and 32-bit grey images: their values run to 65535, not 255.
_WIDE_GREY_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")

# Relative path parts (after any single top-level folder) -> file bytes.
Files = dict[tuple[str, ...], bytes]


def load(
    path: str | os.PathLike,
    use_cache: bool = True,
    size: tuple[int, int] = IMAGE_SHAPE[:2],
    resize_mode: str = "bilinear",
) -> ImageData:
    """Loads train and test images from class folders.

    Classes are the sub-folders of `train/`, sorted by name; label i is the i-th class. Images
    are converted to RGB (grey, palette and RGBA images too; alpha is dropped) and brought to
    `size` as `resize_mode` says.

    Args:
        path: A folder, or a .tar/.tar.gz archive, holding `train/` and `test/` (at the top or
            inside one top-level folder).
        use_cache: Reuse (and write, when decoding was slow) the decoded-array cache of an archive.
        size: The (height, width) of every image.
        resize_mode: `bilinear`, `crop` or `reject` (see `compactcnn.data.resize`).

    Returns:
        Train and test images with labels and class names (no validation set).

    Raises:
        UserError: When the path is missing, `train/` or `test/` is missing, a class is empty, a
            test class is not a train class, a file is not a readable image, or an image has
            another size and `resize_mode` is `reject`.
    """
    path = Path(path).expanduser()
    size = (int(size[0]), int(size[1]))
    if not path.exists():
        raise UserError(f"data.path '{path}' does not exist; give a folder or .tar.gz with train/")
    cache = _cache_path(path, size, resize_mode) if use_cache and path.is_file() else None
    if cache is not None and cache.is_file():
        cached = _read_cache(cache)
        if cached is not None:
            return cached
    start = time.perf_counter()
    files, folders = _read_archive(path) if path.is_file() else _read_folder(path)
    class_names, splits = _layout(files, folders, path)
    (x_train, y_train), (x_test, y_test) = (
        _decode_split(files, split, path, size, resize_mode) for split in splits
    )
    x_val, y_val = empty_images(size)
    data = ImageData(x_train, y_train, x_val, y_val, x_test, y_test, class_names)
    if cache is not None and time.perf_counter() - start > CACHE_AFTER_SECONDS:
        _write_cache(cache, data)
    return data


def _read_archive(path: Path) -> tuple[Files, set[tuple[str, ...]]]:
    """Reads every regular file of a tar archive into memory, in one sequential pass."""
    files: Files = {}
    folders: set[tuple[str, ...]] = set()
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                parts = tuple(posixpath.normpath(member.name).split("/"))
                if _hidden(parts):
                    continue
                if member.isdir():
                    folders.add(parts)
                elif member.isfile():
                    files[parts] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise UserError(
            f"'{path}' is not a readable tar archive ({error}); give a folder or a .tar/.tar.gz"
        ) from None
    return files, folders


def _read_folder(path: Path) -> tuple[Files, set[tuple[str, ...]]]:
    """Reads every file under a folder into memory."""
    files: Files = {}
    folders: set[tuple[str, ...]] = set()
    for item in path.rglob("*"):
        parts = item.relative_to(path).parts
        if _hidden(parts):
            continue
        if item.is_dir():
            folders.add(parts)
        elif item.is_file():
            try:
                files[parts] = item.read_bytes()
            except OSError as error:
                raise UserError(
                    f"cannot read '{item}' ({error.strerror}); fix or remove it"
                ) from None
    return files, folders


def _hidden(parts: tuple[str, ...]) -> bool:
    """Skips the litter of file managers and archivers (.DS_Store, ._*, __MACOSX/)."""
    return any(part.startswith(".") or part == "__MACOSX" for part in parts)


def _layout(
    files: Files, folders: set[tuple[str, ...]], path: Path
) -> tuple[list[str], list[list[tuple[tuple[str, ...], int]]]]:
    """Finds the classes and lists each split's files with their labels, sorted by path.

    Returns:
        (class_names, [train (file, label) pairs, test (file, label) pairs]).
    """
    entries = set(files) | folders
    prefix = _find_prefix(entries, path)
    depth = len(prefix)
    # Class folders come from folder entries and from file parents: some tars omit folder entries.
    members: dict[str, dict[str, list[tuple[str, ...]]]] = {split: {} for split in SPLITS}
    for parts in sorted(entries):
        if parts[:depth] != prefix or len(parts) < depth + 2 or parts[depth] not in SPLITS:
            continue
        split, class_name = parts[depth], parts[depth + 1]
        if len(parts) == depth + 2 and parts in files:
            raise UserError(
                f"'{'/'.join(parts)}' in '{path}' is not inside a class folder; move it into "
                f"{split}/<class>/ or remove it"
            )
        class_files = members[split].setdefault(class_name, [])
        if parts in files:
            class_files.append(parts)
    for split in SPLITS:
        if not members[split]:
            raise UserError(
                f"'{path}' has no {split}/<class>/ folders; expected train/<class>/ and "
                "test/<class>/ image folders"
            )
        for class_name, class_files in members[split].items():
            if not class_files:
                raise UserError(
                    f"class folder '{split}/{class_name}' in '{path}' has no images; add images "
                    "or remove the folder"
                )
    unknown = sorted(set(members["test"]) - set(members["train"]))
    if unknown:
        raise UserError(
            f"test class '{unknown[0]}' in '{path}' has no train/ folder; add "
            f"train/{unknown[0]}/ or remove test/{unknown[0]}/"
        )
    class_names = sorted(members["train"])
    return class_names, [
        [
            (parts, label)
            for label, name in enumerate(class_names)
            for parts in members[split].get(name, [])
        ]
        for split in SPLITS
    ]


def _find_prefix(entries: set[tuple[str, ...]], path: Path) -> tuple[str, ...]:
    """Returns () when train/ is at the top, or (folder,) when one top-level folder wraps it."""
    tops = {parts[0] for parts in entries}
    if "train" in tops:
        return ()
    if len(tops) == 1:
        (top,) = tops
        if (top, "train") in entries or any(parts[:2] == (top, "train") for parts in entries):
            return (top,)
    raise UserError(
        f"'{path}' has no train/ folder; expected train/<class>/ and test/<class>/ image folders"
    )


def _decode_split(
    files: Files,
    split: list[tuple[tuple[str, ...], int]],
    path: Path,
    size: tuple[int, int],
    resize_mode: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Decodes one split's files into uint8 images and int32 labels."""
    images = np.empty((len(split), *size, IMAGE_SHAPE[2]), np.uint8)
    labels = np.array([label for _, label in split], np.int32)
    for index, (parts, _) in enumerate(split):
        name = f"{path}/{'/'.join(parts)}"
        images[index] = decode_image(files[parts], name, size, resize_mode)
    return images, labels


def decode_image(
    blob: bytes, name: str, size: tuple[int, int] = IMAGE_SHAPE[:2], resize_mode: str = "bilinear"
) -> np.ndarray:
    """Decodes one image file's bytes into an RGB uint8 array of `size`.

    Grey, palette, CMYK and RGBA images are converted to RGB (alpha is dropped); 16-bit grey
    images are scaled to 8 bits.

    Args:
        blob: The encoded file (any format Pillow reads).
        name: How to name the file in an error message (for an archive: archive/member).
        size: The (height, width) to return.
        resize_mode: `bilinear`, `crop` or `reject` for an image of another size.

    Returns:
        uint8 (height, width, 3) pixels.

    Raises:
        UserError: When the bytes are not a readable image, or it has another size and
            `resize_mode` is `reject`.
    """
    try:
        with Image.open(io.BytesIO(blob)) as image:
            if resize_mode != "reject":
                # JPEG only: lets the decoder scale big photos down cheaply (to no less than the
                # wanted size) before the exact resize.
                image.draft("RGB", (size[1], size[0]))
            rgb = _to_rgb(image)
    # Pillow reports bad files with many exception types, depending on the format and the damage.
    except Exception as error:
        raise UserError(
            f"'{name}' is not a readable image ({type(error).__name__}); remove it"
        ) from None
    return np.asarray(resize.fit_image(rgb, size, resize_mode, name))


def _to_rgb(image: Image.Image) -> Image.Image:
    """Converts any Pillow mode to 8-bit RGB."""
    if image.mode in _WIDE_GREY_MODES:
        # Pillow's own conversion clips 16-bit values at 255, which turns most pixels white.
        values = np.asarray(image, dtype=np.float64)
        # "I;16*" is 16-bit by definition; "I" (32-bit) holds 16-bit PNGs in older Pillows.
        wide = image.mode != "I" or values.max(initial=0) > 255
        high = 65535.0 if wide else 255.0
        grey = np.clip(np.rint(values * (255.0 / high)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    return image.convert("RGB")


def _cache_path(path: Path, size: tuple[int, int], resize_mode: str) -> Path:
    """The cache file of an archive at one image size and resize mode: one per absolute path,
    size and mode, renamed when the archive's size or mtime change."""
    status = path.stat()
    where = hashlib.sha256(
        f"{path.resolve()}|{size[0]}x{size[1]}|{resize_mode}".encode()
    ).hexdigest()[:16]
    what = hashlib.sha256(
        f"{CACHE_VERSION}|{status.st_size}|{status.st_mtime_ns}".encode()
    ).hexdigest()[:16]
    return cache_dir() / "imagefolder" / f"{where}-{what}.npz"


def _read_cache(cache: Path) -> ImageData | None:
    """Returns the cached arrays, or None when the cache file is unreadable."""
    try:
        with np.load(cache, allow_pickle=False) as arrays:
            x_val, y_val = empty_images(arrays["x_train"].shape[1:3])
            return ImageData(
                arrays["x_train"],
                arrays["y_train"],
                x_val,
                y_val,
                arrays["x_test"],
                arrays["y_test"],
                [str(name) for name in arrays["class_names"]],
            )
    except (OSError, ValueError, KeyError, zlib.error):
        return None  # Decoding again rewrites it.


def _write_cache(cache: Path, data: ImageData) -> None:
    """Writes the decoded arrays atomically and drops stale caches of the same archive path."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with files.atomic_path(cache) as temporary, temporary.open("wb") as output:
            np.savez(
                output,
                x_train=data.x_train,
                y_train=data.y_train,
                x_test=data.x_test,
                y_test=data.y_test,
                class_names=np.array(data.class_names),
            )
        where = cache.name.split("-")[0]
        for stale in cache.parent.glob(f"{where}-*.npz"):
            if stale != cache:
                stale.unlink(missing_ok=True)
    except OSError as error:
        # A read-only cache only costs speed; the data itself is fine.
        print(f"warning: could not write the image cache {cache}: {error}", file=sys.stderr)
