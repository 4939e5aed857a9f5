"""Streams for tasks that generate problems from a random source.

The problem universe is whatever `draw` can produce; the split is `in_eval(example.id)`. Training draws
from an rng seeded by (cfg.seed, seed) and skips eval problems. Eval draws from an rng whose seed depends
only on the task's `eval_key()`, never on cfg.seed, keeping the first n distinct eval problems, so every
run and every node sees the same eval set, and `eval_examples(k)` is a prefix of `eval_examples(n)`.
"""

import random
from abc import abstractmethod
from collections.abc import Iterator

from swarmgrpo.core.errors import ConfigError
from swarmgrpo.trainer.tasks.base import Example, Task
from swarmgrpo.trainer.tasks.split import derive_seed, in_eval

# Draws in a row without a new eval problem before the universe counts as exhausted.
_MIN_PATIENCE = 20_000
_MAX_PATIENCE = 1_000_000


class SyntheticTask(Task):
    """A task whose problems come from `draw(rng)`; subclasses define the universe, this class the split."""

    @abstractmethod
    def draw(self, rng: random.Random) -> Example:
        """One random problem of the universe (train or eval)."""

    @abstractmethod
    def eval_key(self) -> tuple[object, ...]:
        """What the eval set depends on (e.g. level and operations), never seeds."""

    def train_examples(self, seed: int) -> Iterator[Example]:
        rng = random.Random(derive_seed(self.name, "train", self.cfg.seed, seed))
        while True:
            example = self.draw(rng)
            if not in_eval(example.id, self.cfg.eval_fraction):
                yield example

    def eval_examples(self, n: int) -> list[Example]:
        if n <= 0:
            return []
        fraction = self.cfg.eval_fraction
        if fraction <= 0.0:
            raise ConfigError(
                "task.eval_fraction", f"is 0 but {n} eval examples were asked for", "set it above 0"
            )
        rng = random.Random(derive_seed(self.name, "eval", *self.eval_key()))
        seen: set[str] = set()
        out: list[Example] = []
        patience = min(max(_MIN_PATIENCE, int(50 / fraction)), _MAX_PATIENCE)
        misses = 0
        while misses < patience:
            example = self.draw(rng)
            if example.id in seen or not in_eval(example.id, fraction):
                misses += 1
                continue
            seen.add(example.id)
            out.append(example)
            if len(out) == n:
                return out
            misses = 0
        raise ConfigError(
            "task.eval_fraction",
            f"only {len(out)} distinct eval problems found for '{self.name}' {self.eval_key()}, {n} asked for",
            "raise task.eval_fraction or task.level, or ask for fewer eval examples",
        )
