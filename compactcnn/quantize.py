"""Quantization-aware training and TFLite export in four formats.

Every exported file keeps the raw-pixel contract: it takes images 0-255 (float32, or uint8/int8 for
a full-integer file with integer io), because the model's first layer does the normalization.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras
from tensorflow.lite.tools import flatbuffer_utils

from compactcnn import compat, files, kernels
from compactcnn.config import EXPORT_FORMATS, QuantizeConfig
from compactcnn.errors import UserError

# Every model takes raw pixels in this range (docs/DESIGN.md).
PIXEL_RANGE = (0.0, 255.0)
_INT8_IO_TYPES = {"uint8": tf.uint8, "int8": tf.int8, "float32": tf.float32}
# Calibration images are drawn with a fixed seed: training sets can be ordered by class, and a
# first-N slice would then calibrate on one class only.
_CALIBRATION_SEED = 0


def export(
    model: keras.Model,
    quantize_config: QuantizeConfig,
    calibration_images: np.ndarray,
    out_dir: str | os.PathLike,
    formats: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Converts a float32 (or quantization-aware) Keras model to TFLite files.

    Args:
        model: A Keras model taking raw pixels 0-255, float32 layer policies, pruning stripped.
            A model from `prepare_qat` exports to `int8` with the weights it learned.
        quantize_config: Formats, calibration size, int8 io type and the sparsity option.
        calibration_images: Raw uint8 training images, NHWC; used by the `int8` format only.
        out_dir: Folder that receives `<format>.tflite`; created when missing.
        formats: Formats to write; defaults to `quantize_config.formats`.

    Returns:
        A mapping from format name to the written file, in the order of `formats`.

    Raises:
        UserError: On an unknown format, no calibration images for `int8`, or a failed conversion.
    """
    formats = list(quantize_config.formats if formats is None else formats)
    unknown = [name for name in formats if name not in EXPORT_FORMATS]
    if unknown:
        raise UserError(
            f"unknown export format '{unknown[0]}'; choose from {', '.join(EXPORT_FORMATS)}"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in formats:
        converter = _converter(model, name, quantize_config, calibration_images)
        try:
            flatbuffer = converter.convert()
        except Exception as error:  # The converter raises several unrelated types.
            raise UserError(
                f"TFLite conversion to '{name}' failed ({_reason(error)}); remove '{name}' from "
                "quantize.formats or export a float32 model built from TFLite builtin ops"
            ) from None
        if quantize_config.short_tensor_names:
            flatbuffer = short_tensor_names(flatbuffer)
        path = out_dir / f"{name}.tflite"
        files.write_bytes(path, flatbuffer)
        paths[name] = path
    return paths


def short_tensor_names(flatbuffer: bytes) -> bytes:
    """Renames every tensor but each subgraph's inputs and outputs to its index (`t17`).

    The signature refers to tensors by index, so it keeps working; the file's weights, graph and
    layout are otherwise what the converter wrote (`flatbuffer_utils` rewrites an unchanged
    model byte for byte). An 80%-sparse int8 ResNet-20: 313,520 -> 304,952 bytes, 67,805 ->
    66,877 gzip bytes.
    """
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    for subgraph in model.subgraphs:
        keep = {int(index) for index in [*subgraph.inputs, *subgraph.outputs]}
        for index, tensor in enumerate(subgraph.tensors):
            if index not in keep:
                tensor.name = f"t{index}".encode()
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _reason(error: Exception) -> str:
    """Picks the converter's own diagnosis out of its multi-line MLIR message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "error: " in line:
            return line.rsplit("error: ", 1)[1]
    return lines[0] if lines else type(error).__name__


def _converter(
    model: keras.Model,
    name: str,
    quantize_config: QuantizeConfig,
    calibration_images: np.ndarray,
) -> tf.lite.TFLiteConverter:
    """Configures a converter for one format; see the TFLite post-training quantization guide."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    optimizations = [] if name == "float32" else [tf.lite.Optimize.DEFAULT]
    if quantize_config.sparsity_optimization:
        optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    converter.optimizations = optimizations
    if name == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif name == "int8":
        if calibration_images is None or len(calibration_images) == 0:
            raise UserError(
                "int8 export needs calibration images; pass training images or drop 'int8' "
                "from quantize.formats"
            )
        converter.representative_dataset = _representative_dataset(
            calibration_images, quantize_config.calibration_samples
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        io_type = _INT8_IO_TYPES[quantize_config.int8_io]
        converter.inference_input_type = io_type
        converter.inference_output_type = io_type
    return converter


def calibration_sample(images: np.ndarray, samples: int) -> np.ndarray:
    """Indices of the `samples` images (at most) that calibrate int8 activation ranges.

    The one place calibration images are drawn: seeded, and spread over the whole set.
    """
    count = min(samples, len(images))
    return np.random.default_rng(_CALIBRATION_SEED).choice(len(images), count, replace=False)


def _representative_dataset(images: np.ndarray, samples: int):
    """Returns the generator factory the converter calls to calibrate activation ranges."""
    chosen = calibration_sample(images, samples)

    def generate() -> Iterator[list[np.ndarray]]:
        # The model normalizes itself, so calibration sees the raw pixels it will get later.
        # One black and one white pixel pin the input range to exactly 0-255: an integer input
        # then gets scale 1 (uint8: zero point 0, so it takes raw pixels unchanged).
        first = images[chosen[0] : chosen[0] + 1].astype(np.float32)
        first[0, 0, 0, :] = 0.0
        first[0, 0, 1, :] = 255.0
        yield [first]
        for index in chosen[1:]:
            yield [images[index : index + 1].astype(np.float32)]

    return generate


class _RescalingQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
    """Quantizes only the output of `Rescaling`, so tfmot accepts it (tfmot issue 647).

    The layer has no weights. Its output range is known exactly from the pixel range 0-255, so a
    fixed quantizer is used instead of a learned one, which would start at tfmot's default
    [-6, 6] and take thousands of steps to shrink to the real [-1, 1].
    """

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        ends = [np.asarray(pixel) * layer.scale + layer.offset for pixel in PIXEL_RANGE]
        return [
            tfmot.quantization.keras.quantizers.FixedQuantizer(
                num_bits=8,
                init_min=float(np.min(ends)),
                init_max=float(np.max(ends)),
                narrow_range=False,
            )
        ]

    def get_config(self):
        return {}


def check_qat(model: keras.Model) -> None:
    """Checks, before anything is trained, that `prepare_qat` can quantize every layer.

    Raises:
        UserError: Naming the first layer tfmot's 8-bit scheme cannot quantize.
    """
    # Handled before tfmot's registry is asked: Rescaling by compactcnn's own quantize config;
    # SeparableConv2D and BatchNormalization by tfmot's layout transforms (split into
    # DepthwiseConv2D + Conv2D, and folded into the convolution before it).
    handled_types = (
        keras.layers.InputLayer,
        keras.layers.Rescaling,
        keras.layers.SeparableConv2D,
        keras.layers.BatchNormalization,
    )
    for layer in model.layers:
        handled = type(layer) in handled_types
        if handled or compat.qat_supports(layer):
            continue
        unwrappable = kernels.unwrappable_reason(layer) or type(layer).__name__
        raise UserError(
            f"quantize.qat: tfmot cannot quantize layer '{layer.name}' ({unwrappable}); set "
            "quantize.qat=false (post-training int8 converts it) or build the model from "
            "layers tfmot quantizes"
        )


def prepare_qat(
    model: keras.Model, preserve_sparsity: bool, preserve_clusters: bool = False
) -> keras.Model:
    """Builds the quantization-aware version of a float model, with its weights.

    Args:
        model: A Functional float32 model whose first layer after the input is `Rescaling`,
            pruning stripped (and clustering stripped, for `preserve_clusters`). QAT runs in
            float32 under every policy: tfmot's fake-quant ops take float32 only (under
            mixed_bfloat16 they fail on bfloat16 inputs).
        preserve_sparsity: Use tfmot's prune-preserving scheme, so zero weights stay zero while
            fine-tuning (plain QAT lets them drift).
        preserve_clusters: The model's kernels are clustered: use tfmot's cluster-preserving
            scheme (PCQAT with `preserve_sparsity`, CQAT without), which fine-tunes each
            Conv2D and Dense kernel's shared values and keeps its zero cluster at zero. Its
            DepthwiseConv2D kernels are not preserved: fit with `KeepClusters`.

    Returns:
        An uncompiled quantization-aware Keras model taking raw pixels 0-255. Compile and fit it,
        then `export(..., formats=["int8"])`. Loading it from a file needs `quantize_scope()`.
    """

    def annotate(layer: keras.layers.Layer) -> keras.layers.Layer:
        copy = layer.__class__.from_config(layer.get_config())
        quantize_config = (
            _RescalingQuantizeConfig() if isinstance(layer, keras.layers.Rescaling) else None
        )
        return tfmot.quantization.keras.quantize_annotate_layer(copy, quantize_config)

    annotated = keras.models.clone_model(model, clone_function=annotate)
    annotated.set_weights(model.get_weights())
    if preserve_clusters:
        scheme = compat.ClusterPreserveQuantizeScheme(preserve_sparsity=preserve_sparsity)
    elif preserve_sparsity:
        scheme = tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
    else:
        scheme = tfmot.quantization.keras.default_8bit.Default8BitQuantizeScheme()
    with quantize_scope():
        qat_model = tfmot.quantization.keras.quantize_apply(annotated, scheme)
    # tfmot's input quantizer learns its range from the batches it sees, starting from [0, 0]:
    # the model would be useless before its first step, and a data set without pure black or
    # white pixels would give the int8 file an input scale other than 1. Start at 0-255.
    compat.set_input_quantizer_range(qat_model, *PIXEL_RANGE)
    return qat_model


def share_kernel_ranges(qat_model: keras.Model, max_values: int) -> int:
    """Gives every output channel of each clustered kernel the kernel's widest range.

    For a clustered model, after the QAT fine-tune and before `export`. tfmot quantizes Conv2D
    and DepthwiseConv2D kernels per output channel, each channel on its own range, so the same
    shared value becomes a different int8 code in channels whose largest weight differs: a
    16-cluster kernel held at most 15 codes per channel but 67-71 across the tensor. On one
    range the codes are the same in every channel (the converter folds BatchNormalization into
    the per-channel scales, not into the codes), which the file's gzip codes in fewer bytes.
    The shared values then round on the coarser step of the widest channel, at most half of it.

    Only kernels holding at most `max_values` distinct values are set: a kernel with free values
    (one clustering skipped) would lose the precision per-channel ranges give its small
    channels. Running the model in training mode afterwards (a fit, a BN recalibration) sets
    the ranges per channel again.

    Args:
        qat_model: A model from `prepare_qat`, fine-tuned.
        max_values: The clusters per kernel (`quantize.weight_clusters`).

    Returns:
        How many kernels were set.
    """
    shared = 0
    for layer in qat_model.layers:
        kernel_weights, ranges = [], {}
        for weight in layer.weights:
            if weight.name.endswith(("kernel_min:0", "kernel_max:0")) and weight.shape.rank == 1:
                ranges[weight.name[-5:-2]] = weight  # "min" or "max"
            elif weight.name.endswith("kernel:0") and weight.shape.rank == 4:
                kernel_weights.append(weight)
        if len(kernel_weights) != 1 or set(ranges) != {"min", "max"}:
            continue
        if np.unique(kernel_weights[0].numpy()).size > max_values:
            continue
        widest = max(float(np.max(np.abs(ranges[end].numpy()))) for end in ranges)
        ranges["min"].assign(np.full(ranges["min"].shape, -widest, np.float32))
        ranges["max"].assign(np.full(ranges["max"].shape, widest, np.float32))
        shared += 1
    return shared


class KeepZeros(keras.callbacks.Callback):
    """Keeps the zeros of depthwise kernels through QAT, after every training step.

    tfmot's prune-preserving scheme keeps the zeros of Conv2D and Dense kernels but not of
    DepthwiseConv2D ones (nor the depthwise half of a SeparableConv2D, which its layout transform
    turns into a DepthwiseConv2D): one epoch of QAT left none of them. This callback multiplies
    those kernels by the masks they had when it was made, so the int8 file keeps every zero.

    Args:
        model: The model from `prepare_qat`, before fine-tuning.
    """

    def __init__(self, model: keras.Model):
        super().__init__()
        self.masks = []
        # By variable name: the wrapper replaces the layer's `depthwise_kernel` attribute with
        # its quantized tensor, but the variable keeps its name (`<layer>/depthwise_kernel:0`).
        for kernel in model.weights:
            if kernel.name.endswith("depthwise_kernel:0"):
                mask = (kernel.numpy() != 0).astype(kernel.dtype.as_numpy_dtype)
                if not mask.all():
                    self.masks.append((kernel, mask))

    def on_train_batch_end(self, batch, logs=None):
        for kernel, mask in self.masks:
            kernel.assign(kernel * mask)


class KeepClusters(keras.callbacks.Callback):
    """Keeps the shared values and zeros of depthwise kernels through cluster-preserving QAT.

    tfmot's cluster-preserving scheme fine-tunes the shared values of Conv2D and Dense kernels
    but leaves DepthwiseConv2D ones (and the depthwise half of a SeparableConv2D) to plain QAT:
    two epochs turned a kernel of 7 shared values and 70% zeros into 144 distinct values and no
    zeros. After every step this callback sets each weight of those kernels to the mean of its
    cluster (the weights that shared one value when it was made) and the zero cluster back to
    zero. So the shared values still train, by their members' mean update, and the membership
    and the zeros stay: at most as many values per kernel as before QAT.

    Args:
        model: The model from `prepare_qat(..., preserve_clusters=True)`, before fine-tuning.
    """

    def __init__(self, model: keras.Model):
        super().__init__()
        self.clusters = []
        for kernel in model.weights:  # By variable name, as in `KeepZeros`.
            if kernel.name.endswith("depthwise_kernel:0"):
                values, members = np.unique(kernel.numpy(), return_inverse=True)
                keep = tf.constant(values != 0, kernel.dtype)
                self.clusters.append((kernel, tf.constant(members.reshape(-1)), len(values), keep))

    def on_train_batch_end(self, batch, logs=None):
        for kernel, members, count, keep in self.clusters:
            means = tf.math.unsorted_segment_mean(tf.reshape(kernel, [-1]), members, count)
            kernel.assign(tf.reshape(tf.gather(means * keep, members), kernel.shape))


def quantize_scope():
    """Returns the scope in which a saved quantization-aware model can be loaded."""
    return tfmot.quantization.keras.quantize_scope(
        {"_RescalingQuantizeConfig": _RescalingQuantizeConfig}
    )
