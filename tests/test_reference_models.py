"""The reference models of the field: MLPerf Tiny's ResNet-8 and MobileNetV1 0.25, MobileNetV2."""

import json

import numpy as np
import pytest
import tf_keras as keras
from ai_edge_litert.interpreter import Interpreter

from compactcnn import compat, evaluate, run
from compactcnn.config import load_config
from compactcnn.errors import UserError
from compactcnn.models import create_model, list_models
from compactcnn.models.registry import default_input_shape


@pytest.mark.parametrize(
    ("name", "classes", "options", "params", "input_shape"),
    [
        # mlcommons/tiny keras_model.py resnet_v1_eembc: 78,666 parameters.
        ("resnet8_tiny", 10, {}, 78_666, (32, 32, 3)),
        # The visual-wake-words reference: 221,794 parameters for person / no person.
        ("mobilenet_v1_025", 2, {}, 221_794, (96, 96, 3)),
        # Keras applications' MobileNetV2 without its top (2,257,984) + a 10-class dense.
        ("mobilenet_v2", 10, {}, 2_270_794, (32, 32, 3)),
        ("mobilenet_v2", 10, {"width": 0.35}, 423_018, (32, 32, 3)),
    ],
)
def test_reference_architectures_match_their_parameter_counts(
    name, classes, options, params, input_shape
):
    assert name in list_models()
    assert default_input_shape(name) == input_shape
    model = create_model(name, classes, **options)
    assert model.count_params() == params
    assert model.input_shape == (None, *input_shape)
    assert isinstance(model.layers[1], keras.layers.Rescaling)  # raw pixels in
    assert model.layers[-1].dtype == "float32"


def test_reference_models_take_other_sizes():
    assert create_model("mobilenet_v1_025", 2, (48, 64, 3)).output_shape == (None, 2)
    # MobileNetV2 keeps full resolution through its stem and first stride-2 stage below 96 pixels.
    small = create_model("mobilenet_v2", 10, (32, 32, 3), width=0.35)
    assert small.get_layer("head_conv").output_shape[1:3] == (4, 4)
    large = create_model("mobilenet_v2", 10, (96, 96, 3), width=0.35)
    assert large.get_layer("head_conv").output_shape[1:3] == (3, 3)
    with pytest.raises(UserError, match="model 'resnet8_tiny' has no option model.width"):
        create_model("resnet8_tiny", 10, width=0.5)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "size", "extra"),
    [
        ("resnet8_tiny", 16, []),
        # Prune-preserving QAT of depthwise kernels (quantize.KeepZeros) is tested on a small
        # model in test_depthwise_compression.py; its graph would double this run's time.
        ("mobilenet_v1_025", 32, []),
        ("mobilenet_v2", 32, ["model.width=0.35"]),
    ],
)
def test_reference_model_trains_prunes_and_exports_int8(tmp_path, name, size, extra):
    """A tiny run of each: synthetic images, 50% constant pruning, int8 file with its zeros."""
    qat = "quantize.qat=true" in extra
    config = load_config(
        None,
        [
            "data.name=synthetic",
            "data.synthetic_size=48",
            "data.synthetic_classes=2",
            f"data.image_size=[{size}, {size}]",
            f"model.name={name}",
            "train.batch_size=16",
            "train.epochs=2",
            "train.bn_recalibration_batches=2",
            "prune.schedule=constant",
            "prune.final_sparsity=0.5",
            "prune.end_epoch=1",
            "prune.frequency=1",
            "quantize.formats=[int8]",
            "quantize.calibration_samples=16",
            "output.latency_runs=2",
            "output.tensorboard=false",
            *extra,
        ],
    )
    metrics = run.run(config, tmp_path / "run", verbose=0)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == metrics
    assert metrics["model"]["source"] == "registered"
    assert metrics["run"]["image_size"] == [size, size]
    assert metrics["pruning"]["overall_sparsity"] == pytest.approx(0.5, abs=0.01)
    path = tmp_path / "run" / "tflite" / "int8.tflite"
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    assert detail["dtype"] == np.uint8 and list(detail["shape"]) == [1, size, size, 3]
    operators = {op["op_name"] for op in compat.tflite_operators(interpreter)}
    assert "CONV_2D" in operators
    if name.startswith("mobilenet"):
        assert "DEPTHWISE_CONV_2D" in operators
    zeros = evaluate.count_tflite_zeros(path)
    assert zeros["zeros_fraction"] == pytest.approx(0.5, abs=0.01)
    # Six steps leave a deep model's classes nearly tied, so int8 rounding may flip them: the
    # agreement of a trained model is checked on the user model (test_user_model_end_to_end).
    assert 0.0 <= metrics["tflite"]["int8"]["agreement"] <= 1.0
    assert metrics["tflite"]["int8"].get("qat", False) is qat
