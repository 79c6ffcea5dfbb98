"""Shared test set-up. Importing compactcnn first selects Keras 2 before TensorFlow loads."""

import numpy as np
import pytest

import compactcnn  # noqa: F401  (must precede any TensorFlow import)


@pytest.fixture
def tiny_images():
    """64 random 32x32 RGB uint8 images with labels in 0..9, seeded."""
    generator = np.random.default_rng(0)
    images = generator.integers(0, 256, size=(64, 32, 32, 3), dtype=np.uint8)
    labels = generator.integers(0, 10, size=(64,)).astype(np.int32)
    return images, labels
