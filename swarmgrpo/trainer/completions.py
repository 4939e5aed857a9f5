"""What a completion is worth: its text and the task's reward, computed one way everywhere.

Solo training, evaluation and the coordinator's re-verification of every submission all decode and
reward here, so the reward a node sees in solo mode is the reward the coordinator recomputes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from swarmgrpo.trainer.tasks import Example, Task


class ScoredCompletion(NamedTuple):
    text: str
    """The completion decoded without special tokens: what the task reads."""
    reward: float


def score_completion(
    tokenizer, task: Task, example: Example, token_ids: Sequence[int], max_tokens: int
) -> ScoredCompletion:
    """Decode `token_ids` and reward the text; the length term counts tokens, special ones included."""
    text = tokenizer.decode(token_ids, skip_special_tokens=True)
    return ScoredCompletion(text, task.reward(text, example, len(token_ids), max_tokens))
