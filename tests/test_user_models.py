"""Bring a model: `.keras` files and builders, graph edits (flatten, normalization, softmax,
precision), and the one-line errors of bad models, raised before anything is written."""

import textwrap

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from ai_edge_litert.interpreter import Interpreter

from compactcnn import distribute, run
from compactcnn.config import DataConfig, ModelConfig, NormalizeConfig, load_config
from compactcnn.errors import UserError
from compactcnn.models import graph, resolve

SIZE = 16


def small_cnn(num_classes: int = 3, input_shape=(SIZE, SIZE, 3), logits: bool = False):
    """Conv, BN, depthwise, a residual add inside a custom name scope, pooling, dense."""
    inputs = keras.Input(input_shape)
    with tf.name_scope("my_scope"):
        x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
        x = keras.layers.BatchNormalization(name="bn")(x)
        y = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
        x = keras.layers.Add(name="add")([x, y])
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    activation = None if logits else "softmax"
    outputs = keras.layers.Dense(num_classes, activation=activation, name="head")(x)
    return keras.Model(inputs, outputs, name="small")


def pixels(count: int = 4, size: int = SIZE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3)).astype("float32")


def plan_for(name: str, **data) -> "run.ModelPlan":
    return resolve(ModelConfig(name=name), DataConfig(**data))


def saved(tmp_path, model: keras.Model, name: str = "model.keras") -> str:
    path = tmp_path / name
    model.save(path)
    return str(path)


# Graph edits ---------------------------------------------------------------------------------


def test_saved_model_gets_the_default_normalization_and_keeps_its_weights(tmp_path):
    original = small_cnn()
    plan = plan_for(saved(tmp_path, original))
    assert plan.source == "file" and plan.image_size == (SIZE, SIZE)
    model, report = plan.build(3, NormalizeConfig())
    first = model.layers[1]
    assert isinstance(first, keras.layers.Rescaling) and first.name == "normalize"
    assert "added Rescaling 'normalize': pixels * 0.00784314 - 1" in report["normalization"]
    images = pixels()
    # The rebuilt model on raw pixels is the original on pixels mapped to [-1, 1].
    np.testing.assert_allclose(model(images), original(images / 127.5 - 1.0), atol=1e-5)


def test_normalize_mean_std_and_scale_are_prepended_as_one_rescaling(tmp_path):
    original = small_cnn()
    plan = plan_for(saved(tmp_path, original))
    images = pixels()
    moments = NormalizeConfig(mean=[100.0, 110.0, 120.0], std=[50.0, 60.0, 70.0])
    model, _ = plan.build(3, moments)
    expected = original((images - np.array([100, 110, 120])) / np.array([50, 60, 70]))
    np.testing.assert_allclose(model(images), expected, atol=1e-5)
    model, _ = plan.build(3, NormalizeConfig(scale=1 / 255))
    np.testing.assert_allclose(model(images), original(images / 255), atol=1e-5)


def test_own_normalization_is_kept_and_normalization_layer_becomes_rescaling(tmp_path):
    inputs = keras.Input((SIZE, SIZE, 3))
    norm = keras.layers.Normalization(mean=[120.0, 110.0, 100.0], variance=[900.0, 1600.0, 2500.0])
    outputs = keras.layers.Dense(2, activation="softmax")(
        keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(norm(inputs)))
    )
    original = keras.Model(inputs, outputs)
    plan = plan_for(saved(tmp_path, original))
    model, report = plan.build(2, NormalizeConfig())
    assert report["normalization"].endswith("Normalization 'normalization', as the equal Rescaling")
    assert isinstance(model.layers[1], keras.layers.Rescaling)
    assert not any(isinstance(layer, keras.layers.Normalization) for layer in model.layers)
    images = pixels()
    np.testing.assert_allclose(model(images), original(images), atol=1e-5)
    with pytest.raises(UserError, match="normalizes its input itself .*; remove data.normalize"):
        plan.build(2, NormalizeConfig(scale=0.5))


def test_logits_get_a_float32_softmax_and_other_activations_are_refused(tmp_path):
    original = small_cnn(logits=True)
    model, report = plan_for(saved(tmp_path, original)).build(3, NormalizeConfig(scale=1.0))
    assert report["output"] == "softmax appended to the logits"
    assert model.layers[-1].name == "probabilities" and model.layers[-1].dtype == "float32"
    images = pixels()
    np.testing.assert_allclose(model(images), tf.nn.softmax(original(images)), atol=1e-5)

    inputs = keras.Input((SIZE, SIZE, 3))
    sigmoid = keras.layers.Dense(3, activation="sigmoid")(keras.layers.Flatten()(inputs))
    path = saved(tmp_path, keras.Model(inputs, sigmoid), "sigmoid.keras")
    with pytest.raises(UserError, match="ends in activation 'sigmoid', not a softmax"):
        plan_for(path).build(3, NormalizeConfig())


def test_nested_functional_and_sequential_models_are_flattened(tmp_path):
    block_input = keras.Input((SIZE, SIZE, 4))
    block_output = keras.layers.DepthwiseConv2D(3, padding="same", name="conv")(block_input)
    block = keras.Model(block_input, block_output, name="block")
    pool = keras.layers.GlobalAveragePooling2D()
    head = keras.Sequential(
        [keras.Input((SIZE, SIZE, 4)), pool, keras.layers.Dense(3)], name="head"
    )
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)  # same name as inside
    x = keras.layers.Add()([x, block(x)])
    outer = keras.Model(inputs, keras.layers.Softmax()(head(x)))
    model, report = plan_for(saved(tmp_path, outer)).build(3, NormalizeConfig(scale=1.0))
    assert report["flattened"] == ["block", "head"]
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
    assert {"conv", "block_conv"} <= {layer.name for layer in model.layers}
    images = pixels()
    np.testing.assert_allclose(model(images), outer(images), atol=1e-5)


def test_a_sub_model_called_twice_is_refused_with_the_fix(tmp_path):
    block_input = keras.Input((SIZE, SIZE, 3))
    block = keras.Model(block_input, keras.layers.Conv2D(3, 1)(block_input), name="twice")
    inputs = keras.Input((SIZE, SIZE, 3))
    x = block(block(inputs))
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(x))
    plan = plan_for(saved(tmp_path, keras.Model(inputs, outputs)))
    with pytest.raises(UserError, match="nested model 'twice' is called 2 times.*flat Functional"):
        plan.build(2, NormalizeConfig())


def test_a_subclassed_model_is_refused_with_the_fix():
    class Net(keras.Model):
        def __init__(self):
            super().__init__(name="net")
            self.dense = keras.layers.Dense(2)

        def call(self, inputs):
            return self.dense(inputs)

    model = Net()
    model(np.zeros((1, 4), np.float32))
    with pytest.raises(UserError, match="'net' is a subclassed keras.Model; compactcnn needs"):
        graph.Graph.of(model)


def test_mixed_bfloat16_model_rebuilds_in_float32_and_converts(tmp_path):
    """The export path of a mixed-precision run: every layer float32 again, TFLite == Keras."""
    plan = plan_for(saved(tmp_path, small_cnn()))
    try:
        distribute.set_precision("mixed_bfloat16")
        mixed, _ = plan.build(3, NormalizeConfig(), "mixed_bfloat16")
        assert mixed.get_layer("conv").compute_dtype == "bfloat16"
        assert mixed.layers[-1].dtype_policy.name == "float32"  # the output stays float32
    finally:
        distribute.set_precision("float32")
    float_model = graph.with_policy(mixed, "float32")
    assert {layer.dtype_policy.name for layer in float_model.layers} == {"float32"}
    flatbuffer = tf.lite.TFLiteConverter.from_keras_model(float_model).convert()
    interpreter = Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
    image = pixels(1)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image)
    interpreter.invoke()
    output = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(output, float_model(image), atol=1e-5)


# Builders and sizes --------------------------------------------------------------------------


def test_builder_is_called_with_classes_and_the_configured_size(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(
        textwrap.dedent(
            """
            import tf_keras as keras

            def build(num_classes, input_shape):
                inputs = keras.Input(input_shape)
                x = keras.layers.SeparableConv2D(4, 3, name="sep")(inputs)
                x = keras.layers.GlobalAveragePooling2D()(x)
                return keras.Model(inputs, keras.layers.Dense(num_classes)(x))
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    plan = plan_for("my_models:build", image_size=[24, 40])
    assert plan.source == "builder" and plan.image_size == (24, 40)
    model, report = plan.build(5, NormalizeConfig())
    assert model.input_shape == (None, 24, 40, 3) and model.output_shape == (None, 5)
    assert report["source"] == "builder" and report["output"] == "softmax appended to the logits"
    assert plan_for("my_models:build").image_size == (32, 32)


def test_saved_model_takes_its_own_size_and_flexible_ones_take_the_config(tmp_path):
    assert plan_for(saved(tmp_path, small_cnn(input_shape=(20, 28, 3)))).image_size == (20, 28)
    flexible = saved(tmp_path, small_cnn(input_shape=(None, None, 3)), "any.keras")
    plan = plan_for(flexible, image_size=[36, 36])
    assert plan.image_size == (36, 36)
    model, _ = plan.build(3, NormalizeConfig())
    assert model.input_shape == (None, 36, 36, 3)  # a static shape for TFLite


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("resnet21", "unknown model 'resnet21'; choose one of .*path/to/model.keras"),
        ("missing/model.keras", "'missing/model.keras' does not exist"),
        ("model.h5", "is an HDF5 file; .* re-save it"),
        ("no_such_module_here:build", "module 'no_such_module_here' does not import"),
        ("json:no_such_function", "module 'json' has no function 'no_such_function'"),
    ],
)
def test_bad_model_names_are_one_line_errors(name, message):
    with pytest.raises(UserError, match=message) as raised:
        plan_for(name)
    assert "\n" not in str(raised.value)


def test_options_of_built_in_models_are_refused_for_user_models(tmp_path):
    path = saved(tmp_path, small_cnn())
    with pytest.raises(UserError, match="model.width applies to the built-in models"):
        resolve(ModelConfig(name=path, width=0.5), DataConfig())
    with pytest.raises(UserError, match="model 'resnet20' has no option model.width"):
        resolve(ModelConfig(name="resnet20", width=0.5), DataConfig()).build(10, NormalizeConfig())


# Bad input through `run`: one line, nothing written -----------------------------------------


def run_config(tmp_path, *overrides):
    return load_config(
        None,
        [
            "data.name=synthetic",
            "data.synthetic_size=32",
            "data.synthetic_classes=3",
            "train.batch_size=8",
            "train.epochs=1",
            "prune.schedule=constant",
            "prune.end_epoch=1",
            "prune.frequency=1",
            f"output.dir={tmp_path}",
            *overrides,
        ],
    )


def refused(tmp_path, *overrides) -> str:
    run_dir = tmp_path / "run"
    with pytest.raises(UserError) as raised:
        run.run(run_config(tmp_path, *overrides), run_dir)
    assert not run_dir.exists(), "a rejected run wrote its run directory"
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_a_keras_file_that_does_not_load_writes_nothing(tmp_path):
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"PK\x03\x04 not really a zip file")
    message = refused(tmp_path, f"model.name={broken}")
    assert message.startswith(f"model.name '{broken}' does not load as a tf_keras model")


def test_a_builder_that_does_not_import_writes_nothing(tmp_path):
    message = refused(tmp_path, "model.name=not_a_module_anywhere.models:build")
    assert "module 'not_a_module_anywhere.models' does not import (ModuleNotFoundError" in message


def test_an_input_shape_that_disagrees_with_image_size_writes_nothing(tmp_path):
    path = saved(tmp_path, small_cnn(input_shape=(48, 48, 3)))
    message = refused(tmp_path, f"model.name={path}", "data.image_size=[32, 32]")
    expected = "takes 48x48 images but data.image_size is [32, 32]; set data.image_size to [48, 48]"
    assert expected in message


def test_a_layer_tfmot_cannot_wrap_writes_nothing(tmp_path, monkeypatch):
    (tmp_path / "custom_layers.py").write_text(
        textwrap.dedent(
            """
            import tf_keras as keras

            class MyConv(keras.layers.Conv2D):
                pass

            def build(num_classes, input_shape):
                inputs = keras.Input(input_shape)
                x = MyConv(4, 3, name="mine")(inputs)
                x = keras.layers.GlobalAveragePooling2D()(x)
                return keras.Model(inputs, keras.layers.Dense(num_classes)(x))
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    message = refused(tmp_path, "model.name=custom_layers:build")
    assert message.startswith(
        "layer 'mine' (MyConv, a subclass of Conv2D) has kernels that tfmot cannot wrap for "
        "pruning; build it from Conv2D, DepthwiseConv2D, SeparableConv2D or Dense itself"
    )


def test_a_layer_qat_cannot_quantize_writes_nothing(tmp_path, monkeypatch):
    (tmp_path / "prelu_model.py").write_text(
        textwrap.dedent(
            """
            import tf_keras as keras

            def build(num_classes, input_shape):
                inputs = keras.Input(input_shape)
                x = keras.layers.PReLU(name="prelu")(keras.layers.Conv2D(4, 3)(inputs))
                x = keras.layers.GlobalAveragePooling2D()(x)
                return keras.Model(inputs, keras.layers.Dense(num_classes)(x))
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    message = refused(tmp_path, "model.name=prelu_model:build", "quantize.qat=true")
    assert message.startswith("quantize.qat: tfmot cannot quantize layer 'prelu' (PReLU)")
