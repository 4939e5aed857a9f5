"""The one decode-and-reward of a completion, and the three places that call it: solo training's
rollout, evaluation and the coordinator's re-verification each give the task's own reward of the
text without special tokens, with special tokens still counted in the length."""

import itertools
import json

from swarmgrpo.coordinator.config import RunConfig
from swarmgrpo.coordinator.service import Run
from swarmgrpo.node.engines.base import Completion
from swarmgrpo.node.evaluate import evaluate
from swarmgrpo.node.solo import rollout
from swarmgrpo.trainer.completions import score_completion
from swarmgrpo.trainer.config import TrainConfig
from swarmgrpo.trainer.tasks import Example, TaskConfig, make_task

EOS = 0
MAX_TOKENS = 16


class FakeTokenizer:
    """Token id = the character's code point; id 0 is the end-of-sequence token (a special one)."""

    def decode(self, ids, skip_special_tokens=False):
        return "".join("<eos>" if i == EOS else chr(i) for i in ids if not (skip_special_tokens and i == EOS))

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        return [ord(ch) for ch in messages[-1]["content"]]

    def __len__(self):
        return 50_000


class ScriptedEngine:
    """Answers each prompt with the completions written for it, in order."""

    def __init__(self, outs: list[list[Completion]]):
        self.outs = outs

    def generate(self, prompts, n, params):
        assert len(prompts) == len(self.outs) and all(len(o) == n for o in self.outs)
        return self.outs


def _ids(text: str, eos: bool = False) -> list[int]:
    return [ord(ch) for ch in text] + ([EOS] if eos else [])


def _completions(example: Example) -> list[Completion]:
    """A right answer, a right answer that stopped on EOS, a wrong one, and one with nothing said."""
    texts = [(f"The answer is {example.answer}", False), (example.answer, True), ("-1", True), ("", False)]
    return [Completion(_ids(t, eos), [-0.5] * len(_ids(t, eos)), eos) for t, eos in texts]


def _expected(task, example: Example, token_ids: list[int]) -> float:
    """The reward the three places computed inline before they shared one function."""
    text = FakeTokenizer().decode(token_ids, skip_special_tokens=True)
    return task.reward(text, example, len(token_ids), MAX_TOKENS)


def _task():
    return make_task(TaskConfig(name="arithmetic"))


def test_score_completion_is_the_tasks_reward_of_the_text_without_special_tokens():
    task = _task()
    example = next(task.train_examples(0))
    for c in _completions(example):
        text, reward = score_completion(FakeTokenizer(), task, example, c.token_ids, MAX_TOKENS)
        assert "<eos>" not in text
        assert reward == _expected(task, example, c.token_ids)
    right, right_eos = _completions(example)[:2]
    assert score_completion(FakeTokenizer(), task, example, right.token_ids, MAX_TOKENS).reward > 0
    with_eos = score_completion(FakeTokenizer(), task, example, right_eos.token_ids, MAX_TOKENS).reward
    without = score_completion(FakeTokenizer(), task, example, right_eos.token_ids[:-1], MAX_TOKENS).reward
    assert with_eos < without  # the end-of-sequence token counts toward the brevity term


def test_solo_rollout_rewards_each_completion_as_the_task_does():
    task = _task()
    examples = list(itertools.islice(task.train_examples(0), 3))
    cfg = TrainConfig(num_generations=4, max_completion_length=MAX_TOKENS)
    engine = ScriptedEngine([_completions(ex) for ex in examples])
    groups, _, n_tokens = rollout(engine, FakeTokenizer(), task, examples, cfg, version=3, seed=0)
    for ex, g, comps in zip(examples, groups, engine.outs, strict=True):
        assert g.rewards == [_expected(task, ex, c.token_ids) for c in comps]
        assert g.prompt_ids == _ids(ex.messages[-1]["content"]) and g.policy_version == 3
    assert n_tokens == sum(len(c.token_ids) for comps in engine.outs for c in comps)


def test_evaluate_counts_right_answers_and_averages_the_tasks_reward():
    task = _task()
    examples = task.eval_examples(3)
    picks = [_completions(ex)[i] for ex, i in zip(examples, [0, 2, 1], strict=True)]  # right, wrong, right
    result = evaluate(ScriptedEngine([[c] for c in picks]), FakeTokenizer(), task, 3, MAX_TOKENS)
    assert (result.correct, result.n) == (2, 3)
    expected = [_expected(task, ex, c.token_ids) for ex, c in zip(examples, picks, strict=True)]
    assert result.mean_reward == sum(expected) / 3
    assert [s[1] for s in result.samples] == [FakeTokenizer().decode(c.token_ids, True) for c in picks]


def test_the_coordinator_rewards_a_stored_example_as_the_task_does(monkeypatch):
    monkeypatch.setattr("swarmgrpo.trainer.models.load_tokenizer", lambda name: FakeTokenizer())
    cfg = RunConfig()
    cfg.train.max_completion_length = MAX_TOKENS
    run = Run(cfg)
    for example in itertools.islice(run.task.train_examples(0), 3):
        stored = json.loads(json.dumps(example.as_row()))  # as the prompts table holds it
        for c in _completions(example):
            assert run.reward(stored, c.token_ids) == _expected(run.task, example, c.token_ids)


def test_an_example_survives_its_stored_row():
    example = Example("cd:1", ({"role": "user", "content": "reach 24"},), "24", {"numbers": [1, 2, 3, 4]})
    back = Example.from_row(json.loads(json.dumps(example.as_row())))
    assert back == example and back.meta == example.meta
    assert Example.from_row({k: v for k, v in example.as_row().items() if k != "meta"}).meta == {}
