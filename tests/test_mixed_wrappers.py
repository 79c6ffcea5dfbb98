"""Pruning and clustering wrappers under mixed_bfloat16 (issue 15, item 2).

The wrapped layers compute in bfloat16 like the rest of the model, while their master kernels,
masks, thresholds and centroids stay float32, so the zeros are exact through training, the
float32 rebuild and the export. (QAT runs in float32 under every policy: tfmot's fake-quant ops
take float32 only.)
"""

import compactcnn  # noqa: F401  (must precede any TensorFlow import)

# isort: split
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from ai_edge_litert.interpreter import Interpreter

from compactcnn import cluster, compat, distribute, evaluate, prune, quantize
from compactcnn.compat import ClusterWeights, PruneLowMagnitude
from compactcnn.config import PruneConfig, QuantizeConfig
from compactcnn.models.graph import with_policy
from tests.tiny import build_tiny_model, colour_images

SIZE = 8
STEPS_PER_EPOCH = 4
BATCH_SIZE = 8
# Masks update every step from step 1 (at 60%); each test fits 2 epochs = 8 steps.
CONSTANT = dict(schedule="constant", final_sparsity=0.6, begin_epoch=0.0, frequency=1)
BFLOAT16 = tf.bfloat16.as_numpy_dtype


@pytest.fixture
def mixed_bfloat16():
    """The global policy a `train.precision: mixed_bfloat16` run sets, float32 again after."""
    distribute.set_precision("mixed_bfloat16")
    yield
    distribute.set_precision("float32")


def tiny_model() -> keras.Model:
    return build_tiny_model(width=8, num_classes=4, size=SIZE)


def images_and_labels() -> tuple[np.ndarray, np.ndarray]:
    images, labels = colour_images(STEPS_PER_EPOCH * BATCH_SIZE, seed=0)
    return images[:, :SIZE, :SIZE].astype(np.float32), labels


def fit(model: keras.Model, callbacks=(), learning_rate: float = 0.05) -> None:
    optimizer = keras.optimizers.SGD(learning_rate, momentum=0.9)
    model.compile(optimizer, "sparse_categorical_crossentropy")
    images, labels = images_and_labels()
    model.fit(images, labels, batch_size=BATCH_SIZE, epochs=2, verbose=0, callbacks=list(callbacks))


def traced_dtypes(model: keras.Model, op_type: str) -> dict[str, str]:
    """{layer: dtype} of every `op_type` op of the training graph (the `T` attribute)."""
    function = tf.function(lambda images: model(images, training=True))
    graph = function.get_concrete_function(tf.TensorSpec((2, SIZE, SIZE, 3))).graph
    return {
        op.name.split("/")[1]: op.get_attr("T").name
        for op in graph.get_operations()
        if op.type == op_type
    }


def bfloat16_exact(values: np.ndarray) -> bool:
    """Whether float32 values lost nothing in a round trip through bfloat16."""
    return np.array_equal(values, values.astype(BFLOAT16).astype(np.float32))


def filters(path) -> dict[tuple[int, ...], np.ndarray]:
    """The weights of each conv and fully-connected operator of a .tflite file, by shape."""
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    return {
        tuple(values.shape): values
        for op in compat.tflite_operators(interpreter)
        if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED")
        for values in [interpreter.get_tensor(int(op["inputs"][1]))]
    }


def pruned_in_bfloat16() -> keras.Model:
    model = prune.wrap(tiny_model(), PruneConfig(**CONSTANT), STEPS_PER_EPOCH, 2)
    fit(model, prune.callbacks(None))
    return model


def test_pruned_convolutions_compute_in_bfloat16_on_float32_masks(mixed_bfloat16):
    model = prune.wrap(tiny_model(), PruneConfig(**CONSTANT), STEPS_PER_EPOCH, 2)
    assert traced_dtypes(model, "Conv2D") == {
        "prune_low_magnitude_conv1": "bfloat16",
        "prune_low_magnitude_conv2": "bfloat16",
    }
    assert traced_dtypes(model, "MatMul") == {"prune_low_magnitude_logits": "bfloat16"}
    for wrapper in prune._pruning_layers(model):
        assert wrapper.output.dtype == tf.bfloat16
        # Outside a layer's call an AutoCastVariable's dtype is the stored one.
        variables = {weight.name.split("/")[-1]: weight.dtype for weight in wrapper.weights}
        assert variables["kernel:0"] == variables["mask:0"] == variables["threshold:0"]
        assert variables["mask:0"] == tf.float32
    assert model.output.dtype == tf.float32


def test_pruning_in_bfloat16_keeps_masks_and_float32_kernels_exact(mixed_bfloat16):
    model = prune.wrap(tiny_model(), PruneConfig(**CONSTANT), STEPS_PER_EPOCH, 2)
    wrappers = prune._pruning_layers(model)
    initial = [wrapper.layer.kernel.numpy() for wrapper in wrappers]
    assert not any(bfloat16_exact(kernel) for kernel in initial)
    # At learning rate 0 only the masking changes the kernels: the weights it keeps must be
    # bit for bit what they were, not rounded to bfloat16 by a mask update.
    fit(model, prune.callbacks(None), learning_rate=0.0)
    for wrapper, before in zip(wrappers, initial, strict=True):
        kernel = wrapper.layer.kernel.numpy()
        assert np.mean(kernel == 0) == pytest.approx(0.6, abs=0.02)
        np.testing.assert_array_equal(kernel[kernel != 0], before[kernel != 0])
    fit(model, prune.callbacks(None))  # trained: the masked weights are zeros exactly
    for wrapper in wrappers:
        kernel = wrapper.layer.kernel.numpy()
        mask = next(w for w in wrapper.weights if w.name.endswith("/mask:0")).numpy()
        assert set(np.unique(mask)) == {0.0, 1.0}
        np.testing.assert_array_equal(kernel == 0, mask == 0)
        assert np.mean(mask == 0) == pytest.approx(0.6, abs=0.02)


def test_clustered_convolutions_compute_in_bfloat16_on_float32_centroids(mixed_bfloat16):
    stripped = prune.strip(pruned_in_bfloat16())
    zeros = {name: stripped.get_layer(name).kernel.numpy() == 0 for name in ("conv1", "conv2")}
    clustered = cluster.prepare(stripped, number_of_clusters=4)
    assert traced_dtypes(clustered, "Conv2D") == {
        "cluster_conv1": "bfloat16",
        "cluster_conv2": "bfloat16",
    }
    wrappers = [layer for layer in clustered.layers if isinstance(layer, ClusterWeights)]
    for wrapper in wrappers:
        assert wrapper.output.dtype == tf.bfloat16
        assert {v.dtype for v in wrapper.cluster_centroids.values()} == {tf.float32}
    fit(clustered)
    for wrapper in wrappers:
        (centroids,) = (v.numpy() for v in wrapper.cluster_centroids.values())
        assert not bfloat16_exact(centroids), wrapper.name  # trained in float32
    result = cluster.strip(clustered)
    for name, was_zero in zeros.items():
        kernel = result.get_layer(name).kernel.numpy()
        assert np.all(kernel[was_zero] == 0), name  # the zero cluster kept every zero
        assert np.unique(kernel).size <= 4


def test_zeros_pruned_in_bfloat16_are_exact_in_the_exported_files(mixed_bfloat16, tmp_path):
    model = prune.strip(pruned_in_bfloat16())
    assert not any(isinstance(layer, PruneLowMagnitude) for layer in model.layers)
    # The run's export path (run.compress): float32 policy, every layer rebuilt in float32.
    distribute.set_precision("float32")
    float_model = with_policy(model, "float32")  # with the trained weights
    assert {weight.dtype for weight in float_model.weights} == {tf.float32}
    # [out, ...], as TFLite stores them; their shapes tell the tiny model's three kernels apart.
    kernels = {
        name: np.moveaxis(float_model.get_layer(name).kernel.numpy(), -1, 0)
        for name in ("conv1", "conv2", "logits")
    }
    keras_zeros = sum(int(np.sum(kernel == 0)) for kernel in kernels.values())
    params = sum(kernel.size for kernel in kernels.values())
    assert keras_zeros / params == pytest.approx(0.6, abs=0.02)
    images, _ = colour_images(16, seed=1)
    files = quantize.export(
        float_model,
        QuantizeConfig(calibration_samples=8),
        images[:, :SIZE, :SIZE],
        tmp_path,
        ["float32", "int8"],
    )
    for name, path in files.items():
        stored = filters(path)
        assert sorted(stored) == sorted(kernel.shape for kernel in kernels.values()), name
        for kernel in kernels.values():
            assert np.all(stored[kernel.shape][kernel == 0] == 0), name  # every pruned zero
        counted = evaluate.count_tflite_zeros(path)["zeros"]
        if name == "float32":
            assert counted == keras_zeros
        else:  # int8 also rounds the odd weight under half a quantization step to zero
            assert keras_zeros <= counted <= keras_zeros + 0.01 * params
