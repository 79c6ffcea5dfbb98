"""Pruning, clustering, QAT and int8 export of DepthwiseConv2D and SeparableConv2D kernels."""

import numpy as np
import pytest
import tf_keras as keras

from compactcnn import cluster, evaluate, prune, quantize
from compactcnn.config import PruneConfig, QuantizeConfig
from compactcnn.errors import UserError
from tests.tiny import colour_images

SIZE = 32
STEPS = 4
BATCH = 16


def separable_model(num_classes: int = 4) -> keras.Model:
    """Rescaling, Conv2D, DepthwiseConv2D, SeparableConv2D, BN, ReLU, Add, pooling, Dense."""
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1, name="normalize")(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="stem")(x)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    y = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    y = keras.layers.BatchNormalization(name="dw_bn")(y)
    y = keras.layers.ReLU(name="dw_relu")(y)
    y = keras.layers.SeparableConv2D(16, 3, padding="same", use_bias=False, name="sep")(y)
    y = keras.layers.BatchNormalization(name="sep_bn")(y)
    x = keras.layers.ReLU(name="relu")(keras.layers.Add(name="add")([x, y]))
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name="separable")


@pytest.fixture(scope="module")
def data():
    images, labels = colour_images(STEPS * BATCH, seed=0)
    return images, labels


@pytest.fixture(scope="module")
def pruned(data):
    """The model pruned to 50% on a constant schedule over 2 epochs, stripped."""
    keras.utils.set_random_seed(0)
    config = PruneConfig(schedule="constant", final_sparsity=0.5, end_epoch=1.0, frequency=1)
    wrapped = prune.wrap(separable_model(), config, STEPS, 2)
    wrapped.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    images, labels = data
    wrapped.fit(
        images.astype("float32"),
        labels,
        batch_size=BATCH,
        epochs=2,
        verbose=0,
        callbacks=prune.callbacks(None),
    )
    return prune.strip(wrapped)


def test_every_kernel_of_depthwise_and_separable_layers_is_pruned(pruned):
    report = prune.sparsity_report(pruned)
    assert set(report["layers"]) == {"stem", "dw", "sep", "head"}
    sep = pruned.get_layer("sep")
    assert report["layers"]["sep"]["params"] == sep.depthwise_kernel.shape.num_elements() + (
        sep.pointwise_kernel.shape.num_elements()
    )
    for kernel in (pruned.get_layer("dw").depthwise_kernel, sep.depthwise_kernel):
        assert np.mean(kernel.numpy() == 0) == pytest.approx(0.5, abs=0.02)
    assert report["overall_sparsity"] == pytest.approx(0.5, abs=0.01)


def test_int8_file_counts_the_same_zeros_and_takes_raw_pixels(pruned, data, tmp_path):
    images, _ = data
    config = QuantizeConfig(formats=["int8"], calibration_samples=32)
    path = quantize.export(pruned, config, images, tmp_path)["int8"]
    zeros = evaluate.count_tflite_zeros(path)
    report = prune.sparsity_report(pruned)
    # The file's weights: stem, dw, the separable's depthwise and pointwise halves, head.
    assert zeros["weights"] == sum(layer["params"] for layer in report["layers"].values())
    assert zeros["zeros_fraction"] == pytest.approx(report["overall_sparsity"], abs=0.005)
    probabilities = evaluate.predict_tflite(path, images)
    agreement = np.mean(probabilities.argmax(-1) == pruned.predict(images, verbose=0).argmax(-1))
    assert agreement >= 0.95


def test_m_by_n_leaves_depthwise_and_separable_layers_dense_and_says_why():
    config = PruneConfig(schedule="constant", m_by_n=[2, 4], end_epoch=1.0, frequency=1)
    skipped = prune.skipped_layers(separable_model(), config)
    assert skipped == {
        "stem": "prune.m_by_n: 3 input channels are not a multiple of 4",
        "dw": "prune.m_by_n applies to Conv2D and Dense kernels only",
        "sep": "prune.m_by_n applies to Conv2D and Dense kernels only",
    }


def test_clustering_shares_values_in_depthwise_and_separable_kernels(pruned, data):
    clustered = cluster.prepare(pruned, 8)
    clustered.compile(keras.optimizers.SGD(0.001), "sparse_categorical_crossentropy")
    images, labels = data
    clustered.fit(images.astype("float32"), labels, batch_size=BATCH, epochs=1, verbose=0)
    stripped = cluster.strip(clustered)
    report = cluster.distinct_values_report(stripped)
    assert set(report["layers"]) == {"stem", "dw", "sep", "head"}
    assert report["max_distinct_values"] <= 7
    for kernel in (stripped.get_layer("dw").depthwise_kernel,):
        assert np.mean(kernel.numpy() == 0) >= 0.5  # the zeros survive clustering
    # The plain model takes the clustered weights in its own order.
    copy = keras.models.clone_model(pruned)
    copy.set_weights(stripped.get_weights())


def test_clustering_skips_kernels_smaller_than_the_clusters():
    skipped = cluster.skipped_layers(separable_model(), 160)
    # dw: 3x3x16 = 144 weights; sep's depthwise half too; the head: 16 x 4 = 64.
    assert set(skipped) == {"dw", "sep", "head"}
    assert skipped["dw"] == "cluster: a kernel of 144 weights, not more than the 160 clusters"


def test_prune_preserving_qat_keeps_depthwise_zeros(pruned, data):
    qat_model = quantize.prepare_qat(pruned, preserve_sparsity=True)
    keep = quantize.KeepZeros(qat_model)
    assert len(keep.masks) == 2  # dw and the separable's depthwise half (split by tfmot)
    qat_model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    images, labels = data
    qat_model.fit(
        images.astype("float32"), labels, batch_size=BATCH, epochs=1, verbose=0, callbacks=[keep]
    )
    for kernel, mask in keep.masks:
        assert np.mean(kernel.numpy() == 0) >= np.mean(mask == 0) > 0.45


def test_qat_check_names_a_layer_tfmot_cannot_quantize():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.PReLU(name="prelu")(keras.layers.Conv2D(4, 3)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    with pytest.raises(UserError, match="tfmot cannot quantize layer 'prelu' \\(PReLU\\)"):
        quantize.check_qat(model)
    quantize.check_qat(separable_model())  # every layer of it is fine
