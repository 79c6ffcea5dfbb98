"""A name -> function registry that refuses surprises; models and data sources each keep one.

Registering a second function under a taken name raises (tensorflow/models' registry does the
same), and asking for an unknown name is a one-line `UserError` that lists the valid ones, so the
list of names, the error message and the docs all come from the registry itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from compactcnn.errors import UserError

Function = TypeVar("Function", bound=Callable)


class Registry(Generic[Function]):
    """Functions registered under their `__name__`.

    Args:
        kind: What the names name, for messages: "model", "data source".
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._functions: dict[str, Function] = {}

    def register(self, function: Function) -> Function:
        """Registers `function` under its `__name__`; use as a decorator.

        Raises:
            ValueError: When that name is already registered.
        """
        name = function.__name__
        if name in self._functions:
            raise ValueError(f"{self.kind} '{name}' is already registered; pick another name")
        self._functions[name] = function
        return function

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._functions)

    def get(self, name: str) -> Function:
        """The function registered as `name`.

        Raises:
            UserError: When `name` is not registered.
        """
        if name not in self._functions:
            raise UserError(
                f"unknown {self.kind} '{name}'; choose one of {', '.join(self.names())}"
            )
        return self._functions[name]
