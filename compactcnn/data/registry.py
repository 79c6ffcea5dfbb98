"""A name -> loader registry of image sources, so configs and the CLI can name sources as strings.

The one list of data source names: `data.name` is checked against it, errors and help list it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from compactcnn.errors import UserError

if TYPE_CHECKING:
    from compactcnn.config import DataConfig
    from compactcnn.data import ImageData

SourceLoader = Callable[["DataConfig", int], "ImageData"]
_SOURCES: dict[str, SourceLoader] = {}


def register_source(loader: SourceLoader) -> SourceLoader:
    """Registers `loader` under its function name. Use as `@register_source`.

    A loader takes the `data` config section and a seed and returns train and test images with
    no validation set; `compactcnn.data.load_data` applies the hold-out and the limits.

    Args:
        loader: The function to register; its `__name__` is the value of `data.name`.

    Returns:
        `loader`, unchanged.

    Raises:
        ValueError: When a source of that name is already registered.
    """
    name = loader.__name__
    if name in _SOURCES:
        raise ValueError(f"data source '{name}' is already registered; pick another name")
    _SOURCES[name] = loader
    return loader


def list_sources() -> list[str]:
    """Returns the registered data source names, sorted."""
    return sorted(_SOURCES)


def get_source(name: str) -> SourceLoader:
    """Returns the loader registered as `name`.

    Raises:
        UserError: When `name` is not registered.
    """
    if name not in _SOURCES:
        raise UserError(f"unknown data source '{name}'; choose one of {', '.join(list_sources())}")
    return _SOURCES[name]
