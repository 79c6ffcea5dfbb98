"""Tests of compactcnn.cluster: sparsity-preserving weight clustering and its int8 export."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from compactcnn import cluster, evaluate, quantize
from compactcnn.config import QuantizeConfig
from compactcnn.errors import UserError
from tests.tiny import build_tiny_model, colour_images

CLUSTERS = 8
WIDTH = 32  # Enough kernel weights that the int8 weights, not the file's overhead, decide gzip.


def kernels(model: keras.Model) -> dict[str, np.ndarray]:
    return {
        layer.name: layer.kernel.numpy()
        for layer in model.layers
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))
    }


def int8_filters(path) -> dict[str, np.ndarray]:
    """The int8 weight tensor of each conv and fully-connected operator, [out, ...]."""
    interpreter = Interpreter(
        model_path=str(path),
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    names = {detail["index"]: detail["name"] for detail in interpreter.get_tensor_details()}
    filters = {}
    for op in interpreter._get_ops_details():
        if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED"):
            index = int(op["inputs"][1])
            filters[names[index]] = interpreter.get_tensor(index)
    return filters


@pytest.fixture(scope="module")
def sparse_task():
    """A tiny model trained on the colour task, then 70% of each kernel zeroed by magnitude."""
    keras.utils.set_random_seed(0)
    model = build_tiny_model(width=WIDTH)
    images, labels = colour_images(256, seed=0)
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    model.fit(images.astype(np.float32), labels, batch_size=32, epochs=3, verbose=0)
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            values = layer.kernel.numpy()
            values[np.abs(values) <= np.quantile(np.abs(values), 0.7)] = 0.0
            layer.kernel.assign(values)
    return model, images, labels


@pytest.fixture(scope="module")
def fine_tuned(sparse_task):
    """The sparse model clustered, fine-tuned for 2 epochs and stripped."""
    model, images, labels = sparse_task
    keras.utils.set_random_seed(0)
    clustered = cluster.prepare(model, CLUSTERS)
    clustered.compile(keras.optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy")
    clustered.fit(images.astype(np.float32), labels, batch_size=32, epochs=2, verbose=0)
    return cluster.strip(clustered)


def test_fine_tuning_keeps_every_pruned_zero_and_at_most_n_values(sparse_task, fine_tuned):
    model, images, labels = sparse_task
    before, after = kernels(model), kernels(fine_tuned)
    assert after.keys() == before.keys()
    for name, kernel in before.items():
        assert np.mean(kernel == 0) > 0.69, name
        assert np.all(after[name][kernel == 0] == 0), name
        # The kernel did train: clustering snapped it onto a few shared values.
        assert not np.allclose(after[name], kernel), name
    report = cluster.distinct_values_report(fine_tuned)
    assert set(report["layers"]) == set(before)
    assert 1 < report["max_distinct_values"] <= CLUSTERS - 1
    for name, kernel in after.items():
        assert np.unique(kernel[kernel != 0]).size == report["layers"][name]
    accuracy = evaluate.evaluate_keras(fine_tuned, images, labels)["test_accuracy"]
    assert accuracy > 0.9


def test_prepare_copies_the_weights(sparse_task):
    model, images, _ = sparse_task
    # With many clusters every kernel stays close to the original, so the outputs do too.
    clustered = cluster.prepare(model, 128)
    expected = model.predict(images[:64].astype(np.float32), verbose=0)
    actual = clustered.predict(images[:64].astype(np.float32), verbose=0)
    np.testing.assert_allclose(actual, expected, atol=0.02)
    clustered_layers = {layer.name: layer for layer in clustered.layers}
    for name in ("bn1", "bn2"):
        for got, want in zip(
            clustered_layers[name].get_weights(), model.get_layer(name).get_weights(), strict=True
        ):
            np.testing.assert_array_equal(got, want)
    assert "cluster_conv2" in clustered_layers


def test_strip_gives_the_weights_of_a_fresh_build(sparse_task, fine_tuned):
    model, images, _ = sparse_task
    assert [layer.name for layer in fine_tuned.layers] == [layer.name for layer in model.layers]
    fresh = build_tiny_model(width=WIDTH)
    fresh.set_weights(fine_tuned.get_weights())
    batch = images[:32].astype(np.float32)
    np.testing.assert_array_equal(
        fresh.predict(batch, verbose=0), fine_tuned.predict(batch, verbose=0)
    )


def test_int8_export_keeps_the_clusters_and_gzips_smaller(sparse_task, fine_tuned, tmp_path):
    model, images, _ = sparse_task
    config = QuantizeConfig(calibration_samples=32)
    clustered_file = quantize.export(fine_tuned, config, images, tmp_path / "clustered", ["int8"])
    plain_file = quantize.export(model, config, images, tmp_path / "plain", ["int8"])
    filters = int8_filters(clustered_file["int8"])
    assert len(filters) == 3
    for name, codes in filters.items():
        assert np.mean(codes == 0) > 0.69, name
        # Per-channel scales cancel the folded BatchNorm factor: within an output channel the
        # clustered values stay at most N - 1 distinct non-zero codes.
        for channel in codes.reshape(len(codes), -1):
            assert np.unique(channel[channel != 0]).size <= CLUSTERS - 1, name
    clustered_gzip = evaluate.file_sizes(clustered_file["int8"])["gzip_bytes"]
    plain_gzip = evaluate.file_sizes(plain_file["int8"])["gzip_bytes"]
    assert clustered_gzip < 0.9 * plain_gzip


def test_distinct_values_report_reads_wrapped_and_plain_models(sparse_task):
    model, _, _ = sparse_task
    clustered = cluster.prepare(model, CLUSTERS)
    # Counted here from tfmot's own strip, independently of the code under test.
    stripped = tfmot.clustering.keras.strip_clustering(clustered)
    expected = {
        layer.name: int(np.unique(kernel[kernel != 0]).size)
        for layer in stripped.layers
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))
        for kernel in [layer.get_weights()[0]]
    }
    assert max(expected.values()) <= CLUSTERS - 1
    report = cluster.distinct_values_report(clustered)
    assert report == {"max_distinct_values": max(expected.values()), "layers": expected}
    plain = {
        layer.name: int(np.unique(layer.get_weights()[0][layer.get_weights()[0] != 0]).size)
        for layer in model.layers
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))
    }
    assert cluster.distinct_values_report(model)["layers"] == plain
    assert max(plain.values()) > CLUSTERS


@pytest.mark.parametrize("clusters", [2, 257])
def test_cluster_count_out_of_range_is_a_user_error(sparse_task, clusters):
    model, _, _ = sparse_task
    with pytest.raises(UserError, match="quantize.weight_clusters"):
        cluster.prepare(model, clusters)


def _centroid_gradients(model, images, labels, gradient: str) -> tuple[np.ndarray, np.ndarray]:
    """The first clustered kernel's centroid gradients on one batch, and its cluster sizes."""
    clustered = cluster.prepare(model, CLUSTERS, gradient)
    wrapper = next(layer for layer in clustered.layers if isinstance(layer, cluster.ClusterWeights))
    (name, centroids), *_ = wrapper.cluster_centroids.items()
    loss = keras.losses.SparseCategoricalCrossentropy()
    with tf.GradientTape() as tape:
        value = loss(labels[:64], clustered(images[:64].astype(np.float32), training=True))
    sizes = np.bincount(wrapper.pulling_indices[name].numpy().ravel(), minlength=CLUSTERS)
    return tf.convert_to_tensor(tape.gradient(value, centroids)).numpy(), sizes


def test_average_cluster_gradient_divides_each_centroid_gradient_by_its_cluster_size(
    sparse_task,
):
    model, images, labels = sparse_task
    summed, sizes = _centroid_gradients(model, images, labels, "sum")
    averaged, same_sizes = _centroid_gradients(model, images, labels, "average")
    np.testing.assert_array_equal(sizes, same_sizes)
    used = sizes > 1  # a centroid of one weight gets the same gradient either way
    assert used.sum() >= 2
    assert np.abs(summed[used]).max() > 0
    np.testing.assert_allclose(averaged[used], summed[used] / sizes[used], rtol=1e-4, atol=1e-9)
