"""What every task provides: problems as chat messages, a correctness check, and the shaped reward.

Tasks are tokenizer-free: they return chat messages and someone else applies the chat template, so
this package never imports torch or transformers. Subclasses implement the problem stream
(`train_examples`, `eval_examples`) and `is_correct`; the reward plumbing lives here once.
"""

import numbers
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field

from swarmgrpo.core.errors import ConfigError
from swarmgrpo.trainer.tasks import rewards
from swarmgrpo.trainer.tasks.config import TaskConfig
from swarmgrpo.trainer.tasks.extract import has_answer_format


@dataclass(frozen=True)
class Example:
    """One problem. Hashing uses `id` and `answer`, equality also `messages`; `meta` is ignored by both."""

    id: str
    """Stable, unique id of the problem, e.g. "arith:23+45"; also decides its train/eval split."""
    messages: tuple[dict, ...] = field(hash=False)
    """Chat messages ending with the user turn; no assistant turn."""
    answer: str
    """Reference final answer as a canonical string, e.g. "68"."""
    meta: dict = field(default_factory=dict, hash=False, compare=False)
    """Task-specific data (countdown numbers and target) passed to user reward functions."""

    def as_row(self) -> dict:
        """The example as JSON data (the coordinator stores each leased prompt's example so)."""
        return {"id": self.id, "messages": list(self.messages), "answer": self.answer, "meta": self.meta}

    @classmethod
    def from_row(cls, row: dict) -> "Example":
        return cls(row["id"], tuple(row["messages"]), row["answer"], row.get("meta", {}))


class Task(ABC):
    """A source of verifiable problems and the reward for a completion of one."""

    name: str = ""

    def __init__(self, cfg: TaskConfig):
        fraction = cfg.eval_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0.0 <= fraction < 1.0:
            raise ConfigError(
                "task.eval_fraction", f"{fraction!r} is not a number in [0, 1)", "use a share such as 0.1"
            )
        self.cfg = cfg
        self.weights = rewards.validate_weights(cfg.reward_weights)
        self.reward_fn = rewards.load_reward_fn(cfg.reward_fn) if cfg.reward_fn else None

    @abstractmethod
    def train_examples(self, seed: int) -> Iterator[Example]:
        """Infinite, deterministic stream for (cfg.seed, seed); never yields an eval problem."""

    @abstractmethod
    def eval_examples(self, n: int) -> list[Example]:
        """The first n held-out problems, the same for every seed and run."""

    @abstractmethod
    def is_correct(self, completion: str, example: Example) -> bool:
        """Whether the completion's final answer solves the problem (the task's own check)."""

    def has_format(self, completion: str) -> bool:
        """Whether the completion states its final answer in an explicit form."""
        return has_answer_format(completion)

    def reward_components(
        self, completion: str, example: Example, num_tokens: int, max_tokens: int
    ) -> dict[str, float]:
        """Unweighted components; correctness is the user's reward function when task.reward_fn is set."""
        if self.reward_fn is not None:
            correctness = rewards.call_reward_fn(
                self.reward_fn, self.cfg.reward_fn, completion, example.answer, example.meta
            )
        else:
            correctness = float(self.is_correct(completion, example))
        return {
            "correctness": correctness,
            "format": float(self.has_format(completion)),
            "brevity": rewards.brevity(num_tokens, max_tokens),
        }

    def reward(self, completion: str, example: Example, num_tokens: int, max_tokens: int) -> float:
        """Σ weight_k × component_k with task.reward_weights."""
        return rewards.weighted_sum(
            self.reward_components(completion, example, num_tokens, max_tokens), self.weights
        )

    def user_messages(self, prompt: str) -> tuple[dict, ...]:
        """The chat for one prompt, with the configured system message first if any."""
        user = {"role": "user", "content": prompt}
        if self.cfg.system_prompt:
            return ({"role": "system", "content": self.cfg.system_prompt}, user)
        return (user,)
