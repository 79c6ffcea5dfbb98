"""Tests of compactcnn.quantize: the four TFLite formats, their options, and QAT."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from ai_edge_litert.interpreter import Interpreter

from compactcnn import evaluate, quantize
from compactcnn.config import QuantizeConfig
from compactcnn.errors import UserError
from tests.tiny import build_tiny_model, colour_images


def kernels(model: keras.Model) -> dict[str, np.ndarray]:
    """Conv and Dense kernels by layer name; a QAT wrapper holds its layer's `<name>/kernel`."""
    return {
        weight.name.split("/")[0]: weight.numpy()
        for weight in model.weights
        if weight.name.endswith("/kernel:0")
    }


def prune_smallest(model: keras.Model, fraction: float) -> int:
    """Zeroes the smallest `fraction` of every kernel, as magnitude pruning does; returns zeros."""
    zeros = 0
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            values = layer.kernel.numpy()
            threshold = np.quantile(np.abs(values), fraction)
            values[np.abs(values) <= threshold] = 0.0
            layer.kernel.assign(values)
            zeros += int(np.count_nonzero(values == 0))
    return zeros


@pytest.fixture(scope="module")
def colour_task():
    """A tiny model trained to tell the colours apart, with its data."""
    keras.utils.set_random_seed(0)
    model = build_tiny_model(width=16)
    images, labels = colour_images(256, seed=0)
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    model.fit(images.astype(np.float32), labels, batch_size=32, epochs=3, verbose=0)
    return model, images, labels


@pytest.fixture(scope="module")
def exported(colour_task, tmp_path_factory):
    """Every format of the colour model, plus int8 with int8 and float32 io."""
    model, images, _ = colour_task
    folder = tmp_path_factory.mktemp("formats")
    files = quantize.export(model, QuantizeConfig(calibration_samples=16), images, folder)
    for io in ("int8", "float32"):
        config = QuantizeConfig(calibration_samples=16, int8_io=io)
        files[f"int8_{io}_io"] = quantize.export(model, config, images, folder / io, ["int8"])[
            "int8"
        ]
    return folder, files


@pytest.mark.parametrize(
    "name, input_dtype, output_dtype",
    [
        ("float32", np.float32, np.float32),
        ("float16", np.float32, np.float32),
        ("dynamic_int8", np.float32, np.float32),
        ("int8", np.uint8, np.uint8),
        ("int8_int8_io", np.int8, np.int8),
        ("int8_float32_io", np.float32, np.float32),
    ],
)
def test_each_format_converts_runs_and_has_its_io_type(
    colour_task, exported, name, input_dtype, output_dtype
):
    model, images, _ = colour_task
    _, files = exported
    interpreter = Interpreter(model_path=str(files[name]))
    assert interpreter.get_input_details()[0]["dtype"] == input_dtype
    assert interpreter.get_output_details()[0]["dtype"] == output_dtype
    expected = model.predict(images[:64].astype(np.float32), verbose=0).argmax(axis=-1)
    predicted = evaluate.predict_tflite(files[name], images[:64]).argmax(axis=-1)
    assert np.mean(predicted == expected) >= 0.95


def test_export_writes_format_named_files_and_no_temporaries(exported):
    folder, files = exported
    assert sorted(path.name for path in folder.glob("*.tflite")) == [
        "dynamic_int8.tflite",
        "float16.tflite",
        "float32.tflite",
        "int8.tflite",
    ]
    assert files["float32"] == folder / "float32.tflite"
    assert not list(folder.rglob("*.tmp*"))


def test_int8_input_takes_raw_pixels_even_if_calibration_misses_black_and_white(
    colour_task, tmp_path
):
    model, images, _ = colour_task
    dim = np.clip(images, 50, 200)
    path = quantize.export(model, QuantizeConfig(calibration_samples=8), dim, tmp_path, ["int8"])
    input_details = Interpreter(model_path=str(path["int8"])).get_input_details()[0]
    assert input_details["quantization"] == pytest.approx((1.0, 0))


def test_weight_types_match_the_format(exported):
    _, files = exported

    def weight_types(name):
        interpreter = Interpreter(model_path=str(files[name]))
        return {detail["dtype"] for detail in interpreter.get_tensor_details()}

    assert np.float16 in weight_types("float16")
    assert np.float16 not in weight_types("float32") and np.int8 not in weight_types("float32")
    assert np.int8 in weight_types("dynamic_int8")  # conv2 has 16*16*9 >= 1024 weights.
    assert np.int8 in weight_types("int8")


def test_int8_and_float16_files_shrink_against_float32(tmp_path):
    # Wide enough that weights, not the flatbuffer's fixed overhead, make up the file.
    model = build_tiny_model(width=96)
    images, _ = colour_images(8, seed=1)
    files = quantize.export(
        model,
        QuantizeConfig(calibration_samples=4),
        images,
        tmp_path,
        ["float32", "float16", "int8"],
    )
    sizes = {name: path.stat().st_size for name, path in files.items()}
    assert sizes["int8"] <= 0.30 * sizes["float32"]
    assert sizes["float16"] <= 0.55 * sizes["float32"]


def test_sparsity_optimization_encodes_zeros_sparsely(colour_task, tmp_path):
    model, images, _ = colour_task
    pruned = keras.models.clone_model(model)
    pruned.set_weights(model.get_weights())
    prune_smallest(pruned, 0.8)
    dense = quantize.export(pruned, QuantizeConfig(), images, tmp_path, ["float32"])["float32"]
    sparse_config = QuantizeConfig(sparsity_optimization=True)
    sparse = quantize.export(pruned, sparse_config, images, tmp_path / "sparse", ["float32"])
    interpreter = Interpreter(model_path=str(sparse["float32"]))
    assert any(detail["sparsity_parameters"] for detail in interpreter.get_tensor_details())
    assert sparse["float32"].stat().st_size < 0.6 * dense.stat().st_size


def test_export_rejects_bad_requests_in_one_line(colour_task, tmp_path):
    model, images, _ = colour_task
    with pytest.raises(UserError, match="unknown export format 'int4'"):
        quantize.export(model, QuantizeConfig(), images, tmp_path, ["int4"])
    with pytest.raises(UserError, match="calibration images"):
        quantize.export(model, QuantizeConfig(), images[:0], tmp_path, ["int8"])
    assert not list(tmp_path.glob("*.tflite"))


def test_conversion_failure_is_a_user_error(tmp_path):
    inputs = keras.Input((32, 32, 3))
    # BesselI0e has no TFLite builtin kernel, and export allows no TensorFlow ops.
    outputs = keras.layers.Lambda(tf.math.bessel_i0e)(inputs)
    with pytest.raises(UserError) as caught:
        quantize.export(keras.Model(inputs, outputs), QuantizeConfig(), None, tmp_path, ["float32"])
    message = str(caught.value)
    assert "BesselI0e" in message and "float32" in message and "\n" not in message
    assert not list(tmp_path.iterdir())


def test_prepare_qat_copies_the_float_weights(colour_task):
    model, images, _ = colour_task
    qat_model = quantize.prepare_qat(model, preserve_sparsity=False)
    assert qat_model.input_shape == model.input_shape
    float_kernels, qat_kernels = kernels(model), kernels(qat_model)
    assert set(qat_kernels) == set(float_kernels)
    for name, values in float_kernels.items():
        np.testing.assert_array_equal(qat_kernels[name], values)
    expected = model.predict(images[:64].astype(np.float32), verbose=0).argmax(axis=-1)
    # Fake quantization before any QAT step changes a few borderline answers at most.
    predicted = qat_model.predict(images[:64].astype(np.float32), verbose=0).argmax(axis=-1)
    assert np.mean(predicted == expected) >= 0.9


def fit_briefly(qat_model: keras.Model, images: np.ndarray, labels: np.ndarray) -> None:
    qat_model.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
    qat_model.fit(images.astype(np.float32), labels, batch_size=32, epochs=1, verbose=0)


def test_qat_model_fits_and_exports_int8_that_matches_it(colour_task, tmp_path):
    model, images, labels = colour_task
    qat_model = quantize.prepare_qat(model, preserve_sparsity=False)
    fit_briefly(qat_model, images, labels)
    config = QuantizeConfig(calibration_samples=16)
    files = quantize.export(qat_model, config, images, tmp_path, formats=["int8"])
    assert files == {"int8": tmp_path / "int8.tflite"}
    input_details = Interpreter(model_path=str(files["int8"])).get_input_details()[0]
    # Raw pixels as they are: tfmot's learned input range was pinned to 0-255.
    assert input_details["dtype"] == np.uint8
    assert input_details["quantization"] == pytest.approx((1.0, 0))
    reference = evaluate.evaluate_keras(qat_model, images[:96], labels[:96])
    assert reference["test_accuracy"] > 0.9
    result = evaluate.evaluate_tflite(
        files["int8"],
        images[:96],
        labels[:96],
        latency_runs=2,
        reference_predictions=reference["predictions"],
    )
    assert result["agreement"] >= 0.97


def test_prune_preserving_qat_keeps_the_zeros_in_the_int8_file(colour_task, tmp_path):
    model, images, labels = colour_task
    pruned = keras.models.clone_model(model)
    pruned.set_weights(model.get_weights())
    zeros = prune_smallest(pruned, 0.7)
    qat_model = quantize.prepare_qat(pruned, preserve_sparsity=True)
    fit_briefly(qat_model, images, labels)
    # Training must not revive pruned weights.
    assert sum(int(np.count_nonzero(k == 0)) for k in kernels(qat_model).values()) >= zeros
    path = quantize.export(
        qat_model, QuantizeConfig(calibration_samples=16), images, tmp_path, ["int8"]
    )
    counts = evaluate.count_tflite_zeros(path["int8"])
    assert counts["zeros"] >= 0.95 * zeros
    assert counts["zeros_fraction"] >= 0.95 * 0.7


@pytest.mark.parametrize("name", ["float32", "int8"])
def test_short_tensor_names_keep_io_signature_and_predictions(
    colour_task, exported, name, tmp_path
):
    model, images, _ = colour_task
    config = QuantizeConfig(calibration_samples=16, short_tensor_names=True)
    short = quantize.export(model, config, images, tmp_path, [name])[name]
    original = exported[1][name]
    assert short.stat().st_size < original.stat().st_size
    interpreters = [Interpreter(model_path=str(path)) for path in (original, short)]
    for interpreter in interpreters:
        interpreter.allocate_tensors()
    before, after = (i.get_tensor_details() for i in interpreters)
    first = interpreters[0]
    io = {detail["index"] for detail in first.get_input_details() + first.get_output_details()}
    assert len(before) == len(after)
    for old, new in zip(before, after, strict=True):
        expected = old["name"] if old["index"] in io else f"t{old['index']}"
        assert new["name"] == expected
        assert new["shape"].tolist() == old["shape"].tolist()
    assert interpreters[1].get_signature_list() == interpreters[0].get_signature_list()
    outputs = []
    for interpreter in interpreters:
        runner = interpreter.get_signature_runner()
        (key,) = runner.get_input_details()
        batch = images[:1].astype(runner.get_input_details()[key]["dtype"])
        outputs.append(list(runner(**{key: batch}).values())[0])
    np.testing.assert_array_equal(outputs[1], outputs[0])
