"""Seeded synthetic images for tests: every class has its own colour and stripe direction.

Both cues survive the training augmentation (crops and flips keep a colour and a stripe
direction), so a tiny model beats chance within an epoch or two, which is what tests need.
"""

from __future__ import annotations

import colorsys

import numpy as np

from compactcnn.data import IMAGE_SHAPE, ImageData, empty_images

NOISE_STD = 25.0
STRIPE_AMPLITUDE = 30.0


def load(
    size: int = 256,
    num_classes: int = 10,
    seed: int = 0,
    image_size: tuple[int, int] = IMAGE_SHAPE[:2],
) -> ImageData:
    """Generates train and test sets of `size` images each, balanced over `num_classes` classes.

    Args:
        size: Images per split.
        num_classes: Number of classes.
        seed: Seed of the labels and the noise; the same seed gives the same images.
        image_size: The (height, width) of the images.

    Returns:
        Train and test images with labels and class names `class_0`, `class_1`, ...
    """
    generator = np.random.default_rng(seed)
    shape = (*image_size, IMAGE_SHAPE[2])
    x_train, y_train = _generate(size, num_classes, generator, shape)
    x_test, y_test = _generate(size, num_classes, generator, shape)
    x_val, y_val = empty_images(image_size)
    class_names = [f"class_{label}" for label in range(num_classes)]
    return ImageData(x_train, y_train, x_val, y_val, x_test, y_test, class_names)


def _generate(
    size: int, num_classes: int, generator: np.random.Generator, shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Draws one split: class colour + class stripes + per-pixel noise, clipped to 0-255."""
    labels = generator.permutation(np.arange(size) % num_classes).astype(np.int32)
    # Evenly spaced hues keep the class colours as far apart as possible.
    colours = np.array(
        [colorsys.hsv_to_rgb(label / num_classes, 0.75, 0.85) for label in range(num_classes)]
    )
    height, width, _ = shape
    rows, columns = np.mgrid[0:height, 0:width]
    stripes = np.stack([np.sin(rows * np.pi / 2), np.sin(columns * np.pi / 2)])  # (2, H, W)
    images = (
        255.0 * colours[labels][:, None, None, :]
        + STRIPE_AMPLITUDE * stripes[labels % 2][..., None]
        + generator.normal(0.0, NOISE_STD, size=(size, *shape))
    )
    return np.clip(np.rint(images), 0, 255).astype(np.uint8), labels
