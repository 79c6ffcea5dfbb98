"""A name -> builder registry, so configs and the CLI can name architectures as strings."""

from collections.abc import Callable

import tf_keras as keras

from compactcnn.errors import UserError

ModelBuilder = Callable[..., keras.Model]
_MODELS: dict[str, ModelBuilder] = {}


def register_model(builder: ModelBuilder) -> ModelBuilder:
    """Registers `builder` under its function name. Use as `@register_model`.

    Args:
        builder: The function to register; its `__name__` is the value of `model.name`.

    Returns:
        `builder`, unchanged.

    Raises:
        ValueError: When a model of that name is already registered.
    """
    name = builder.__name__
    if name in _MODELS:
        raise ValueError(f"model '{name}' is already registered; pick another name")
    _MODELS[name] = builder
    return builder


def list_models() -> list[str]:
    """Returns the registered model names, sorted."""
    return sorted(_MODELS)


def create_model(name: str, num_classes: int, **kwargs) -> keras.Model:
    """Builds a registered model.

    Args:
        name: A registered name, e.g. `resnet20`.
        num_classes: Size of the classifier output.
        **kwargs: Passed to the builder.

    Returns:
        A Functional Keras model that takes raw RGB pixels 0-255, NHWC 32x32x3, and returns
        class probabilities.

    Raises:
        UserError: When `name` is not registered.
    """
    if name not in _MODELS:
        raise UserError(f"unknown model '{name}'; choose one of {', '.join(list_models())}")
    return _MODELS[name](num_classes=num_classes, **kwargs)
