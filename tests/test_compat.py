"""One test per private or version-pinned API in compactcnn.compat: fails on the upgrade that
breaks it, not deep inside a run."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras
from ai_edge_litert.interpreter import Interpreter

from compactcnn import compat
from tests.tiny import build_tiny_model


def test_versions_are_checked_with_a_message_that_says_how_to_fix_it():
    compat.check_versions()  # the installed stack is the checked one
    with pytest.raises(ImportError, match=r"checked against tf_keras 1\.0\.\*, found 2\.21"):
        compat.check_versions((("tf_keras", "1.0."),))


def test_prune_wrapper_class_is_the_one_tfmot_wraps_with():
    layer = tfmot.sparsity.keras.prune_low_magnitude(keras.layers.Dense(2))
    assert isinstance(layer, compat.PruneLowMagnitude)


def test_cluster_wrapper_class_is_the_one_tfmot_wraps_with():
    layer = tfmot.clustering.keras.cluster_weights(
        keras.layers.Dense(4),
        number_of_clusters=2,
        cluster_centroids_init=tfmot.clustering.keras.CentroidInitialization.LINEAR,
    )
    assert isinstance(layer, compat.ClusterWeights)


def test_input_quantizer_range_is_found_by_its_weight_names():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    qat = tfmot.quantization.keras.quantize_model(model)
    assert any(isinstance(layer, compat.QuantizeLayer) for layer in qat.layers)
    assert compat.set_input_quantizer_range(qat, -3.0, 7.0) == 2
    layer = next(layer for layer in qat.layers if isinstance(layer, compat.QuantizeLayer))
    values = [float(weight.numpy()) for weight in layer.weights]
    assert values.count(-3.0) == 1 and values.count(7.0) == 1


def test_tflite_operators_lists_ops_with_their_tensors():
    model = build_tiny_model()
    flatbuffer = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    interpreter = Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
    operators = compat.tflite_operators(interpreter)
    names = [op["op_name"] for op in operators]
    assert names.count("CONV_2D") == 2 and "FULLY_CONNECTED" in names
    assert all(len(op["inputs"]) and len(op["outputs"]) for op in operators)


def test_backup_hook_is_the_method_keras_backs_up_through(tmp_path):
    """`_backup` must still be called for every backup, or BackupAfterLogging moves nothing."""
    calls = []

    class Recording(compat.BackupAfterLogging):
        def _backup(self, epoch, batch=0):
            calls.append((epoch, batch))
            super()._backup(epoch, batch)

    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile("sgd", "mse")
    data = np.zeros((8, 2), np.float32), np.zeros((8, 1), np.float32)
    callback = Recording(str(tmp_path / "backup"), save_freq=2)
    model.fit(*data, batch_size=2, epochs=1, callbacks=[callback], verbose=0)
    # Steps 0-3, a backup every 2: the one at the epoch's last step is deferred to its end.
    assert calls == [(0, 1), (0, 3)]
    assert (tmp_path / "backup").exists()


def test_qat_support_is_the_default_8bit_registry_answer():
    assert compat.qat_supports(keras.layers.Conv2D(2, 3))
    assert compat.qat_supports(keras.layers.DepthwiseConv2D(3))
    assert not compat.qat_supports(keras.layers.PReLU())
    assert not compat.qat_supports(keras.layers.Multiply())


def test_mixed_precision_wrappers_use_tfmots_names_and_hooks():
    """The subclasses keep tfmot's wrapper names and wrap or call tfmot's own methods."""
    images = tf.ones((1, 3))
    pruned = compat.MixedPrecisionPruneLowMagnitude(
        keras.layers.Dense(2, dtype="mixed_bfloat16", name="dense"), dtype="mixed_bfloat16"
    )
    assert pruned.name == "prune_low_magnitude_dense"
    pruned.build((None, 3))
    kernel = pruned.layer.kernel.numpy()
    assert pruned(images).dtype == tf.bfloat16
    # The call masked the kernel (tfmot's `weight_mask_op`) in float32: nothing was rounded.
    np.testing.assert_array_equal(pruned.layer.kernel.numpy(), kernel)
    clustered = compat.MixedPrecisionClusterWeights(
        keras.layers.Dense(4, dtype="mixed_bfloat16", name="dense"),
        number_of_clusters=3,
        cluster_centroids_init=tfmot.clustering.keras.CentroidInitialization.LINEAR,
        dtype="mixed_bfloat16",
    )
    assert clustered.name == "cluster_dense"
    assert clustered(images).dtype == tf.bfloat16
    assert clustered.cluster_centroids["kernel"].dtype == tf.float32
