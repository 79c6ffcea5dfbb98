"""A name -> loader registry of image sources, so configs and the CLI can name sources as strings.

The one list of data source names: `data.name` is checked against it, errors and help list it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from compactcnn.registry import Registry

if TYPE_CHECKING:
    from compactcnn.config import DataConfig
    from compactcnn.data import ImageData

SourceLoader = Callable[["DataConfig", int], "ImageData"]
_SOURCES: Registry[SourceLoader] = Registry("data source")


def register_source(loader: SourceLoader) -> SourceLoader:
    """Registers `loader` under its function name. Use as `@register_source`.

    A loader takes the `data` config section and a seed and returns train and test images with
    no validation set; `compactcnn.data.load_data` applies the hold-out and the limits.

    Raises:
        ValueError: When a source of that name is already registered.
    """
    return _SOURCES.register(loader)


def list_sources() -> list[str]:
    """Returns the registered data source names, sorted."""
    return _SOURCES.names()


def get_source(name: str) -> SourceLoader:
    """Returns the loader registered as `name`.

    Raises:
        UserError: When `name` is not registered.
    """
    return _SOURCES.get(name)
