"""Shared test set-up. Importing compactcnn first selects Keras 2 before TensorFlow loads."""

import os

import numpy as np
import pytest

import compactcnn  # noqa: F401  (must precede any TensorFlow import)


@pytest.fixture
def tiny_images():
    """64 random 32x32 RGB uint8 images with labels in 0..9, seeded."""
    generator = np.random.default_rng(0)
    images = generator.integers(0, 256, size=(64, 32, 32, 3), dtype=np.uint8)
    labels = generator.integers(0, 10, size=(64,)).astype(np.int32)
    return images, labels


@pytest.fixture(scope="session", autouse=True)
def shared_data_cache(tmp_path_factory):
    """One `$COMPACTCNN_DATA` for the whole session, inherited by every subprocess.

    The bundled sample is then decoded once and each dense float32 baseline (a conversion that
    costs as much as a short run) converted once, instead of once per end-to-end run. A test
    that checks the cache itself sets its own folder with monkeypatch.
    """
    folder = tmp_path_factory.mktemp("compactcnn-data")
    previous = os.environ.get("COMPACTCNN_DATA")
    os.environ["COMPACTCNN_DATA"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("COMPACTCNN_DATA", None)
    else:
        os.environ["COMPACTCNN_DATA"] = previous


@pytest.fixture(autouse=True)
def float32_policy_after_each_test():
    """Restores Keras' global float32 policy after a test built a training in-process.

    `run.build_training` sets the policy the config asks for, and `precision: auto` (the
    default) asks for mixed_bfloat16 on a CPU with AVX512-BF16: without this, the next test in
    the same worker would build its models in bfloat16.
    """
    yield
    import tf_keras as keras

    keras.mixed_precision.set_global_policy("float32")
