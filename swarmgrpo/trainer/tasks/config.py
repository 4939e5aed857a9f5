"""The `task` section of the run config.

The config loader embeds `TaskConfig` as-is; validation of each field happens when the task is built
(`make_task`), so the error can name the field and the fix in one line.
"""

from dataclasses import dataclass, field


def _default_reward_weights() -> dict[str, float]:
    return {"correctness": 1.0, "format": 0.0, "brevity": 0.1}


@dataclass
class TaskConfig:
    """Which problems to train on and how completions are scored."""

    name: str = "arithmetic"
    """Task to train on: "arithmetic" (synthetic sums), "countdown" (reach a target), "jsonl" (GSM8K-style file) or "uppercase" (toy, for smoke tests)."""

    level: int = 1
    """Arithmetic difficulty: 1 = two 2-digit operands, 2 = two 3-digit, 3 = three 2-digit, 4 = 2-3 operands of 2-4 digits."""

    operations: str = "+"
    """Arithmetic operators to draw from, a non-empty subset of "+-*"."""

    dataset: str = ""
    """Path of the .jsonl file for the jsonl task (rows {"question", "answer" ending in "#### <number>"})."""

    eval_fraction: float = 0.1
    """Share of problems held out for eval, chosen by a hash of each problem so the split never depends on seeds."""

    reward_fn: str = ""
    """Optional "package.module:function" of a user reward fn(completion, answer, meta) -> float; replaces correctness."""

    reward_weights: dict[str, float] = field(default_factory=_default_reward_weights)
    """Weight of each reward component (correctness, format, brevity); a missing key weighs 0."""

    system_prompt: str = ""
    """Optional system message put before every prompt."""

    seed: int = 0
    """Base seed of the training stream; mixed with the seed passed to train_examples."""
