"""CIFAR ResNet v1 (He et al. 2016, section 4.2): depth 6n+2, widths 16/32/64.

Shortcuts that change shape use a 1x1 strided convolution (option B), which every converter and
pruner handles, rather than option A's zero-padding, which needs a Lambda layer that tfmot cannot
wrap or quantize.
"""

import tf_keras as keras

from compactcnn.models.registry import register_model

# The model takes raw pixels 0-255 and maps them to [-1, 1] itself, so every exported file has the
# same contract as the training data: no hidden preprocessing on a device.
PIXEL_SCALE = 1.0 / 127.5
PIXEL_OFFSET = -1.0


def _conv(filters: int, kernel_size: int, strides: int, name: str):
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=name,
    )


def _residual_block(inputs, filters: int, strides: int, name: str, zero_init: bool):
    x = _conv(filters, 3, strides, f"{name}_conv1")(inputs)
    x = keras.layers.BatchNormalization(name=f"{name}_bn1")(x)
    x = keras.layers.ReLU(name=f"{name}_relu1")(x)
    x = _conv(filters, 3, 1, f"{name}_conv2")(x)
    # A zero scale makes the block start as the identity (Goyal et al. 2017, section 5.1).
    x = keras.layers.BatchNormalization(
        gamma_initializer="zeros" if zero_init else "ones", name=f"{name}_bn2"
    )(x)
    shortcut = inputs
    if strides != 1 or inputs.shape[-1] != filters:
        shortcut = _conv(filters, 1, strides, f"{name}_shortcut")(inputs)
        shortcut = keras.layers.BatchNormalization(name=f"{name}_shortcut_bn")(shortcut)
    x = keras.layers.Add(name=f"{name}_add")([x, shortcut])
    return keras.layers.ReLU(name=f"{name}_relu2")(x)


def cifar_resnet(
    depth: int,
    num_classes: int = 10,
    input_shape: tuple[int, int, int] = (32, 32, 3),
    zero_init_residual: bool = False,
) -> keras.Model:
    """Builds a CIFAR ResNet v1 of the given depth.

    Args:
        depth: 6n+2, e.g. 20, 32, 44, 56, 110.
        num_classes: Classifier outputs.
        input_shape: Image shape, NHWC without the batch.
        zero_init_residual: Initialize the last BN scale of each residual branch to zero.

    Returns:
        A Functional model from raw pixels (0-255) to softmax probabilities. The softmax layer is
        float32 so mixed-precision runs keep a numerically safe output.
    """
    if (depth - 2) % 6 != 0 or depth < 8:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
    blocks_per_stage = (depth - 2) // 6
    inputs = keras.Input(shape=input_shape, name="image")
    x = keras.layers.Rescaling(PIXEL_SCALE, offset=PIXEL_OFFSET, name="normalize")(inputs)
    x = _conv(16, 3, 1, "stem_conv")(x)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(blocks_per_stage):
            strides = 2 if stage > 0 and block == 0 else 1
            name = f"stage{stage + 1}_block{block + 1}"
            x = _residual_block(x, filters, strides, name, zero_init_residual)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(
        num_classes,
        kernel_initializer="he_normal",
        name="logits",
    )(x)
    outputs = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=f"resnet{depth}")


@register_model
def resnet20(
    num_classes: int = 10,
    input_shape: tuple[int, int, int] = (32, 32, 3),
    zero_init_residual: bool = False,
) -> keras.Model:
    """ResNet-20 (about 0.27M parameters)."""
    return cifar_resnet(20, num_classes, input_shape, zero_init_residual)


@register_model
def resnet32(
    num_classes: int = 10,
    input_shape: tuple[int, int, int] = (32, 32, 3),
    zero_init_residual: bool = False,
) -> keras.Model:
    """ResNet-32 (about 0.46M parameters)."""
    return cifar_resnet(32, num_classes, input_shape, zero_init_residual)


@register_model
def resnet44(
    num_classes: int = 10,
    input_shape: tuple[int, int, int] = (32, 32, 3),
    zero_init_residual: bool = False,
) -> keras.Model:
    """ResNet-44 (about 0.66M parameters)."""
    return cifar_resnet(44, num_classes, input_shape, zero_init_residual)


@register_model
def resnet56(
    num_classes: int = 10,
    input_shape: tuple[int, int, int] = (32, 32, 3),
    zero_init_residual: bool = False,
) -> keras.Model:
    """ResNet-56 (about 0.85M parameters)."""
    return cifar_resnet(56, num_classes, input_shape, zero_init_residual)


@register_model
def resnet110(
    num_classes: int = 10,
    input_shape: tuple[int, int, int] = (32, 32, 3),
    zero_init_residual: bool = False,
) -> keras.Model:
    """ResNet-110 (about 1.7M parameters)."""
    return cifar_resnet(110, num_classes, input_shape, zero_init_residual)
