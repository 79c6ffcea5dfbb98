"""A name -> builder registry, so configs and the CLI can name architectures as strings."""

from collections.abc import Callable

import tf_keras as keras

from compactcnn.registry import Registry

ModelBuilder = Callable[..., keras.Model]
_MODELS: Registry[ModelBuilder] = Registry("model")


def register_model(builder: ModelBuilder) -> ModelBuilder:
    """Registers `builder` under its function name (the value of `model.name`).

    Use as `@register_model`.

    Raises:
        ValueError: When a model of that name is already registered.
    """
    return _MODELS.register(builder)


def list_models() -> list[str]:
    """Returns the registered model names, sorted."""
    return _MODELS.names()


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
    return _MODELS.get(name)(num_classes=num_classes, **kwargs)
