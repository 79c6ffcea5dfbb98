"""The bundled sample: 50 train + 20 test CIFAR-10 images per class, so the quickstart runs offline.

The sample is a real subset of the CIFAR-10 JPEG archive, kept as the original JPEG bytes in a small
.tar.gz with the imagefolder layout, so it is read by the same code as any user's archive.
Rebuild it (deterministically, byte for byte) from a CIFAR-10 JPEG archive with
`python -m compactcnn.data.sample --source <cifar10-jpeg.tar.gz>`.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import tarfile
from collections import Counter
from pathlib import Path

from compactcnn import files
from compactcnn.data import IMAGE_SHAPE, ImageData, imagefolder

SAMPLE_PATH = Path(__file__).parent / "sample" / "cifar10-sample.tar.gz"
PER_CLASS = {"train": 50, "test": 20}


def load(size: tuple[int, int] = IMAGE_SHAPE[:2], resize_mode: str = "bilinear") -> ImageData:
    """Loads the bundled sample (500 train and 200 test images, 10 CIFAR-10 classes).

    Args:
        size: The (height, width) to bring the 32x32 images to.
        resize_mode: `bilinear`, `crop` or `reject` (see `compactcnn.data.resize`).
    """
    # Decoding 700 tiny JPEGs takes milliseconds, so a cache would only cost disk space.
    return imagefolder.load(SAMPLE_PATH, use_cache=False, size=size, resize_mode=resize_mode)


def build_sample(
    source: str | os.PathLike,
    destination: str | os.PathLike = SAMPLE_PATH,
    per_class: dict[str, int] | None = None,
) -> Path:
    """Writes the sample archive: the first files (by name) of each class of each split.

    The output depends only on the source's contents: members are sorted, and every timestamp,
    owner and permission is fixed, so a rebuild gives the same bytes.

    Args:
        source: A CIFAR-10 archive with the imagefolder layout (train/<class>/*, test/<class>/*).
        destination: Where to write the .tar.gz.
        per_class: Images per class for each split; defaults to 50 train and 20 test.

    Returns:
        The destination path.
    """
    per_class = per_class or PER_CLASS
    chosen: dict[str, bytes] = {}
    with tarfile.open(source) as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 3 and parts[0] in per_class:
                chosen[member.name] = tar.extractfile(member).read()
    kept = []
    taken: Counter[tuple[str, str]] = Counter()
    for name in sorted(chosen):
        split, class_name, _ = name.split("/")
        if taken[split, class_name] < per_class[split]:
            taken[split, class_name] += 1
            kept.append(name)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in kept:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(chosen[name]), 0o644, 0
            tar.addfile(info, io.BytesIO(chosen[name]))
    destination = Path(destination)
    # gzip.compress with mtime=0 leaves no timestamp or file name in the header.
    files.write_bytes(destination, gzip.compress(buffer.getvalue(), compresslevel=9, mtime=0))
    return destination


def main(argv: list[str] | None = None) -> None:
    """Command line: rebuild the bundled sample from the CIFAR-10 JPEG archive."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source", required=True, help="CIFAR-10 JPEG .tar.gz with train/ and test/"
    )
    parser.add_argument("--out", default=str(SAMPLE_PATH), help="where to write the sample")
    arguments = parser.parse_args(argv)
    path = build_sample(arguments.source, arguments.out)
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
