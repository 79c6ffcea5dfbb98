"""Measures Keras models and TFLite files: accuracy, size, latency, agreement and surviving zeros.

TFLite files are run with LiteRT (`ai_edge_litert`), the runtime a device uses, on raw uint8 pixels.
An integer-input file gets the pixels quantized with the scale and zero point stored in the file
itself, so nothing here hides a preprocessing step a device would not do.
"""

from __future__ import annotations

import gzip
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tf_keras as keras
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from compactcnn import compat
from compactcnn.errors import UserError

EVAL_BATCH_SIZE = 256
LATENCY_WARMUP_RUNS = 5
# Operators whose input 1 is a weight tensor (filter); their biases are input 2 and are not counted.
_WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
# Operators the converter puts between a stored weight and its consumer: fp16 or sparse storage.
_STORAGE_OPS = ("DEQUANTIZE", "DENSIFY")


def file_sizes(path: str | os.PathLike) -> dict[str, int]:
    """Returns the file's size on disk and gzip level 9 size (what a download would cost)."""
    content = Path(path).read_bytes()
    return {"bytes": len(content), "gzip_bytes": len(gzip.compress(content, compresslevel=9))}


def quantize_input(images: np.ndarray, input_details: dict[str, Any]) -> np.ndarray:
    """Converts raw pixels 0-255 to the input type of a TFLite file.

    Integer inputs use the file's own scale and zero point: q = round(x / scale) + zero_point,
    clipped to the type's range (the TFLite quantization spec).
    """
    dtype = input_details["dtype"]
    if not np.issubdtype(dtype, np.integer):
        return images.astype(dtype)
    scale, zero_point = input_details["quantization"]
    if scale == 0:  # Not quantized: the integers are the pixels themselves.
        return images.astype(dtype)
    limits = np.iinfo(dtype)
    quantized = np.round(images.astype(np.float32) / scale) + zero_point
    return np.clip(quantized, limits.min, limits.max).astype(dtype)


def dequantize_output(values: np.ndarray, output_details: dict[str, Any]) -> np.ndarray:
    """Converts a TFLite output to float probabilities: x = (q - zero_point) * scale."""
    scale, zero_point = output_details["quantization"]
    if not np.issubdtype(output_details["dtype"], np.integer) or scale == 0:
        return values.astype(np.float32)
    return (values.astype(np.float32) - zero_point) * scale


def open_interpreter(
    path: str | os.PathLike, threads: int = 2, batch_size: int | None = None
) -> Interpreter:
    """Returns a LiteRT interpreter with tensors allocated, at `batch_size` when given.

    LiteRT applies its default XNNPACK delegate, which fails to prepare sparse-encoded quantized
    weights (`Optimize.EXPERIMENTAL_SPARSITY` with dynamic_int8 or int8). Such a file then runs on
    the builtin kernels, as an app would have to run it.
    """
    try:
        return _allocated_interpreter(path, threads, batch_size, OpResolverType.AUTO)
    except RuntimeError as error:
        if "delegate" not in str(error):
            raise
    return _allocated_interpreter(
        path, threads, batch_size, OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )


def _allocated_interpreter(
    path: str | os.PathLike, threads: int, batch_size: int | None, resolver: OpResolverType
) -> Interpreter:
    interpreter = Interpreter(
        model_path=str(path), num_threads=threads, experimental_op_resolver_type=resolver
    )
    if batch_size is not None:
        input_details = interpreter.get_input_details()[0]
        interpreter.resize_tensor_input(
            input_details["index"], [batch_size, *input_details["shape"][1:]]
        )
    interpreter.allocate_tensors()
    return interpreter


def predict_tflite(
    path: str | os.PathLike, images: np.ndarray, threads: int = 2, batch_size: int = EVAL_BATCH_SIZE
) -> np.ndarray:
    """Returns the float class probabilities of a TFLite file for raw uint8 images."""
    batch_size = max(1, min(batch_size, len(images)))
    interpreter = open_interpreter(path, threads, batch_size)
    input_details = interpreter.get_input_details()[0]
    output_details = interpreter.get_output_details()[0]
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        count = len(batch)
        # Pad the last batch instead of resizing, which would re-plan the whole graph.
        if count < batch_size:
            padding = np.zeros((batch_size - count, *batch.shape[1:]), batch.dtype)
            batch = np.concatenate([batch, padding])
        interpreter.set_tensor(input_details["index"], quantize_input(batch, input_details))
        interpreter.invoke()
        output = interpreter.get_tensor(output_details["index"])[:count]
        outputs.append(dequantize_output(output, output_details))
    return np.concatenate(outputs)


def measure_latency(path: str | os.PathLike, image: np.ndarray, threads: int, runs: int) -> float:
    """Returns the median milliseconds of one batch-1 invocation on a fresh interpreter."""
    interpreter = open_interpreter(path, threads)
    input_details = interpreter.get_input_details()[0]
    interpreter.set_tensor(input_details["index"], quantize_input(image[None], input_details))
    for _ in range(LATENCY_WARMUP_RUNS):
        interpreter.invoke()
    durations = []
    for _ in range(runs):
        start = time.perf_counter()
        interpreter.invoke()
        durations.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(durations)


def evaluate_tflite(
    path: str | os.PathLike,
    images: np.ndarray,
    labels: np.ndarray,
    threads: int = 2,
    latency_runs: int = 50,
    reference_predictions: np.ndarray | None = None,
) -> dict[str, Any]:
    """Measures one TFLite file on raw uint8 images.

    Args:
        path: The `.tflite` file.
        images: Raw uint8 images 0-255, NHWC.
        labels: Integer class indices.
        threads: Interpreter threads, for accuracy and latency.
        latency_runs: Timed batch-1 invocations (after a warm-up).
        reference_predictions: Top-1 classes of the Keras model, for `agreement`.

    Returns:
        `accuracy`, `bytes`, `gzip_bytes`, `latency_ms` (median per image at batch 1), `threads`,
        `agreement` (fraction of top-1 equal to the reference, or None), `zeros_fraction` (of
        the weights) and `input_dtype`.
    """
    if Path(path).suffix != ".tflite":
        raise UserError(f"'{path}' is not a .tflite file; pass an exported TFLite model")
    input_dtype = load_model_file(path).get_input_details()[0]["dtype"]
    predictions = np.argmax(predict_tflite(path, images, threads), axis=-1)
    agreement = None
    if reference_predictions is not None:
        agreement = float(np.mean(predictions == np.asarray(reference_predictions)))
    return {
        "accuracy": float(np.mean(predictions == np.asarray(labels))),
        **file_sizes(path),
        "latency_ms": measure_latency(path, images[0], threads, latency_runs),
        "threads": threads,
        "agreement": agreement,
        "zeros_fraction": count_tflite_zeros(path)["zeros_fraction"],
        "input_dtype": np.dtype(input_dtype).name,
    }


def count_tflite_zeros(path: str | os.PathLike) -> dict[str, Any]:
    """Counts the zero-valued weights (conv and fully-connected filters) stored in a TFLite file.

    A float weight counts when it equals 0; a quantized weight when it equals its zero point
    (per channel). A float16 file is read at its stored fp16 constants. A sparse-encoded weight
    (`Optimize.EXPERIMENTAL_SPARSITY`) counts its dense size as weights and every element not
    stored, or stored as zero, as a zero; so the count is the same as for a dense encoding.
    The converter leaves a tensor dense when sparse encoding would not pay off.

    Returns:
        `weights` (elements counted), `zeros` and `zeros_fraction` (0.0 when there are no weights).
    """
    weights = zeros = 0
    for detail, values in _weight_tensors(path):
        if detail["sparsity_parameters"]:
            # A sparse tensor stores only (blocks of) its non-zero values; its shape is dense.
            size = int(np.prod(detail["shape"]))
            stored_zero = _zero_points(detail, (values.size,), per_channel=False)
            weights += size
            zeros += size - int(np.count_nonzero(values != stored_zero))
        else:
            weights += values.size
            zeros += int(np.count_nonzero(values == _zero_points(detail, values.shape)))
    return {
        "weights": weights,
        "zeros": zeros,
        "zeros_fraction": zeros / weights if weights else 0.0,
    }


def distinct_values_per_tensor(path: str | os.PathLike) -> dict[str, dict[str, int]]:
    """Counts the distinct stored values of each conv and fully-connected weight of a TFLite file.

    What weight clustering bounds in an int8 file: a kernel of N shared values (zero one of them)
    holds at most N distinct int8 codes among the weights that share one quantization scale,
    i.e. in each output channel of a per-channel quantized weight (its scale cancels the folded
    BatchNorm factor, so the codes are round(127 * value / largest value of the channel)), or in
    the whole tensor when it has one scale. Channels whose largest values differ get different
    codes, so a whole per-channel tensor holds more (8 clusters: 8 to 34 in a ResNet-20). The zero
    code counts as a value when present. A sparse-encoded weight
    (`Optimize.EXPERIMENTAL_SPARSITY`) stores no channels: both counts are then those of its
    stored values, plus zero for the elements not stored.

    Returns:
        {tensor name: {"values": distinct values in the tensor, "per_scale": the most distinct
        values among the weights of one scale}}, one entry per stored weight tensor.
    """
    counts = {}
    for detail, values in _weight_tensors(path):
        parameters = detail["quantization_parameters"]
        if detail["sparsity_parameters"]:
            stored = set(np.unique(values).tolist())
            if values.size < int(np.prod(detail["shape"])):
                stored.add(_zero_points(detail, (values.size,), per_channel=False))
            counts[detail["name"]] = {"values": len(stored), "per_scale": len(stored)}
            continue
        groups = [values]
        if len(parameters["scales"]) > 1:
            axis = parameters["quantized_dimension"]
            groups = [np.take(values, channel, axis=axis) for channel in range(values.shape[axis])]
        counts[detail["name"]] = {
            "values": int(np.unique(values).size),
            "per_scale": max(int(np.unique(group).size) for group in groups),
        }
    return counts


def weight_entropy(path: str | os.PathLike) -> dict[str, int]:
    """The bytes the stored weight codes take, and the fewest an order-0 coder would need.

    Each conv and fully-connected weight tensor is coded on its own with the empirical
    distribution of its stored values (int8 codes in an int8 file): `size x entropy / 8` bytes.
    No coder that writes one weight at a time with one table per tensor does better; gzip comes
    close on sparse, clustered codes but cannot beat it by much, so `bytes - weight_bytes +
    entropy_bytes` says how small the file could get without fewer zeros or fewer values.

    Returns:
        `weight_bytes` (as stored) and `entropy_bytes` (rounded), summed over the tensors.
    """
    stored = 0
    entropy_bits = 0.0
    for _, values in _weight_tensors(path):
        _, counts = np.unique(values, return_counts=True)
        probabilities = counts / values.size
        entropy_bits += values.size * float(-(probabilities * np.log2(probabilities)).sum())
        stored += values.nbytes
    return {"weight_bytes": stored, "entropy_bytes": round(entropy_bits / 8)}


def _weight_tensors(path: str | os.PathLike) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
    """Yields (tensor details, stored values) of each conv and fully-connected weight, once.

    Follows a weight back through the operators that only unpack its storage (fp16, sparse).
    """
    load_model_file(path)  # A damaged file gets the one-line error, not a flatbuffer trace.
    # No delegate: XNNPACK would take ownership of the weights and may pack or free them.
    interpreter = Interpreter(
        model_path=str(path),
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    operators = compat.tflite_operators(interpreter)
    producers = {int(output): op for op in operators for output in op["outputs"]}
    details = {detail["index"]: detail for detail in interpreter.get_tensor_details()}
    seen = set()  # A weight shared by two operators is stored, and yielded, once.
    for op in operators:
        if op["op_name"] not in _WEIGHT_OPS:
            continue
        index = int(op["inputs"][1])
        while index in producers and producers[index]["op_name"] in _STORAGE_OPS:
            index = int(producers[index]["inputs"][0])
        if index in seen:
            continue
        seen.add(index)
        yield details[index], interpreter.get_tensor(index)


def _zero_points(
    detail: dict[str, Any], shape: tuple[int, ...], per_channel: bool = True
) -> np.ndarray | int:
    """Returns the value that means 0.0 in a tensor, broadcastable to its shape.

    Sparse values lose their channel, so they use the first zero point: TFLite's int8 spec fixes
    every weight zero point at 0 anyway.
    """
    parameters = detail["quantization_parameters"]
    zero_points = np.asarray(parameters["zero_points"])
    if zero_points.size <= 1 or not per_channel:
        return int(zero_points[0]) if zero_points.size else 0
    broadcast_shape = [1] * len(shape)
    broadcast_shape[parameters["quantized_dimension"]] = zero_points.size
    return zero_points.reshape(broadcast_shape)


def evaluate_keras(
    model: keras.Model, images: np.ndarray, labels: np.ndarray, batch_size: int = 256
) -> dict[str, Any]:
    """Measures a Keras model that outputs probabilities, on raw uint8 images.

    Returns:
        `test_accuracy`, `test_loss` (sparse categorical cross-entropy) and `predictions`
        (top-1 class per image, a numpy array).
    """
    probabilities = model.predict(images.astype(np.float32), batch_size=batch_size, verbose=0)
    probabilities = np.asarray(probabilities, dtype=np.float32)
    loss = keras.losses.sparse_categorical_crossentropy(labels, probabilities)
    predictions = np.argmax(probabilities, axis=-1)
    return {
        "test_accuracy": float(np.mean(predictions == np.asarray(labels))),
        "test_loss": float(np.mean(loss)),
        "predictions": predictions,
    }


def load_model_file(path: str | os.PathLike) -> keras.Model | Interpreter:
    """Loads a `.keras` model or checks a `.tflite` file.

    Returns:
        The Keras model (uncompiled), or a LiteRT Interpreter with its tensors allocated.

    Raises:
        UserError: When the file is missing, unreadable, corrupt, truncated or of another kind.
    """
    path = Path(path)
    if path.suffix not in (".keras", ".tflite"):
        raise UserError(f"'{path}' is not a .keras or .tflite file; pass a model file")
    if not path.is_file():
        raise UserError(f"model file '{path}' not found; check the path or rerun the export")
    try:
        if path.suffix == ".keras":
            return keras.models.load_model(path, compile=False)
        return open_interpreter(path)
    except Exception as error:  # Loaders raise many types for a damaged file.
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(
            f"model file '{path}' is corrupt or truncated ({reason}); re-export or re-download it"
        ) from None
