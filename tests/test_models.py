import numpy as np
import pytest
import tf_keras as keras

from compactcnn.errors import UserError
from compactcnn.models import create_model, list_models


@pytest.mark.parametrize(
    ("name", "params"),
    [("resnet20", 274_042), ("resnet32", 469_370), ("resnet44", 664_698)],
)
def test_resnet_depths_and_sizes(name, params):
    model = create_model(name, num_classes=10)
    assert model.count_params() == params
    depth = int(name.removeprefix("resnet"))
    weighted = [
        layer
        for layer in model.layers
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))
        and "shortcut" not in layer.name
    ]
    assert len(weighted) == depth  # 6n+2 weighted layers on the main path


def test_registry_lists_all_depths_and_rejects_unknown():
    assert {"resnet20", "resnet32", "resnet44", "resnet56", "resnet110"} <= set(list_models())
    with pytest.raises(UserError, match="unknown model 'resnet21'"):
        create_model("resnet21", num_classes=10)


def test_model_takes_raw_pixels_and_normalizes_inside():
    model = create_model("resnet20", num_classes=100)
    assert isinstance(model.layers[1], keras.layers.Rescaling)
    normalize = keras.Model(model.input, model.get_layer("normalize").output)
    pixels = np.array([[[[0, 127.5, 255]]]], dtype=np.float32) * np.ones((1, 32, 32, 1))
    out = normalize(pixels).numpy()
    np.testing.assert_allclose(out[0, 0, 0], [-1.0, 0.0, 1.0], atol=1e-6)
    probabilities = model(pixels).numpy()
    assert probabilities.shape == (1, 100)
    np.testing.assert_allclose(probabilities.sum(), 1.0, rtol=1e-5)
    assert model.layers[-1].dtype == "float32"
