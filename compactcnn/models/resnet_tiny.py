"""ResNet-8, the MLPerf Tiny image-classification reference (CIFAR-10; EEMBC's `resnet_v1_eembc`).

The benchmark's model (mlcommons/tiny, benchmark/training/image_classification/keras_model.py):
a 16-filter 3x3 convolution with BN and ReLU, then three residual stacks of 16, 32 and 64 filters
(two 3x3 convolutions with BN each; the 2nd and 3rd stacks stride 2 and add a 1x1 strided
convolution, without BN, on the shortcut), average pooling over the last map and a dense softmax:
78,666 parameters for 10 classes. Its quality target is 85% top-1 with int8 weights (about 96 KB
as a TFLite file). Convolutions keep their biases, as in the reference, so the parameter count and
the file match it. The reference's L2 of 1e-4 on every kernel is the optimizer's job here: the
config sets `train.weight_decay_form: gradient` with `weight_decay: 2e-4` (Keras `l2(c)` is the
gradient form with 2c), which also reaches kernels inside pruning and QAT wrappers.
"""

from __future__ import annotations

import tf_keras as keras

from compactcnn.models.registry import register_model
from compactcnn.models.resnet import PIXEL_OFFSET, PIXEL_SCALE


def _conv(filters: int, kernel_size: int, strides: int, name: str):
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        kernel_initializer="he_normal",
        name=name,
    )


def _stack(x, filters: int, strides: int, name: str):
    y = _conv(filters, 3, strides, f"{name}_conv1")(x)
    y = keras.layers.BatchNormalization(name=f"{name}_bn1")(y)
    y = keras.layers.ReLU(name=f"{name}_relu1")(y)
    y = _conv(filters, 3, 1, f"{name}_conv2")(y)
    y = keras.layers.BatchNormalization(name=f"{name}_bn2")(y)
    if strides != 1:
        x = _conv(filters, 1, strides, f"{name}_shortcut")(x)
    x = keras.layers.Add(name=f"{name}_add")([x, y])
    return keras.layers.ReLU(name=f"{name}_relu2")(x)


@register_model
def resnet8_tiny(
    num_classes: int = 10, input_shape: tuple[int, int, int] = (32, 32, 3)
) -> keras.Model:
    """ResNet-8 of MLPerf Tiny (78,666 parameters for 10 classes), raw pixels in.

    Args:
        num_classes: Classifier outputs.
        input_shape: (height, width, 3); the benchmark's is 32x32.

    Returns:
        A Functional model from raw pixels (0-255) to float32 softmax probabilities.
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x = keras.layers.Rescaling(PIXEL_SCALE, offset=PIXEL_OFFSET, name="normalize")(inputs)
    x = _conv(16, 3, 1, "stem_conv")(x)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    for stage, (filters, strides) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
        x = _stack(x, filters, strides, f"stack{stage}")
    # Pooling over the whole last map, as the reference's AveragePooling2D + Flatten.
    x = keras.layers.AveragePooling2D(pool_size=tuple(x.shape[1:3]), name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(num_classes, kernel_initializer="he_normal", name="logits")(x)
    outputs = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="resnet8_tiny")
