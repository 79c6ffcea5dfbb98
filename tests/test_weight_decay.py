"""Weight decay reaches every kernel, wrapped or not, in both forms, and spares BN and biases."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from compactcnn import cluster, prune, quantize, train
from compactcnn.config import PruneConfig, TrainConfig
from tests.tiny import build_tiny_model

RATE = 0.1
DECAY = 0.01


def _wrapped(kind: str) -> keras.Model:
    model = build_tiny_model()
    if kind == "pruned":
        config = PruneConfig(schedule="constant", final_sparsity=0.5, frequency=1)
        return prune.wrap(model, config, steps_per_epoch=10, epochs=1)
    if kind == "clustered":
        return cluster.prepare(model, 4)
    if kind == "qat":
        return quantize.prepare_qat(model, preserve_sparsity=False)
    return model


def _step_with_zero_gradients(model: keras.Model, config: TrainConfig) -> dict[str, tuple]:
    """One optimizer step on zero gradients: any change is the decay's alone."""
    optimizer = train.build_optimizer(config, RATE)
    variables = model.trainable_variables
    before = {variable.name: variable.numpy().copy() for variable in variables}
    optimizer.apply_gradients([(tf.zeros_like(v), v) for v in variables])
    return {variable.name: (before[variable.name], variable.numpy()) for variable in variables}


@pytest.mark.parametrize("form", ["gradient", "decoupled"])
@pytest.mark.parametrize("kind", ["plain", "pruned", "clustered", "qat"])
def test_every_kernel_decays_and_bn_and_biases_do_not(kind, form):
    model = _wrapped(kind)
    config = TrainConfig(weight_decay=DECAY, weight_decay_form=form, momentum=0.9)
    changes = _step_with_zero_gradients(model, config)
    # Nesterov SGD on g = decay * w: w - rate * (g + momentum * (-... )) shrinks w by
    # rate * decay * (1 + momentum); the decoupled form shrinks it by rate * decay.
    factor = 1 - RATE * DECAY * (1.9 if form == "gradient" else 1.0)
    kernels = 0
    for name, (old, new) in changes.items():
        if any(part in name for part in train.NO_DECAY_VARIABLES):
            np.testing.assert_array_equal(new, old, err_msg=name)
        elif np.any(old):
            kernels += 1
            np.testing.assert_allclose(new, old * factor, rtol=1e-5, err_msg=name)
    # conv1, conv2 and the classifier: each wrapped kernel (or centroid set) got its decay.
    assert kernels >= 3


def test_decay_all_weights_decays_bn_and_biases_too():
    config = TrainConfig(weight_decay=DECAY, weight_decay_form="gradient", decay_all_weights=True)
    model = build_tiny_model()
    model.get_layer("bn1").beta.assign(np.ones(8, np.float32))
    changes = _step_with_zero_gradients(model, config)
    old, new = changes[model.get_layer("bn1").gamma.name]
    assert np.all(new < old)
    old, new = changes[model.get_layer("bn1").beta.name]
    assert np.all(new < old)


def test_gradient_form_equals_an_l2_loss_term_of_half_the_coefficient():
    """`gradient` with c is the Keras recipe's `l2(c / 2)` regularizer, step for step."""
    keras.utils.set_random_seed(0)
    images = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3)).astype(np.float32)
    labels = keras.utils.to_categorical(np.arange(16) % 4, 4)
    ours = build_tiny_model()
    theirs = build_tiny_model()
    theirs.set_weights(ours.get_weights())
    for layer in theirs.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            layer.add_loss(lambda layer=layer: keras.regularizers.l2(DECAY / 2)(layer.kernel))
    config = TrainConfig(weight_decay=DECAY, weight_decay_form="gradient", label_smoothing=0.0)
    train.compile_model(ours, config, train.build_optimizer(config, RATE))
    plain = TrainConfig(weight_decay=0.0, label_smoothing=0.0)
    train.compile_model(theirs, plain, train.build_optimizer(plain, RATE))
    for model in (ours, theirs):
        model.fit(images, labels, batch_size=8, epochs=2, shuffle=False, verbose=0)
    kernel = ours.get_layer("conv2").kernel.numpy()
    np.testing.assert_allclose(kernel, theirs.get_layer("conv2").kernel.numpy(), atol=2e-5)
    # And the decay was not a no-op: without it the kernel ends elsewhere.
    assert not np.allclose(kernel, build_tiny_model().get_layer("conv2").kernel.numpy())
