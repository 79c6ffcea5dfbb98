"""The layers whose kernels compactcnn compresses, and the kernels each one holds.

Pruning, clustering and QAT wrap exactly these four layer classes (not their subclasses: tfmot's
registries look a layer's class up by identity, so a subclass is a layer tfmot cannot wrap):

- `Conv2D` and `Dense`: their `kernel`.
- `DepthwiseConv2D`: its `depthwise_kernel` (tfmot's registries list the class with no weights to
  compress; compactcnn names the kernel for them).
- `SeparableConv2D`: its `depthwise_kernel` and `pointwise_kernel` (tfmot's only the latter).
  The TFLite converter splits the layer into DEPTHWISE_CONV_2D and CONV_2D, so the zeros of both
  kernels are counted in the exported file.
"""

from __future__ import annotations

import tf_keras as keras

KERNEL_LAYER_TYPES = (
    keras.layers.Conv2D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv2D,
    keras.layers.Dense,
)
# The names a layer's compressible weights go by, in every Keras layer with a kernel.
_KERNEL_NAMES = ("kernel", "depthwise_kernel", "pointwise_kernel")
KERNEL_LAYER_NAMES = "Conv2D, DepthwiseConv2D, SeparableConv2D or Dense"


def is_kernel_layer(layer: keras.layers.Layer) -> bool:
    """Whether compactcnn compresses `layer` (one of the four classes itself)."""
    return type(layer) in KERNEL_LAYER_TYPES


def kernel_weights(layer: keras.layers.Layer) -> list:
    """The compressible weights of a layer (its kernels), in a fixed order; [] for others.

    Works for any layer with kernels, so a subclass tfmot cannot wrap is found too.
    """
    return [
        weight
        for name in _KERNEL_NAMES
        if (weight := getattr(layer, name, None)) is not None and hasattr(weight, "shape")
    ]


def unwrappable_reason(layer: keras.layers.Layer) -> str | None:
    """Why tfmot cannot wrap a layer that holds kernels, or None when it can (or has none).

    Returns:
        E.g. "MyConv, a subclass of Conv2D"; None for the four classes and kernel-less layers.
    """
    if is_kernel_layer(layer) or not kernel_weights(layer):
        return None
    base = next(
        (kind.__name__ for kind in KERNEL_LAYER_TYPES if isinstance(layer, kind)),
        None,
    )
    name = type(layer).__name__
    return f"{name}, a subclass of {base}" if base else name
