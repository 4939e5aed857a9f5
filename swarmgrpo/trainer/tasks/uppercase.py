"""A toy task for smoke tests: answer in CAPITAL LETTERS only.

Its reward is dense on purpose: correctness is the share of completion characters that are uppercase
ASCII letters or spaces, so even a randomly initialised model (the `tiny` test model) gets a reward
that varies within every group and can be pushed up within seconds. It checks that the whole loop
learns; it says nothing about reasoning. `is_correct` holds when every character qualifies.
"""

import random
import string

from swarmgrpo.trainer.tasks.base import Example
from swarmgrpo.trainer.tasks.registry import register_task
from swarmgrpo.trainer.tasks.synthetic import SyntheticTask

_ALLOWED = frozenset(string.ascii_uppercase + " ")
_DROP_ALLOWED = str.maketrans("", "", string.ascii_uppercase + " ")
_TOPICS = ("river", "mountain", "city", "forest", "ocean", "desert", "garden", "market", "library", "harbor")
_STYLES = ("describe", "praise", "name three things about", "write a line about", "say hello to")


def uppercase_share(completion: str) -> float:
    text = completion.strip()
    if not text:
        return 0.0
    if text.isascii():  # in C: a completion may be 64 characters a token (runs of spaces)
        return (len(text) - len(text.translate(_DROP_ALLOWED))) / len(text)
    return sum(ch in _ALLOWED for ch in text) / len(text)


@register_task("uppercase")
class UppercaseTask(SyntheticTask):
    """Prompts like "describe a river 17, in CAPITAL LETTERS only"."""

    def draw(self, rng: random.Random) -> Example:
        style, topic, k = rng.choice(_STYLES), rng.choice(_TOPICS), rng.randint(0, 99)
        return Example(
            id=f"uppercase:{style}:{topic}:{k}",
            messages=self.user_messages(f"{style} a {topic} {k}, in CAPITAL LETTERS only."),
            answer="",
        )

    def eval_key(self) -> tuple[object, ...]:
        return ()

    def is_correct(self, completion: str, example: Example) -> bool:
        return uppercase_share(completion) == 1.0

    def reward_components(self, completion: str, example: Example, num_tokens: int, max_tokens: int) -> dict:
        components = super().reward_components(completion, example, num_tokens, max_tokens)
        if self.reward_fn is None:
            components["correctness"] = uppercase_share(completion)
        return components
