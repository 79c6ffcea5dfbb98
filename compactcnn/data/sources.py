"""The built-in image sources, registered by name; each imports its module only when called.

Registering here, rather than in each source module, keeps `import compactcnn.data` light: the
modules (and what they import, e.g. Pillow) are loaded on the first call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from compactcnn.data.registry import register_source
from compactcnn.errors import UserError

if TYPE_CHECKING:
    from compactcnn.config import DataConfig
    from compactcnn.data import ImageData


def image_size(config: DataConfig) -> tuple[int, int]:
    """The (height, width) to load at (`compactcnn.data.image_size`, imported on demand)."""
    from compactcnn.data import image_size as size_of

    return size_of(config)


@register_source
def cifar10(config: DataConfig, seed: int) -> ImageData:
    """CIFAR-10, official binary format: `data.path` or a one-time checked download."""
    from compactcnn.data import cifar

    return cifar.load("cifar10", config.path, config.label_mode)


@register_source
def cifar100(config: DataConfig, seed: int) -> ImageData:
    """CIFAR-100, official binary format, `fine` or `coarse` labels (`data.label_mode`)."""
    from compactcnn.data import cifar

    return cifar.load("cifar100", config.path, config.label_mode)


@register_source
def imagefolder(config: DataConfig, seed: int) -> ImageData:
    """Class folders `train/<class>/*` and `test/<class>/*` in `data.path` (folder or tar).

    Raises:
        UserError: When `data.path` is not set.
    """
    from compactcnn.data import imagefolder as module

    if not config.path:
        raise UserError("data.name 'imagefolder' needs data.path: a folder or .tar.gz with train/")
    return module.load(config.path, size=image_size(config), resize_mode=config.resize)


@register_source
def sample(config: DataConfig, seed: int) -> ImageData:
    """The bundled CIFAR-10 sample (500 train, 200 test images), for offline quickstarts."""
    from compactcnn.data import sample as module

    return module.load(size=image_size(config), resize_mode=config.resize)


@register_source
def synthetic(config: DataConfig, seed: int) -> ImageData:
    """Seeded generated images (`data.synthetic_size`, `data.synthetic_classes`), for tests."""
    from compactcnn.data import synthetic as module

    return module.load(config.synthetic_size, config.synthetic_classes, seed, image_size(config))
