"""A name -> callable table behind one config field.

Algorithm variants (advantage estimators, loss aggregations) are small functions registered under the
name a person writes in the config. `get` turns an unknown name into a `ConfigError` that names the
field and lists the valid choices, so a typo fails at startup with a fix, not deep inside a step.
"""

from collections.abc import Callable
from typing import Generic, TypeVar

from swarmgrpo.core.errors import ConfigError

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
    """Functions registered by name for the config field `field` (e.g. "loss_type")."""

    def __init__(self, field: str):
        self.field = field
        self._fns: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator: `@REG.register("grpo")` adds the function under `name` and returns it unchanged."""

        def add(fn: F) -> F:
            if name in self._fns:
                raise ValueError(f"{self.field} '{name}' is registered twice")
            self._fns[name] = fn
            return fn

        return add

    def get(self, name: str) -> F:
        try:
            return self._fns[name]
        except KeyError:
            raise ConfigError(
                self.field, f"unknown {self.field} '{name}'", f"choose one of: {', '.join(self.names())}"
            ) from None

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._fns))

    def __contains__(self, name: object) -> bool:
        return name in self._fns

    def __repr__(self) -> str:
        return f"Registry({self.field!r}, {list(self.names())})"
