"""The coordinator's scoring worker: rewards come back in order, a submission over its CPU budget is
refused, a completion stuck inside C is stopped by the kernel, and the worker serves again after."""

import asyncio
import re

import pytest

from swarmgrpo.coordinator.scoring import OverBudget, Scorer
from swarmgrpo.core.errors import UserError


def _reward(example: dict, token_ids: list[int]) -> float:
    if example["kind"] == "spin":  # pure Python: the worker's own check stops it between completions
        total = 0
        for i in range(3_000_000):
            total += i
        return 0.0
    if example["kind"] == "stuck":  # one call inside the regex engine: only the kernel can stop it
        re.match(r"(a*)*b", "a" * 64)
    if example["kind"] == "broken":
        raise ValueError("no such answer")
    return float(sum(token_ids))


@pytest.fixture
def scorer():
    s = Scorer(_reward, budget_s=0.2)
    yield s
    s.close()


def _score(scorer: Scorer, groups):
    return asyncio.run(scorer.score(groups))


def test_rewards_come_back_in_order(scorer):
    groups = [({"kind": "ok"}, [[1, 2], [3]]), ({"kind": "ok"}, [[5], [], [7, 8]])]
    assert _score(scorer, groups) == [[3.0, 3.0], [5.0, 0.0, 15.0]]
    assert 0.0 <= scorer.last_cpu_s < 0.2


def test_a_submission_over_its_budget_is_refused_and_the_worker_goes_on(scorer):
    with pytest.raises(OverBudget, match="score_cpu_budget_s"):
        _score(scorer, [({"kind": "spin"}, [[1]] * 50)])
    assert _score(scorer, [({"kind": "ok"}, [[4]])]) == [[4.0]]


def test_a_completion_stuck_inside_c_is_stopped_and_the_worker_started_again(scorer):
    first = scorer.pid
    with pytest.raises(OverBudget):
        _score(scorer, [({"kind": "stuck"}, [[1]])])
    assert scorer.pid != first
    assert _score(scorer, [({"kind": "ok"}, [[2, 2]])]) == [[4.0]]


def test_a_failing_reward_names_the_error(scorer):
    with pytest.raises(UserError, match="ValueError: no such answer"):
        _score(scorer, [({"kind": "broken"}, [[1]])])
    assert _score(scorer, [({"kind": "ok"}, [[1]])]) == [[1.0]]
