"""Held-out accuracy: greedy completions of the task's eval split, checked by the task."""

from __future__ import annotations

from dataclasses import dataclass

from swarmgrpo.node.engines.base import Engine, SamplingParams
from swarmgrpo.trainer.completions import score_completion
from swarmgrpo.trainer.prompts import encode_chat
from swarmgrpo.trainer.tasks import Task


@dataclass
class EvalResult:
    accuracy: float
    n: int
    correct: int
    mean_reward: float
    samples: list[tuple[str, str, bool]]
    """A few (answer, completion, correct) triples, for a look by eye."""


def evaluate(
    engine: Engine, tokenizer, task: Task, n: int, max_tokens: int, max_prompt_length: int = 512
) -> EvalResult:
    examples = task.eval_examples(n)
    prompts = [encode_chat(tokenizer, ex.messages, max_prompt_length) for ex in examples]
    outs = engine.generate(prompts, 1, SamplingParams(max_tokens=max_tokens, temperature=0.0))
    correct, reward, samples = 0, 0.0, []
    for ex, (comp,) in zip(examples, outs, strict=True):
        text, comp_reward = score_completion(tokenizer, task, ex, comp.token_ids, max_tokens)
        ok = task.is_correct(text, ex)
        correct += ok
        reward += comp_reward
        if len(samples) < 5:
            samples.append((ex.answer, text, ok))
    return EvalResult(
        correct / max(len(examples), 1), len(examples), correct, reward / max(len(examples), 1), samples
    )
