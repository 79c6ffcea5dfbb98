"""The input normalization every model starts with: found, converted, or added from the config.

Every model takes raw pixels 0-255 and normalizes them in its first layer, a `Rescaling`, so an
exported file has no hidden preprocessing (docs/DESIGN.md). A model the user brings:

- reads its input with a `Rescaling`: kept as it is;
- reads it with a `Normalization` layer: that layer becomes the equal `Rescaling` (tfmot's QAT
  quantizes neither layer; compactcnn gives `Rescaling` a quantize config of its own);
- has neither: gets `data.normalize` (by default pixels to [-1, 1], as the built-in models) as a
  new first layer, `normalize`.
"""

from __future__ import annotations

import numpy as np
import tf_keras as keras

from compactcnn.config import NormalizeConfig
from compactcnn.errors import UserError
from compactcnn.models.graph import Graph, prepend, replace
from compactcnn.models.resnet import PIXEL_OFFSET, PIXEL_SCALE

LAYER_NAME = "normalize"
_NORMALIZING = (keras.layers.Rescaling, keras.layers.Normalization)
# Keras' Normalization divides by max(sqrt(variance), epsilon).
_EPSILON = 1e-7


def is_set(normalize: NormalizeConfig) -> bool:
    """Whether the user set any `data.normalize` key."""
    return normalize != NormalizeConfig()


def own_layer(graph: Graph) -> keras.layers.Layer | None:
    """The model's own normalization: a Rescaling or Normalization that alone reads the input."""
    readers = graph.consumers(graph.input_name())
    if len(readers) != 1:
        return None
    layer = graph.sources.get(readers[0]["name"])
    return layer if isinstance(layer, _NORMALIZING) else None


def apply(graph: Graph, normalize: NormalizeConfig, model_name: str) -> str:
    """Gives the graph its raw-pixel input normalization, in place.

    Args:
        graph: The user model's graph.
        normalize: The `data.normalize` section.
        model_name: `model.name`, for messages.

    Returns:
        What was done, for metrics.json, e.g. "added Rescaling 'normalize': pixels * 0.00784 +
        -1.0 (the default)".

    Raises:
        UserError: When `data.normalize` is set but the model normalizes its input itself.
    """
    own = own_layer(graph)
    if own is not None:
        if is_set(normalize):
            raise UserError(
                f"data.normalize is set, but model '{model_name}' normalizes its input itself "
                f"(layer '{own.name}', a {type(own).__name__}); remove data.normalize"
            )
        if isinstance(own, keras.layers.Rescaling):
            return f"the model's own Rescaling '{own.name}'"
        converted = _as_rescaling(own)
        if converted is None:
            return f"the model's own Normalization '{own.name}'"
        replace(graph, own.name, converted)
        return f"the model's own Normalization '{own.name}', as the equal Rescaling"
    layer, description = rescaling(normalize)
    name = prepend(graph, layer, LAYER_NAME)
    origin = "data.normalize" if is_set(normalize) else "the default; set data.normalize to change"
    return f"added Rescaling '{name}': {description} ({origin})"


def rescaling(normalize: NormalizeConfig) -> tuple[keras.layers.Rescaling, str]:
    """The Rescaling `data.normalize` describes, and a one-line description of it."""
    if normalize.mean is not None and normalize.std is not None:
        scale = [1.0 / value for value in normalize.std]
        offset = [-mean / std for mean, std in zip(normalize.mean, normalize.std, strict=True)]
        description = f"(pixels - {normalize.mean}) / {normalize.std}"
        if len(scale) == 1:
            scale, offset = scale[0], offset[0]
    else:
        if normalize.scale is None and normalize.offset is None:
            scale, offset = PIXEL_SCALE, PIXEL_OFFSET
        else:
            scale = 1.0 if normalize.scale is None else normalize.scale
            offset = normalize.offset or 0.0
        sign = "-" if offset < 0 else "+"
        description = f"pixels * {scale:.6g} {sign} {abs(offset):.6g}"
    return keras.layers.Rescaling(scale, offset=offset, name=LAYER_NAME), description


def _as_rescaling(layer: keras.layers.Normalization) -> keras.layers.Rescaling | None:
    """The Rescaling that computes what a channel-wise Normalization does, or None if none does."""
    if getattr(layer, "invert", False) or tuple(layer.axis) not in ((-1,), (3,)):
        return None
    mean = np.asarray(layer.mean, np.float64).reshape(-1)
    std = np.maximum(np.sqrt(np.asarray(layer.variance, np.float64).reshape(-1)), _EPSILON)
    scale = (1.0 / std).tolist()
    offset = (-mean / std).tolist()
    if len(scale) == 1:
        scale, offset = scale[0], offset[0]
    return keras.layers.Rescaling(scale, offset=offset, name=layer.name)
