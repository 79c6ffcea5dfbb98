"""Sparsity-preserving weight clustering with tfmot (Han et al. 2016, "Deep Compression").

Every kernel of the Conv2D, DepthwiseConv2D, SeparableConv2D and Dense layers (see
`compactcnn.kernels`) shares `number_of_clusters` values, one of them fixed at zero, so a pruned
model keeps its zeros. In the int8 export the per-channel scales cancel the folded BatchNorm
factor, so each output channel holds at most `number_of_clusters - 1` non-zero codes. A layer holds
more (its channels have different largest values, hence different scales): on a 70%-sparse
ResNet-20 with 16 clusters about 5 bits of entropy per non-zero code instead of 7, which is what
gzip saves.
"""

from __future__ import annotations

import numpy as np
import tensorflow_model_optimization as tfmot
import tf_keras as keras

from compactcnn import compat, kernels
from compactcnn.compat import ClusterWeights
from compactcnn.config import QuantizeConfig
from compactcnn.errors import UserError
from compactcnn.prune import PRUNABLE_LAYER_TYPES

_clustering = tfmot.clustering.keras
# Evenly spaced centroids keep the rare large weights, which matter most (Han et al. 2016); on a
# 70%-sparse ResNet-20 they kept accuracy as well as k-means++ and gzipped smaller than
# density-based ones. k-means++ also fails on a kernel with fewer weights of one sign than
# centroids for that sign.
CENTROID_INITIALIZATION = _clustering.CentroidInitialization.LINEAR
# config.CLUSTER_GRADIENTS, as tfmot names them.
_GRADIENT_AGGREGATIONS = {
    "sum": compat.GradientAggregation.SUM,
    "average": compat.GradientAggregation.AVG,
}
# With the zero centroid fixed, 2 clusters would leave one shared value: tfmot refuses it.
MINIMUM_CLUSTERS = 3


class _ClusterableDepthwiseConv2D(keras.layers.DepthwiseConv2D, _clustering.ClusterableLayer):
    """DepthwiseConv2D with its kernel named for clustering (tfmot's registry lists none).

    Lives only inside the clustered copy: `strip` returns it, and only its weights are copied
    back into the plain model.
    """

    def get_clusterable_weights(self):
        return [("depthwise_kernel", self.depthwise_kernel)]


class _ClusterableSeparableConv2D(keras.layers.SeparableConv2D, _clustering.ClusterableLayer):
    """SeparableConv2D with both kernels named for clustering (tfmot's registry: pointwise only)."""

    def get_clusterable_weights(self):
        return [
            ("depthwise_kernel", self.depthwise_kernel),
            ("pointwise_kernel", self.pointwise_kernel),
        ]


_CLUSTERABLE_COPIES = {
    keras.layers.DepthwiseConv2D: _ClusterableDepthwiseConv2D,
    keras.layers.SeparableConv2D: _ClusterableSeparableConv2D,
}


def skipped_layers(model: keras.Model, number_of_clusters: int) -> dict[str, str]:
    """The kernel layers clustering leaves alone, and why.

    Returns:
        {layer name: reason}: kernels with no more weights than clusters (nothing to share).

    Raises:
        UserError: On a layer with kernels tfmot cannot wrap (a subclass of a kernel layer).
    """
    skipped = {}
    for layer in model.layers:
        unwrappable = kernels.unwrappable_reason(layer)
        if unwrappable:
            raise UserError(
                f"layer '{layer.name}' ({unwrappable}) has kernels that tfmot cannot wrap for "
                f"clustering; build it from {kernels.KERNEL_LAYER_NAMES} itself, or set "
                "quantize.weight_clusters=0"
            )
        if kernels.is_kernel_layer(layer):
            smallest = min(
                int(kernel.shape.num_elements()) for kernel in kernels.kernel_weights(layer)
            )
            if smallest <= number_of_clusters:
                skipped[layer.name] = (
                    f"cluster: a kernel of {smallest} weights, not more than the "
                    f"{number_of_clusters} clusters"
                )
    return skipped


def prepare(
    model: keras.Model,
    number_of_clusters: int,
    gradient: str = QuantizeConfig.cluster_gradient,
) -> keras.Model:
    """Wraps the model's kernel layers for sparsity-preserving clustering.

    The centroids are initialized from the model's own kernels, one set per kernel. (tfmot's
    per-channel clustering silently skips a Conv2D without bias, i.e. every ResNet convolution.)
    Zero weights, and the few others that start in the zero cluster, stay zero through
    fine-tuning (on a dense model that prunes the weights nearest zero). A layer with a kernel
    of no more weights than clusters is left unwrapped (`skipped_layers`). Every other layer
    (the `Rescaling` input, BatchNorm) is copied as it is, with its weights.

    Args:
        model: A Functional model, pruning stripped, trained (or fine-tuned). Under a mixed
            policy its clustered layers compute in 16 bits; kernels and centroids stay float32.
        number_of_clusters: Shared values per kernel, zero included (3 to 256).
        gradient: `sum` or `average`: a shared value's gradient from those of its weights
            (tfmot's `cluster_gradient_aggregation`).

    Returns:
        An uncompiled model with `ClusterWeights` wrappers and the same outputs as `model` up to
        the clustering of its kernels. Compile and fit it at a low learning rate, then `strip`.

    Raises:
        UserError: When `number_of_clusters` is out of range, a layer has kernels tfmot cannot
            wrap, or the model has nothing to cluster.
    """
    if not MINIMUM_CLUSTERS <= number_of_clusters <= 256:
        raise UserError(
            f"quantize.weight_clusters must be 0 (off) or {MINIMUM_CLUSTERS} to 256 with the "
            f"zero cluster kept, got {number_of_clusters}"
        )
    skipped = skipped_layers(model, number_of_clusters)

    def clone_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
        if not kernels.is_kernel_layer(layer) or layer.name in skipped:
            return layer.__class__.from_config(layer.get_config())
        copy = _CLUSTERABLE_COPIES.get(type(layer), type(layer)).from_config(layer.get_config())
        # The wrapper computes its centroids from the kernel when it is built, so the copy
        # must hold the trained weights before it is wrapped (clone_model builds it later).
        copy.build(layer.input_shape)
        copy.set_weights(layer.get_weights())
        # tfmot's wrapper (what `cluster_weights` returns for one layer), clustering in float32
        # so it can take the layer's own policy: under a mixed one it computes in 16 bits.
        return compat.MixedPrecisionClusterWeights(
            copy,
            number_of_clusters=number_of_clusters,
            cluster_centroids_init=CENTROID_INITIALIZATION,
            preserve_sparsity=True,
            cluster_gradient_aggregation=_GRADIENT_AGGREGATIONS[gradient],
            dtype=copy.dtype_policy,
        )

    clustered = keras.models.clone_model(model, clone_function=clone_layer)
    if not any(isinstance(layer, ClusterWeights) for layer in clustered.layers):
        raise UserError(
            f"no {kernels.KERNEL_LAYER_NAMES} kernel of {model.name} has more than "
            f"{number_of_clusters} weights to cluster; lower quantize.weight_clusters"
        )
    # Wrappers are renamed (cluster_<name>) and already hold their weights; the rest need them.
    copies = {layer.name: layer for layer in clustered.layers}
    for layer in model.layers:
        if layer.weights and layer.name in copies:
            copies[layer.name].set_weights(layer.get_weights())
    return clustered


def strip(model: keras.Model) -> keras.Model:
    """Removes the clustering wrappers, keeping the clustered kernels.

    Returns:
        A Functional model with the layers, names and weight order of the unclustered model, so
        `float_model.set_weights(strip(model).get_weights())` copies it into a fresh build.
    """
    return _clustering.strip_clustering(model)


def distinct_values_report(model: keras.Model) -> dict:
    """Counts the distinct non-zero values of each kernel of each kernel layer.

    Args:
        model: A clustered (wrapped) or stripped model, or any unclustered one.

    Returns:
        `{"max_distinct_values": int, "layers": {name: int}}`: after clustering with N clusters
        every count is at most N - 1 (the zero cluster is not counted; a SeparableConv2D counts
        its larger kernel). Plain ints.
    """
    if any(isinstance(layer, ClusterWeights) for layer in model.layers):
        model = strip(model)
    counts = {
        layer.name: max(
            int(np.unique(values[values != 0]).size)
            for kernel in kernels.kernel_weights(layer)
            for values in [kernel.numpy()]
        )
        for layer in model.layers
        if isinstance(layer, PRUNABLE_LAYER_TYPES)
    }
    return {"max_distinct_values": max(counts.values(), default=0), "layers": counts}
