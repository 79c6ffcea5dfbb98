"""Sparsity-preserving weight clustering with tfmot (Han et al. 2016, "Deep Compression").

Every Conv2D and Dense kernel shares `number_of_clusters` values, one of them fixed at zero, so a
pruned model keeps its zeros. In the int8 export the per-channel scales cancel the folded BatchNorm
factor, so each output channel holds at most `number_of_clusters - 1` non-zero codes. A layer holds
more (its channels have different largest values, hence different scales): on a 70%-sparse
ResNet-20 with 16 clusters about 5 bits of entropy per non-zero code instead of 7, which is what
gzip saves.
"""

from __future__ import annotations

import numpy as np
import tensorflow_model_optimization as tfmot
import tf_keras as keras

from compactcnn.compat import ClusterWeights
from compactcnn.errors import UserError
from compactcnn.prune import PRUNABLE_LAYER_TYPES

_clustering = tfmot.clustering.keras
# Evenly spaced centroids keep the rare large weights, which matter most (Han et al. 2016); on a
# 70%-sparse ResNet-20 they kept accuracy as well as k-means++ and gzipped smaller than
# density-based ones. k-means++ also fails on a kernel with fewer weights of one sign than
# centroids for that sign.
CENTROID_INITIALIZATION = _clustering.CentroidInitialization.LINEAR
# With the zero centroid fixed, 2 clusters would leave one shared value: tfmot refuses it.
MINIMUM_CLUSTERS = 3


def prepare(model: keras.Model, number_of_clusters: int) -> keras.Model:
    """Wraps the model's Conv2D and Dense layers for sparsity-preserving clustering.

    The centroids are initialized from the model's own kernels, one set per layer. (tfmot's
    per-channel clustering silently skips a Conv2D without bias, i.e. every ResNet convolution.)
    Zero weights, and the few others that start in the zero cluster, stay zero through
    fine-tuning (on a dense model that prunes the weights nearest zero). tfmot leaves a Conv2D
    with no more weights than clusters unwrapped. Every other layer (the `Rescaling` input,
    BatchNorm) is copied as it is, with its weights.

    Args:
        model: A Functional float32 model, pruning stripped, trained (or fine-tuned).
        number_of_clusters: Shared values per kernel, zero included (3 to 256).

    Returns:
        An uncompiled model with `ClusterWeights` wrappers and the same outputs as `model` up to
        the clustering of its kernels. Compile and fit it at a low learning rate, then `strip`.

    Raises:
        UserError: When `number_of_clusters` is out of range or the model has nothing to cluster.
    """
    if not MINIMUM_CLUSTERS <= number_of_clusters <= 256:
        raise UserError(
            f"quantize.weight_clusters must be 0 (off) or {MINIMUM_CLUSTERS} to 256 with the "
            f"zero cluster kept, got {number_of_clusters}"
        )

    def clone_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
        copy = layer.__class__.from_config(layer.get_config())
        if not isinstance(layer, PRUNABLE_LAYER_TYPES):
            return copy
        # The wrapper computes its centroids from the kernel when it is built, so the copy
        # must hold the trained weights before it is wrapped (clone_model builds it later).
        copy.build(layer.input_shape)
        copy.set_weights(layer.get_weights())
        return _clustering.cluster_weights(
            copy,
            number_of_clusters=number_of_clusters,
            cluster_centroids_init=CENTROID_INITIALIZATION,
            preserve_sparsity=True,
        )

    clustered = keras.models.clone_model(model, clone_function=clone_layer)
    if not any(isinstance(layer, ClusterWeights) for layer in clustered.layers):
        raise UserError(
            f"no Conv2D or Dense kernel of {model.name} has more than {number_of_clusters} "
            "weights to cluster; lower quantize.weight_clusters"
        )
    copies = {layer.name: layer for layer in clustered.layers}
    for layer in model.layers:
        if layer.weights and not isinstance(layer, PRUNABLE_LAYER_TYPES):
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
    """Counts the distinct non-zero values of each Conv2D and Dense kernel.

    Args:
        model: A clustered (wrapped) or stripped model, or any unclustered one.

    Returns:
        `{"max_distinct_values": int, "layers": {name: int}}`: after clustering with N clusters
        every count is at most N - 1 (the zero cluster is not counted). Plain ints.
    """
    if any(isinstance(layer, ClusterWeights) for layer in model.layers):
        model = strip(model)
    counts = {
        layer.name: int(np.unique(kernel[kernel != 0]).size)
        for layer in model.layers
        if isinstance(layer, PRUNABLE_LAYER_TYPES)
        for kernel in [layer.kernel.numpy()]
    }
    return {"max_distinct_values": max(counts.values(), default=0), "layers": counts}
