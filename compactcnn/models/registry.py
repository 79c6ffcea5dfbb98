"""A name -> builder registry, so configs and the CLI can name architectures as strings."""

import inspect
from collections.abc import Callable

import tf_keras as keras

from compactcnn.errors import UserError
from compactcnn.registry import Registry

# The input of a builder that does not say otherwise: CIFAR's.
DEFAULT_INPUT_SHAPE = (32, 32, 3)

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


def is_registered(name: str) -> bool:
    """Whether `name` is a registered model."""
    return name in _MODELS.names()


def default_input_shape(name: str) -> tuple[int, int, int]:
    """The input shape a registered model is built for when the config names none.

    Raises:
        UserError: When `name` is not registered.
    """
    parameter = inspect.signature(_MODELS.get(name)).parameters.get("input_shape")
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return DEFAULT_INPUT_SHAPE
    return tuple(parameter.default)


def create_model(
    name: str, num_classes: int, input_shape: tuple[int, int, int] | None = None, **options
) -> keras.Model:
    """Builds a registered model.

    Args:
        name: A registered name, e.g. `resnet20`.
        num_classes: Size of the classifier output.
        input_shape: (height, width, 3); None means the model's default (`default_input_shape`).
        **options: Model options from the config (`zero_init_residual`, `width`); None means
            the builder's default and is not passed.

    Returns:
        A Functional Keras model that takes raw RGB pixels 0-255, NHWC, and returns class
        probabilities.

    Raises:
        UserError: When `name` is not registered, or an option is set that it does not take.
    """
    builder = _MODELS.get(name)
    accepted = inspect.signature(builder).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    given = {key: value for key, value in options.items() if value is not None}
    for key, value in given.items():
        if key not in accepted and not takes_any and value is not False:
            raise UserError(
                f"model '{name}' has no option model.{key}; remove it (it applies to other "
                "built-in models)"
            )
    given = {key: value for key, value in given.items() if key in accepted or takes_any}
    shape = tuple(input_shape) if input_shape is not None else default_input_shape(name)
    return builder(num_classes=num_classes, input_shape=shape, **given)
