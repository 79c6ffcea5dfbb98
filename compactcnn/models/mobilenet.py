"""MobileNetV1 (Howard et al. 2017) and MobileNetV2 (Sandler et al. 2018), for raw-pixel input.

Both are built from Conv2D, DepthwiseConv2D, BatchNormalization and ReLU with `same` padding (no
ZeroPadding2D), so tfmot prunes, clusters and quantizes every layer and the int8 file runs on
TFLite's builtin DEPTHWISE_CONV_2D and CONV_2D kernels.

- `mobilenet_v1_025`: the MLPerf Tiny visual-wake-words reference, MobileNetV1 at width 0.25 on
  96x96 images (the EEMBC/Silicon Labs `mobilenet_v1_eembc` the benchmark trains: biased
  convolutions, ReLU, average pooling over the last map, 221,794 parameters for 2 classes).
- `mobilenet_v2`: MobileNetV2 of any width (`model.width`, default 1.0). For images smaller than
  96 pixels the stem and the first stride-2 stage run at stride 1 (the usual CIFAR adaptation),
  so a 32x32 image ends on a 4x4 map instead of 1x1.
"""

from __future__ import annotations

import tf_keras as keras

from compactcnn.models.registry import register_model
from compactcnn.models.resnet import PIXEL_OFFSET, PIXEL_SCALE

# MobileNetV1's pointwise widths and depthwise strides, after the 32-filter stem (table 1).
_V1_BLOCKS = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)
# MobileNetV2's stages: expansion, output channels, blocks, stride of the first block (table 2).
_V2_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
# Below this input size MobileNetV2 keeps full resolution through the stem and the 24-channel stage.
_SMALL_INPUT = 96


def _normalized_input(input_shape: tuple[int, int, int]):
    inputs = keras.Input(shape=input_shape, name="image")
    x = keras.layers.Rescaling(PIXEL_SCALE, offset=PIXEL_OFFSET, name="normalize")(inputs)
    return inputs, x


def _classifier(x, num_classes: int, name: str, inputs) -> keras.Model:
    x = keras.layers.Dense(num_classes, kernel_initializer="he_normal", name="logits")(x)
    # A float32 softmax keeps mixed-precision runs numerically safe (as the ResNets do).
    outputs = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=name)


def mobilenet_v1(num_classes: int, input_shape: tuple[int, int, int], width: float) -> keras.Model:
    """MobileNetV1 as the MLPerf Tiny visual-wake-words reference builds it.

    Args:
        num_classes: Classifier outputs.
        input_shape: (height, width, 3).
        width: Width multiplier alpha (0.25 in the benchmark: 8 stem filters).

    Returns:
        A Functional model from raw pixels (0-255) to float32 softmax probabilities.
    """
    inputs, x = _normalized_input(input_shape)

    def conv_bn_relu(x, filters, kernel_size, strides, name, depthwise=False):
        if depthwise:
            x = keras.layers.DepthwiseConv2D(
                kernel_size, strides, padding="same", kernel_initializer="he_normal", name=name
            )(x)
        else:
            x = keras.layers.Conv2D(
                filters,
                kernel_size,
                strides,
                padding="same",
                kernel_initializer="he_normal",
                name=name,
            )(x)
        x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
        return keras.layers.ReLU(name=f"{name}_relu")(x)

    x = conv_bn_relu(x, int(32 * width), 3, 2, "stem_conv")
    for index, (filters, strides) in enumerate(_V1_BLOCKS, start=1):
        x = conv_bn_relu(x, None, 3, strides, f"block{index}_dw", depthwise=True)
        x = conv_bn_relu(x, int(filters * width), 1, 1, f"block{index}_pw")
    x = keras.layers.AveragePooling2D(pool_size=tuple(x.shape[1:3]), name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    return _classifier(x, num_classes, f"mobilenet_v1_{width:g}", inputs)


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Rounds a channel count to a multiple of 8, never below 90% of it (the paper's code)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def mobilenet_v2_model(
    num_classes: int,
    input_shape: tuple[int, int, int],
    width: float,
    zero_init_residual: bool = False,
) -> keras.Model:
    """MobileNetV2 with inverted residual blocks and linear bottlenecks.

    Args:
        num_classes: Classifier outputs.
        input_shape: (height, width, 3).
        width: Width multiplier (channels rounded to multiples of 8; the last 1x1 convolution
            keeps 1280 channels at widths up to 1, as in the paper).
        zero_init_residual: Start each residual block's projection BN scale at zero.

    Returns:
        A Functional model from raw pixels (0-255) to float32 softmax probabilities.
    """
    small = min(input_shape[:2]) < _SMALL_INPUT
    inputs, x = _normalized_input(input_shape)

    def conv_bn(x, filters, kernel_size, strides, name, relu=True, gamma="ones"):
        if filters is None:
            x = keras.layers.DepthwiseConv2D(
                kernel_size, strides, padding="same", use_bias=False, name=name
            )(x)
        else:
            x = keras.layers.Conv2D(
                filters,
                kernel_size,
                strides,
                padding="same",
                use_bias=False,
                kernel_initializer="he_normal",
                name=name,
            )(x)
        x = keras.layers.BatchNormalization(gamma_initializer=gamma, name=f"{name}_bn")(x)
        return keras.layers.ReLU(6.0, name=f"{name}_relu")(x) if relu else x

    x = conv_bn(x, _make_divisible(32 * width), 3, 1 if small else 2, "stem_conv")
    block = 0
    for stage, (expansion, channels, repeats, stride) in enumerate(_V2_STAGES):
        if small and stage == 1:
            stride = 1
        out_channels = _make_divisible(channels * width)
        for repeat in range(repeats):
            block += 1
            name = f"block{block}"
            strides = stride if repeat == 0 else 1
            in_channels = x.shape[-1]
            residual = strides == 1 and in_channels == out_channels
            y = x
            if expansion != 1:
                y = conv_bn(y, in_channels * expansion, 1, 1, f"{name}_expand")
            y = conv_bn(y, None, 3, strides, f"{name}_dw")
            gamma = "zeros" if residual and zero_init_residual else "ones"
            y = conv_bn(y, out_channels, 1, 1, f"{name}_project", relu=False, gamma=gamma)
            x = keras.layers.Add(name=f"{name}_add")([x, y]) if residual else y
    last = _make_divisible(1280 * width) if width > 1.0 else 1280
    x = conv_bn(x, last, 1, 1, "head_conv")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return _classifier(x, num_classes, f"mobilenet_v2_{width:g}", inputs)


@register_model
def mobilenet_v1_025(
    num_classes: int = 2,
    input_shape: tuple[int, int, int] = (96, 96, 3),
    width: float = 0.25,
) -> keras.Model:
    """MobileNetV1 0.25 at 96x96: the MLPerf Tiny visual-wake-words reference (221,794 params)."""
    return mobilenet_v1(num_classes, input_shape, width)


@register_model
def mobilenet_v2(
    num_classes: int = 10,
    input_shape: tuple[int, int, int] = (32, 32, 3),
    width: float = 1.0,
    zero_init_residual: bool = False,
) -> keras.Model:
    """MobileNetV2 of any width (`model.width`), for 32x32 and larger images."""
    return mobilenet_v2_model(num_classes, input_shape, width, zero_init_residual)
