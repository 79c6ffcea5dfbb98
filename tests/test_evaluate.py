"""Tests of compactcnn.evaluate on tiny models whose right answers are known."""

import gzip

import numpy as np
import pytest
import tf_keras as keras
from ai_edge_litert.interpreter import Interpreter

from compactcnn import evaluate, quantize
from compactcnn.config import QuantizeConfig
from compactcnn.errors import UserError
from tests.tiny import build_tiny_model, colour_images


def zero_kernels(model: keras.Model, fraction: float, seed: int = 0) -> tuple[int, int]:
    """Sets `fraction` of every kernel to zero and the rest far from zero; returns (size, zeros).

    Kept weights have magnitudes 0.5-1.0, so no quantizer can round them to zero and the exact
    number of zeros in every format is known.
    """
    generator = np.random.default_rng(seed)
    size = zeros = 0
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            shape = layer.kernel.shape
            values = generator.choice([-1.0, 1.0], shape) * generator.uniform(0.5, 1.0, shape)
            values[generator.random(shape) < fraction] = 0.0
            layer.kernel.assign(values.astype(np.float32))
            size += values.size
            zeros += int(np.count_nonzero(values == 0))
    return size, zeros


@pytest.fixture(scope="module")
def colour_task():
    """A tiny model trained to tell the colours apart, with held-out test images."""
    keras.utils.set_random_seed(0)
    model = build_tiny_model()
    train_images, train_labels = colour_images(256, seed=0)
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    model.fit(train_images.astype(np.float32), train_labels, batch_size=32, epochs=3, verbose=0)
    test_images, test_labels = colour_images(96, seed=1)
    return model, train_images, test_images, test_labels


@pytest.fixture(scope="module")
def colour_files(colour_task, tmp_path_factory):
    """float32 and int8 (uint8 io and int8 io) files of the trained colour model."""
    model, train_images, _, _ = colour_task
    folder = tmp_path_factory.mktemp("colour")
    files = quantize.export(
        model, QuantizeConfig(calibration_samples=32), train_images, folder, ["float32", "int8"]
    )
    signed = quantize.export(
        model,
        QuantizeConfig(calibration_samples=32, int8_io="int8"),
        train_images,
        folder / "signed",
        ["int8"],
    )
    files["int8_signed_io"] = signed["int8"]
    return files


def test_round_trip_gives_keras_top1(colour_task, colour_files):
    model, _, images, labels = colour_task
    keras_result = evaluate.evaluate_keras(model, images, labels)
    assert keras_result["test_accuracy"] > 0.9  # The toy task was learned.
    for name in ("float32", "int8", "int8_signed_io"):
        result = evaluate.evaluate_tflite(
            colour_files[name],
            images,
            labels,
            latency_runs=3,
            reference_predictions=keras_result["predictions"],
        )
        minimum = 1.0 if name == "float32" else 0.98
        assert result["agreement"] >= minimum, name
        assert abs(result["accuracy"] - keras_result["test_accuracy"]) <= 1.0 - minimum, name


def test_integer_input_uses_the_files_scale_and_zero_point(colour_task, colour_files, monkeypatch):
    model, _, images, labels = colour_task
    path = colour_files["int8_signed_io"]
    details = Interpreter(model_path=str(path)).get_input_details()[0]
    # The calibration pins the input range to 0-255: int8 pixels are shifted by 128.
    assert details["dtype"] == np.int8
    assert details["quantization"] == pytest.approx((1.0, -128))
    reference = evaluate.evaluate_keras(model, images, labels)["predictions"]
    right = np.argmax(evaluate.predict_tflite(path, images), axis=-1)
    assert np.mean(right == reference) >= 0.98

    def wrong_way_round(batch, input_details):
        scale, zero_point = input_details["quantization"]
        return np.clip(np.round(batch * scale - zero_point), -128, 127).astype(np.int8)

    monkeypatch.setattr(evaluate, "quantize_input", wrong_way_round)
    wrong = np.argmax(evaluate.predict_tflite(path, images), axis=-1)
    assert np.mean(wrong == reference) < 0.6


def test_quantize_input_follows_the_tflite_formula():
    signed = {"dtype": np.int8, "quantization": (2.0, -100)}
    pixels = np.array([0, 10, 255], np.uint8)
    # q = round(x / scale) + zero_point, clipped: 255 / 2 = 127.5 rounds to even 128.
    np.testing.assert_array_equal(evaluate.quantize_input(pixels, signed), [-100, -95, 28])
    unsigned = {"dtype": np.uint8, "quantization": (0.5, 3)}
    np.testing.assert_array_equal(evaluate.quantize_input(pixels, unsigned), [3, 23, 255])
    floats = {"dtype": np.float32, "quantization": (0.0, 0)}
    assert evaluate.quantize_input(pixels, floats).dtype == np.float32


def test_integer_output_is_dequantized_to_probabilities(colour_task, colour_files):
    model, _, images, _ = colour_task
    expected = model.predict(images.astype(np.float32), verbose=0)
    for name in ("int8", "int8_signed_io"):
        probabilities = evaluate.predict_tflite(colour_files[name], images, batch_size=40)
        assert probabilities.shape == expected.shape
        np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=0.03)
        np.testing.assert_allclose(probabilities, expected, atol=0.06)


@pytest.fixture(scope="module")
def zeroed_files(tmp_path_factory):
    """Files of a model with 70% of its kernels set to zero, dense and sparse-encoded."""
    keras.utils.set_random_seed(1)
    model = build_tiny_model(width=32)  # conv2 has 9216 weights: dynamic_int8 quantizes it.
    size, zeros = zero_kernels(model, 0.7)
    images, _ = colour_images(16, seed=2)
    folder = tmp_path_factory.mktemp("zeroed")
    files = quantize.export(model, QuantizeConfig(calibration_samples=8), images, folder)
    sparse = quantize.export(
        model,
        QuantizeConfig(calibration_samples=8, sparsity_optimization=True),
        images,
        folder / "sparse",
        ["float16", "int8"],
    )
    files.update({f"sparse_{name}": path for name, path in sparse.items()})
    return files, size, zeros


@pytest.mark.parametrize(
    "name", ["float32", "float16", "dynamic_int8", "int8", "sparse_float16", "sparse_int8"]
)
def test_count_tflite_zeros_finds_the_zeroed_kernels(zeroed_files, name):
    files, size, zeros = zeroed_files
    assert zeros / size == pytest.approx(0.7, abs=0.02)
    counts = evaluate.count_tflite_zeros(files[name])
    assert counts["weights"] == size
    assert counts["zeros"] == zeros
    assert counts["zeros_fraction"] == pytest.approx(zeros / size)


def test_weight_entropy_is_that_of_the_kernels_values(tmp_path):
    """Kernels of 0 and +-1 only: per channel, int8 codes 0 and +-127 map one to one onto them."""
    keras.utils.set_random_seed(2)
    model = build_tiny_model(width=16)
    generator = np.random.default_rng(4)
    expected_bits, size = 0.0, 0
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            shape = tuple(layer.kernel.shape)
            values = generator.choice([0.0, 0.0, 0.0, 1.0, -1.0], shape).astype(np.float32)
            values[..., 0] = 1.0  # every channel's largest magnitude is 1: its code is 127
            layer.kernel.assign(values)
            _, counts = np.unique(values, return_counts=True)
            expected_bits += -(counts * np.log2(counts / values.size)).sum()
            size += values.size
    images, _ = colour_images(16, seed=5)
    config = QuantizeConfig(calibration_samples=8)
    files = quantize.export(model, config, images, tmp_path, ["int8"])
    entropy = evaluate.weight_entropy(files["int8"])
    assert entropy["weight_bytes"] == size  # one byte per int8 code
    assert entropy["entropy_bytes"] == round(expected_bits / 8)
    assert entropy["entropy_bytes"] < size / 4  # ~1.4 bits of 8


def test_sparse_files_hold_sparse_tensors_and_still_run(zeroed_files):
    files, _, _ = zeroed_files
    for name in ("sparse_float16", "sparse_int8"):
        interpreter = Interpreter(model_path=str(files[name]))
        assert any(detail["sparsity_parameters"] for detail in interpreter.get_tensor_details())
    images, _ = colour_images(4, seed=3)
    dense = evaluate.predict_tflite(files["int8"], images)
    # Sparse int8 cannot use XNNPACK; the builtin kernels must give the same answer.
    np.testing.assert_allclose(evaluate.predict_tflite(files["sparse_int8"], images), dense)


def test_evaluate_tflite_reports_every_metric(colour_task, colour_files):
    _, _, images, labels = colour_task
    path = colour_files["int8"]
    result = evaluate.evaluate_tflite(path, images[:10], labels[:10], threads=1, latency_runs=5)
    assert set(result) == {
        "accuracy",
        "bytes",
        "gzip_bytes",
        "latency_ms",
        "threads",
        "agreement",
        "zeros_fraction",
        "input_dtype",
    }
    assert result["bytes"] == path.stat().st_size
    assert 0 < result["gzip_bytes"] < result["bytes"]
    assert 0 < result["latency_ms"] < 1000
    assert result["threads"] == 1
    assert result["agreement"] is None
    assert result["input_dtype"] == "uint8"
    assert result["zeros_fraction"] == evaluate.count_tflite_zeros(path)["zeros_fraction"]
    float_result = evaluate.evaluate_tflite(colour_files["float32"], images[:4], labels[:4], 1, 2)
    assert float_result["input_dtype"] == "float32"


def test_evaluate_keras_reports_cross_entropy_of_the_probabilities(colour_task):
    model, _, images, labels = colour_task
    result = evaluate.evaluate_keras(model, images, labels, batch_size=32)
    probabilities = model.predict(images.astype(np.float32), verbose=0)
    expected_loss = -np.mean(np.log(probabilities[np.arange(len(labels)), labels]))
    assert result["test_loss"] == pytest.approx(expected_loss, rel=1e-4)
    np.testing.assert_array_equal(result["predictions"], probabilities.argmax(axis=-1))
    assert result["test_accuracy"] == pytest.approx(np.mean(result["predictions"] == labels))


def test_file_sizes_counts_bytes_and_gzip_level_9(tmp_path):
    path = tmp_path / "model.tflite"
    content = bytes(10_000) + np.random.default_rng(0).bytes(1000)
    path.write_bytes(content)
    sizes = evaluate.file_sizes(path)
    assert sizes == {"bytes": 11_000, "gzip_bytes": len(gzip.compress(content, compresslevel=9))}
    assert sizes["gzip_bytes"] < 1200


def test_load_model_file_reads_keras_and_tflite(colour_task, colour_files, tmp_path):
    model, _, images, _ = colour_task
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = evaluate.load_model_file(path)
    np.testing.assert_allclose(
        loaded.predict(images[:4].astype(np.float32), verbose=0),
        model.predict(images[:4].astype(np.float32), verbose=0),
        rtol=1e-6,
    )
    interpreter = evaluate.load_model_file(colour_files["int8"])
    assert interpreter.get_input_details()[0]["dtype"] == np.uint8


@pytest.mark.parametrize(
    "name, content",
    [
        ("truncated.tflite", "half"),
        ("garbage.tflite", b"not a flatbuffer" * 100),
        ("empty.tflite", b""),
        ("garbage.keras", b"junk"),
        ("missing.tflite", None),
        ("model.h5", b"junk"),
    ],
)
def test_load_model_file_rejects_damaged_files_in_one_line(colour_files, tmp_path, name, content):
    path = tmp_path / name
    if content == "half":
        whole = colour_files["int8"].read_bytes()
        content = whole[: len(whole) // 2]
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError) as caught:
        evaluate.load_model_file(path)
    message = str(caught.value)
    assert name in message and "\n" not in message
    if name.endswith(".tflite"):
        with pytest.raises(UserError):
            evaluate.count_tflite_zeros(path)
