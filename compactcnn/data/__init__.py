"""Image sources behind one call: `load_data(config) -> ImageData`.

Every source returns raw RGB uint8 images (N, H, W, 3) and int32 labels, at `data.image_size`
(default 32x32) when it can decode to any size. This module then applies what is common to all of
them: bringing fixed-size sources (CIFAR) to the size, the seeded validation hold-out and the
train/test limits. Sources
register by name with `@register_source` (see `list_sources()`); the built-in ones import their
modules on demand, so `import compactcnn.data` stays light and does not load TensorFlow.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compactcnn.config import DataConfig
from compactcnn.data import sources  # noqa: F401  (registers the built-in sources)
from compactcnn.data.registry import get_source, list_sources, register_source
from compactcnn.errors import UserError

# The default image shape: the CIFAR sources' own, and the built-in ResNets' input.
IMAGE_SHAPE = (32, 32, 3)

__all__ = [
    "IMAGE_SHAPE",
    "ImageData",
    "cache_dir",
    "empty_images",
    "get_source",
    "image_size",
    "list_sources",
    "load_data",
    "register_source",
    "stratified_split",
]


@dataclass
class ImageData:
    """Decoded images and labels of one source, split into train, validation and test.

    Attributes:
        x_train: uint8 (N, H, W, 3) training images.
        y_train: int32 (N,) training labels.
        x_val: uint8 validation images, shape (0, H, W, 3) when there is no validation set.
        y_val: int32 validation labels, shape (0,) when there is no validation set.
        x_test: uint8 test images.
        y_test: int32 test labels.
        class_names: Name of each class, indexed by label.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        """Number of classes (the model's output width)."""
        return len(self.class_names)


def empty_images(size: tuple[int, int] = IMAGE_SHAPE[:2]) -> tuple[np.ndarray, np.ndarray]:
    """Returns empty (images, labels) arrays with the right dtypes and shapes.

    Args:
        size: The (height, width) of the images that are not there.
    """
    return np.zeros((0, *size, IMAGE_SHAPE[2]), np.uint8), np.zeros((0,), np.int32)


def image_size(config: DataConfig) -> tuple[int, int]:
    """The (height, width) images are loaded at: `data.image_size`, or the default 32x32."""
    return tuple(config.image_size) if config.image_size else IMAGE_SHAPE[:2]


def cache_dir() -> Path:
    """Folder for downloads and decoded caches: `$COMPACTCNN_DATA`, default ~/.cache/compactcnn."""
    return Path(os.environ.get("COMPACTCNN_DATA", "~/.cache/compactcnn")).expanduser()


def load_data(config: DataConfig, seed: int = 0) -> ImageData:
    """Loads the configured source and applies the validation hold-out and the limits.

    Images of a fixed-size source (CIFAR) are first brought to `data.image_size` as `data.resize`
    says. The validation images are held out of the full training set next (stratified,
    seeded), then `train_limit` and `test_limit` keep a stratified seeded subset of what remains.

    Args:
        config: The `data` section of the run config.
        seed: Seed of the hold-out and subset choices (and of the synthetic source).

    Returns:
        The images, labels and class names.

    Raises:
        UserError: When `config.name` is not a registered source, the source is missing or
            corrupt, an image has another size and `data.resize` is `reject`, or
            `validation_size` leaves no training images.
    """
    from compactcnn.data import resize  # here: it loads Pillow, which most callers never need

    data = _load_source(config, seed)
    size = image_size(config)
    data = dataclasses.replace(
        data,
        x_train=resize.fit_arrays(data.x_train, size, config.resize, config.name),
        x_test=resize.fit_arrays(data.x_test, size, config.resize, config.name),
    )
    generator = np.random.default_rng(seed)
    x_val, y_val = empty_images(size)
    x_train, y_train = data.x_train, data.y_train
    if config.validation_size:
        if config.validation_size >= len(y_train):
            raise UserError(
                f"data.validation_size={config.validation_size} leaves no training images "
                f"(the training set has {len(y_train)}); use a smaller validation_size"
            )
        held_out, kept = stratified_split(y_train, config.validation_size, generator)
        x_val, y_val = x_train[held_out], y_train[held_out]
        x_train, y_train = x_train[kept], y_train[kept]
    if 0 < config.train_limit < len(y_train):
        kept, _ = stratified_split(y_train, config.train_limit, generator)
        x_train, y_train = x_train[kept], y_train[kept]
    x_test, y_test = data.x_test, data.y_test
    if 0 < config.test_limit < len(y_test):
        kept, _ = stratified_split(y_test, config.test_limit, generator)
        x_test, y_test = x_test[kept], y_test[kept]
    return dataclasses.replace(
        data,
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        x_test=x_test,
        y_test=y_test,
    )


def stratified_split(
    labels: np.ndarray, count: int, generator: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Picks `count` indices at random with each class in proportion to its share of `labels`.

    Args:
        labels: Class index of each item.
        count: How many indices to pick.
        generator: Source of randomness, so the choice is reproducible.

    Returns:
        (chosen, rest): two sorted index arrays that together cover every item once.
    """
    order = generator.permutation(len(labels))
    shuffled = labels[order]
    # Each item's position within its class, as a fraction: taking the smallest fractions first
    # takes every class at the same rate, whatever the class sizes.
    position = np.zeros(len(labels))
    for label in np.unique(shuffled):
        members = shuffled == label
        position[members] = np.arange(members.sum()) / members.sum()
    ranked = order[np.lexsort((generator.random(len(labels)), position))]
    return np.sort(ranked[:count]), np.sort(ranked[count:])


def _load_source(config: DataConfig, seed: int) -> ImageData:
    """Calls the source registered as `config.name`: train and test with no validation set."""
    return get_source(config.name)(config, seed)
