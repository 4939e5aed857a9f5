"""Verifiable-reward tasks: problems as chat messages, plus a checker and a shaped reward.

Importing this package registers the built-in tasks; `make_task(cfg)` picks one by `cfg.name`.
Nothing here imports torch or transformers; `datasets` is imported only when a jsonl task is built.
"""

from swarmgrpo.core.errors import ConfigError
from swarmgrpo.trainer.tasks import arithmetic, countdown, jsonl, uppercase  # noqa: F401  (registers the tasks)
from swarmgrpo.trainer.tasks.base import Example, Task
from swarmgrpo.trainer.tasks.config import TaskConfig
from swarmgrpo.trainer.tasks.registry import TASKS, register_task

__all__ = ["TASKS", "Example", "Task", "TaskConfig", "make_task", "register_task"]


def make_task(cfg: TaskConfig) -> Task:
    """Build the task named by `cfg.name`, validating its config fields."""
    cls = TASKS.get(cfg.name)
    if cls is None:
        raise ConfigError(
            "task.name", f"unknown task '{cfg.name}'", f"use one of: {', '.join(sorted(TASKS))}"
        )
    return cls(cfg)
