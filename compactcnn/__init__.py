"""compactcnn: train, prune and quantize CIFAR ResNets, ship them as small TFLite models.

Importing this package selects Keras 2 (tf_keras) for TensorFlow, because
tensorflow-model-optimization only works with Keras 2. It must happen before TensorFlow is
imported anywhere, so every compactcnn module imports this package first.
"""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
# TensorFlow's C++ log lines (INFO up to a harmless cuInit ERROR on CPU machines) drown the
# progress output users care about; set TF_CPP_MIN_LOG_LEVEL=0 to see them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"
