"""Every private or version-pinned API compactcnn relies on, in one place.

tfmot, tf_keras and LiteRT expose no public name for a few things we need (a wrapper class to
recognise wrapped layers, a hook to move a backup, the operators of a loaded TFLite file). Each use
lives here, checked against the versions below at import and covered by tests/test_compat.py, so
an upgrade breaks in one module with a clear message instead of deep inside a run. The model is
tfmot's own `python/core/keras/compat.py`.
"""

from __future__ import annotations

import copy
import functools
from importlib import metadata
from typing import Any

import tensorflow as tf
import tf_keras as keras

# (distribution, the version prefix every item below was checked against).
CHECKED_VERSIONS = (
    ("tensorflow-model-optimization", "0.8.1"),
    ("tf_keras", "2.21."),
    ("ai-edge-litert", "2.3.0"),
)


def check_versions(checked: tuple[tuple[str, str], ...] = CHECKED_VERSIONS) -> None:
    """Raises ImportError when an installed version differs from the one checked here.

    Raises:
        ImportError: Naming the package, both versions and how to install the checked one.
    """
    for package, prefix in checked:
        try:
            installed = metadata.version(package)
        except metadata.PackageNotFoundError:
            raise ImportError(f"{package} is not installed; run: pip install -e .") from None
        if not installed.startswith(prefix):
            raise ImportError(
                f"compactcnn was checked against {package} {prefix}*, found {installed}; "
                "install the pinned versions with: pip install -e ."
            )


check_versions()

import tensorflow_model_optimization as tfmot  # noqa: E402

# The imports below are private modules: tfmot exports no public name for its wrapper classes,
# though its own callbacks and strip functions test layers against exactly these. Nor for the
# enum of the clustering wrapper's `cluster_gradient_aggregation` argument.
from tensorflow_model_optimization.python.core.clustering.keras.cluster_config import (  # noqa: E402
    GradientAggregation,
)
from tensorflow_model_optimization.python.core.clustering.keras.cluster_wrapper import (  # noqa: E402
    ClusterWeights,
)
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit.default_8bit_quantize_registry import (  # noqa: E402, E501
    Default8BitQuantizeRegistry,
)
from tensorflow_model_optimization.python.core.quantization.keras.quantize_layer import (  # noqa: E402
    QuantizeLayer,
)
from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import (  # noqa: E402
    PruneLowMagnitude,
)

# Private too: tf_keras has no public way to read an AutoCastVariable in its own dtype inside a
# layer's call, which casts every one it reads to the layer's compute dtype.
from tf_keras.src.mixed_precision.autocast_variable import (  # noqa: E402
    enable_auto_cast_variables,
)

__all__ = [
    "BackupAfterLogging",
    "ClusterPreserveQuantizeScheme",
    "ClusterWeights",
    "GradientAggregation",
    "MixedPrecisionClusterWeights",
    "MixedPrecisionPruneLowMagnitude",
    "PruneLowMagnitude",
    "QuantizeLayer",
    "qat_supports",
    "set_input_quantizer_range",
    "tflite_operators",
]

# Names of a `QuantizeLayer`'s range variables: `<layer>/<layer>_min:0` and `..._max:0`.
_QUANTIZER_MIN_SUFFIX = "_min:0"
_QUANTIZER_MAX_SUFFIX = "_max:0"


def set_input_quantizer_range(model: keras.Model, low: float, high: float) -> int:
    """Sets the range of every `QuantizeLayer` (tfmot's input quantizer) of a QAT model.

    Returns:
        How many range variables were set (2 per input quantizer).
    """
    assigned = 0
    for layer in model.layers:
        if not isinstance(layer, QuantizeLayer):
            continue
        for weight in layer.weights:
            if weight.name.endswith(_QUANTIZER_MIN_SUFFIX):
                weight.assign(low)
                assigned += 1
            elif weight.name.endswith(_QUANTIZER_MAX_SUFFIX):
                weight.assign(high)
                assigned += 1
    return assigned


def qat_supports(layer: keras.layers.Layer) -> bool:
    """Whether tfmot's default 8-bit QAT scheme quantizes a layer of this class.

    tfmot only says so by failing inside `quantize_apply`, after the run has trained; its
    registry's own `supports` answers before anything is written.
    """
    return Default8BitQuantizeRegistry().supports(layer)


class ClusterPreserveQuantizeScheme(
    tfmot.experimental.combine.Default8BitClusterPreserveQuantizeScheme
):
    """tfmot's (prune- and) cluster-preserving QAT scheme, with one weight quantizer per layer.

    tfmot's registry hands every Conv2D the same weight quantizer object (and every Dense
    another), and that object turns its own `preserve_sparsity` off, for every layer, when it
    builds a kernel without zeros. Measured: with a dense first convolution, a 70%-sparse second
    one came out of 3 QAT epochs without a zero. A copy per layer keeps that to the dense layer
    (the copy's `weight_quantizer` attribute is what tfmot's own registry sets).
    """

    def get_quantize_registry(self):
        registry = super().get_quantize_registry()
        shared = registry.get_quantize_config

        def get_quantize_config(layer):
            config = shared(layer)
            if hasattr(config, "weight_quantizer"):
                config.weight_quantizer = copy.copy(config.weight_quantizer)
            return config

        registry.get_quantize_config = get_quantize_config
        return registry


def _in_float32(method):
    """`method` with autocasting off: the variables it reads come in their own dtype (float32)."""

    @functools.wraps(method)
    def run(*args, **kwargs):
        with enable_auto_cast_variables(None):
            return method(*args, **kwargs)

    return run


# Why these two subclasses (tfmot 0.8.1, tf_keras 2.21): tfmot's wrappers call their inner
# layer's `call` directly, not the layer, so the inner layer's own policy never casts its inputs
# or its kernel: a wrapper computes in the wrapper's compute dtype. Given the inner layer's mixed
# policy, a wrapper computes in 16 bits as any layer would, but the autocasting then also reaches
# tfmot's own bookkeeping: the mask update and `kernel * mask` read the kernel in bfloat16 and
# wrote the rounded product back into the float32 master kernel at every step (measured), and the
# clustering wrapper's centroids became bfloat16 (or its build failed). Both wrappers run that
# bookkeeping with autocasting off instead, on the float32 master weights.


class MixedPrecisionPruneLowMagnitude(PruneLowMagnitude):
    """tfmot's pruning wrapper, computing in its policy; masks and kernel stay exact float32.

    Give it its inner layer's policy (`dtype=layer.dtype_policy`): Keras then casts the inputs
    to the compute dtype and reads the (masked) kernel in it, while the threshold, the mask and
    `kernel * mask` are computed in float32.
    """

    def build(self, input_shape):
        super().build(input_shape)
        pruning = self.pruning_obj
        pruning.conditional_mask_update = _in_float32(pruning.conditional_mask_update)
        pruning.weight_mask_op = _in_float32(pruning.weight_mask_op)


# tfmot names each wrapper after its class (`prune_low_magnitude_<layer>`): keep that name.
MixedPrecisionPruneLowMagnitude.__name__ = PruneLowMagnitude.__name__


class MixedPrecisionClusterWeights(ClusterWeights):
    """tfmot's clustering wrapper, computing in its policy; centroids stay float32.

    Give it its inner layer's policy (`dtype=layer.dtype_policy`). The centroids (at build) and
    the clustered kernels (at every call) are computed from the float32 kernels in float32;
    tfmot hands the clustered kernels to the layer as tensors, which autocasting does not reach,
    so they are cast to the compute dtype here, at use.
    """

    build = _in_float32(ClusterWeights.build)

    def call(self, inputs, training=None, **kwargs):
        _in_float32(self.update_clustered_weights_associations)()
        for name in self.original_clusterable_weights:
            clustered = self.get_weight_from_layer(name)
            self.set_weight_to_layer(name, tf.cast(clustered, self.layer.compute_dtype))
        return self.layer.call(inputs, **kwargs)  # as tfmot's own call


def tflite_operators(interpreter: Any) -> list[dict[str, Any]]:
    """The operators of a LiteRT interpreter: `op_name`, `inputs`, `outputs` per operator.

    LiteRT has no public way to list a model's operators and their tensors; its own
    analyzer uses `_get_ops_details`.
    """
    return interpreter._get_ops_details()


class BackupAfterLogging(keras.callbacks.BackupAndRestore):
    """BackupAndRestore whose step-count backups never fall on the gap before an epoch's row.

    With `save_freq` in steps, Keras backs up the last step of an epoch at that step's end,
    before validation and before CSVLogger writes the epoch's row: a kill in between resumes at
    the next epoch and the row is lost. That backup is moved to the epoch end instead, after the
    callbacks placed before this one (CSVLogger) have run. It overrides the private `_backup`,
    the one method through which tf_keras takes every backup.
    """

    def _backup(self, epoch, batch=0):
        steps = self.params.get("steps")
        if self.save_freq != "epoch" and steps and batch == steps - 1:
            self._epoch_end_backup = (epoch, batch)
            return
        super()._backup(epoch, batch)

    def on_epoch_end(self, epoch, logs=None):
        pending = getattr(self, "_epoch_end_backup", None)
        if pending is not None:
            self._epoch_end_backup = None
            super()._backup(*pending)
        super().on_epoch_end(epoch, logs)
