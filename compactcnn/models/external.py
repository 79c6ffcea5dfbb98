"""Models the user brings: a saved Keras 2 `.keras` file, or a builder `module.path:function`.

Both fail early and in one line: a file that does not load, a module that does not import, a
builder that raises or returns something other than a tf_keras model.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import tf_keras as keras

from compactcnn.errors import UserError

# `package.module:function`, as in entry points.
_BUILDER = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*")
_HDF5_SUFFIXES = (".h5", ".hdf5")


def is_builder(name: str) -> bool:
    """Whether `model.name` names a builder function (`package.module:function`)."""
    return bool(_BUILDER.fullmatch(name))


def is_file(name: str) -> bool:
    """Whether `model.name` names a saved model file (a path, or a name ending in .keras/.h5)."""
    return name.endswith((".keras", *_HDF5_SUFFIXES)) or os.sep in name or "/" in name


def load_file(name: str) -> keras.Model:
    """Loads a saved Keras 2 model with `safe_mode=True` (no Lambda bytecode), uncompiled.

    Raises:
        UserError: When the path is missing, not a .keras file, or does not load.
    """
    path = Path(name).expanduser()
    if path.suffix in _HDF5_SUFFIXES:
        raise UserError(
            f"model.name '{name}' is an HDF5 file; load it in tf_keras and re-save it with "
            "model.save('model.keras')"
        )
    if path.suffix != ".keras":
        raise UserError(
            f"model.name '{name}' is not a .keras file; give a saved tf_keras model "
            "(model.save('model.keras')), a builder package.module:function or a built-in name"
        )
    if not path.is_file():
        raise UserError(f"model.name '{name}' does not exist; check the path of the .keras file")
    try:
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Loaders raise many types for a damaged or foreign file.
        raise UserError(
            f"model.name '{name}' does not load as a tf_keras model ({_first_line(error)}); "
            "save it with tf_keras (not Keras 3) from built-in layers, without Lambda layers"
        ) from None


def import_builder(name: str) -> Callable[..., keras.Model]:
    """Imports the builder function `package.module:function`.

    The working directory is searched first, so a `my_models.py` next to the config is found
    whether compactcnn runs as `compactcnn` or `python -m compactcnn`.

    Raises:
        UserError: When the module does not import or has no such function.
    """
    module_name, function_name = name.split(":")
    with _working_directory_importable():
        try:
            module = importlib.import_module(module_name)
        except Exception as error:  # A module can raise anything while it is imported.
            raise UserError(
                f"model.name '{name}': module '{module_name}' does not import "
                f"({type(error).__name__}: {_first_line(error)}); check the module path "
                "(relative to the working directory, or an installed package)"
            ) from None
    builder = getattr(module, function_name, None)
    if not callable(builder):
        raise UserError(
            f"model.name '{name}': module '{module_name}' has no function '{function_name}'; "
            "name a function that builds the model"
        )
    return builder


def call_builder(
    builder: Callable[..., keras.Model],
    name: str,
    num_classes: int,
    input_shape: tuple[int, int, int],
) -> keras.Model:
    """Calls `builder(num_classes=..., input_shape=...)` and checks it returned a tf_keras model.

    Raises:
        UserError: When the builder raises or returns something else.
    """
    try:
        model = builder(num_classes=num_classes, input_shape=tuple(input_shape))
    except UserError:
        raise
    except Exception as error:  # The user's code can raise anything.
        raise UserError(
            f"builder '{name}' failed ({type(error).__name__}: {_first_line(error)}); it is "
            "called as build(num_classes=..., input_shape=(height, width, 3))"
        ) from None
    if not isinstance(model, keras.Model):
        raise UserError(
            f"builder '{name}' returned a {type(model).__name__}, not a tf_keras model; build "
            "it with `import tf_keras as keras` (Keras 3 models are not supported)"
        )
    return model


@contextlib.contextmanager
def _working_directory_importable() -> Iterator[None]:
    here = os.getcwd()
    added = here not in sys.path
    if added:
        sys.path.insert(0, here)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(here)


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0][:200] if lines else type(error).__name__
