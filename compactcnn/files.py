"""The one way compactcnn writes a file: to a temporary name beside it, then an atomic rename.

A reader (a resumed run, a sweep, a report, another worker) therefore sees the old file or the new
one, never half of one. The temporary name is `<stem>.<pid>.tmp<suffix>`: the process id keeps two
writers apart (parallel sweep runs writing one cache file), and keeping the suffix lets writers
that infer a format from it (Keras' `.keras`) work on the temporary file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

TEMPORARY_MARK = ".tmp"


def temporary_path(path: str | os.PathLike) -> Path:
    """The temporary name this process writes `path` under before renaming it."""
    path = Path(path)
    return path.with_name(f"{path.stem}.{os.getpid()}{TEMPORARY_MARK}{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path to write; renames it onto `path` when the block succeeds.

    On an exception the temporary file (or folder) is removed and `path` is left as it was.
    """
    path = Path(path)
    temporary = temporary_path(path)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        else:
            temporary.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to `path` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
