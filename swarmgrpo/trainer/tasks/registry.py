"""Name -> Task class. Tasks register themselves with `@register_task("name")` at import time."""

from collections.abc import Callable

from swarmgrpo.trainer.tasks.base import Task

TASKS: dict[str, type[Task]] = {}


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator: make the task constructible as `task.name = "<name>"`."""

    def add(cls: type[Task]) -> type[Task]:
        if name in TASKS and TASKS[name] is not cls:
            raise ValueError(f"task name '{name}' is already registered by {TASKS[name].__qualname__}")
        cls.name = name
        TASKS[name] = cls
        return cls

    return add
