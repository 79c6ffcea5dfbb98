"""A tiny model with the layer kinds of the CIFAR ResNets, and a toy task it can learn fast."""

import numpy as np
import tf_keras as keras

# Saturated red, green, blue and yellow: the class of an image is its mean colour.
PALETTE = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40]], np.float32)


def build_tiny_model(width: int = 8, num_classes: int = 4, size: int = 32) -> keras.Model:
    """Rescaling, Conv2D, BN, ReLU, Add, pooling, Dense, float32 softmax: raw pixels in."""
    inputs = keras.Input((size, size, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1, name="normalize")(inputs)
    x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name="conv1")(x)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    y = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name="conv2")(x)
    y = keras.layers.BatchNormalization(name="bn2")(y)
    x = keras.layers.ReLU(name="relu2")(keras.layers.Add(name="add")([x, y]))
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(num_classes, name="logits")(x)
    outputs = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="tiny")


def colour_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy single-colour uint8 images labelled by their colour."""
    generator = np.random.default_rng(seed)
    labels = generator.integers(0, len(PALETTE), count).astype(np.int32)
    noise = generator.normal(0, 40, (count, 32, 32, 3))
    images = np.clip(PALETTE[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
    return images, labels
