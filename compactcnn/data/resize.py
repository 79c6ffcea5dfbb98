"""Bringing images to the run's size (`data.image_size`) the way `data.resize` says.

- `bilinear` stretches an image to the size (its aspect ratio may change).
- `crop` scales it, keeping the aspect ratio, until it covers the size, then cuts the centre.
- `reject` refuses an image of another size with a one-line error naming it.

Sizes are (height, width), as in `data.image_size` and NHWC arrays; Pillow counts (width,
height), so the conversion happens here and nowhere else.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from compactcnn.config import RESIZE_MODES  # noqa: F401  (the one list of modes)
from compactcnn.errors import UserError


def describe(size: tuple[int, int]) -> str:
    """`48x64` for (height 48, width 64): how sizes appear in messages."""
    return f"{size[0]}x{size[1]}"


def fit_image(image: Image.Image, size: tuple[int, int], mode: str, name: str) -> Image.Image:
    """Returns `image` at `size` (height, width), resized or cropped as `mode` says.

    Args:
        image: A decoded Pillow image (any mode).
        size: The wanted (height, width).
        mode: One of `RESIZE_MODES`.
        name: How to name the image in an error message.

    Raises:
        UserError: When `mode` is `reject` and the image has another size.
    """
    height, width = size
    found = (image.height, image.width)
    if found == (height, width):
        return image
    if mode == "reject":
        raise UserError(
            f"image '{name}' is {describe(found)} (height x width), not data.image_size "
            f"{describe(size)}; resize your images or set data.resize to bilinear or crop"
        )
    if mode == "bilinear":
        return image.resize((width, height), Image.Resampling.BILINEAR)
    # crop: the smallest scale at which the image covers the wanted size in both directions.
    scale = max(height / image.height, width / image.width)
    scaled = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    if scaled != (image.width, image.height):
        image = image.resize(scaled, Image.Resampling.BILINEAR)
    left = (image.width - width) // 2
    top = (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def fit_arrays(images: np.ndarray, size: tuple[int, int], mode: str, source: str) -> np.ndarray:
    """Brings a whole uint8 NHWC array (one size, e.g. CIFAR's 32x32) to `size`.

    Args:
        images: uint8 (N, H, W, 3) images.
        size: The wanted (height, width).
        mode: One of `RESIZE_MODES`.
        source: How to name the images in an error message (the data source).

    Returns:
        uint8 (N, height, width, 3) images; `images` itself when the size already matches.

    Raises:
        UserError: When `mode` is `reject` and the images have another size.
    """
    found = tuple(images.shape[1:3])
    if found == tuple(size):
        return images
    if mode == "reject":
        raise UserError(
            f"data source '{source}' has {describe(found)} images, not data.image_size "
            f"{describe(size)}; set data.image_size to {list(found)} or data.resize to "
            "bilinear or crop"
        )
    resized = np.empty((len(images), *size, images.shape[-1]), np.uint8)
    for index, array in enumerate(images):
        resized[index] = np.asarray(fit_image(Image.fromarray(array), size, mode, source))
    return resized
