"""A rollout keeps its values through every shape: engine completion → SubmitRequest → rollouts row →
TrainGroup → RolloutGroup → MicroBatch, and back where a way back exists. Token ids, policy versions
and prompt indices stay exact; log-probs and rewards become float32 on the wire and stay exactly that;
solo training's batch (no wire) holds the same float32 values as the network's."""

import json

import numpy as np
import pytest
import torch

from swarmgrpo.coordinator.store import Store
from swarmgrpo.node.engines.base import Completion
from swarmgrpo.protocol import swarm_pb2
from swarmgrpo.trainer.rollouts import (
    StoredRollout,
    add_train_group,
    behavior_logprobs,
    completion_ids,
    completions_column,
    group_from_completions,
    group_from_wire,
    micro_batch,
    submission,
    wire_tokens,
)

PAD = 2
PROMPTS = {7: [1, 500, 42], 8: [9, 13]}
VERSION = 5
# float64 log-probs as an engine returns them: most are not float32 values
OUTS = [
    [
        Completion([49151, 0, 17], [-0.1, -1.2345678901234567, -38.0], True),
        Completion([3], [-1e-9], False),
    ],
    [
        Completion([], [], False),
        Completion([4, 5, 6, 7], [-0.3333333333333333, -2.5, -1e-3, -7.77], False),
    ],
]
REWARDS = [[1.0999999999999999, 0.1], [0.0, 0.3333333333333333]]  # doubles, as a task returns them


def f32(values) -> list[float]:
    return [float(np.float32(v)) for v in values]


def _lease() -> swarm_pb2.LeaseReply:
    lease = swarm_pb2.LeaseReply(lease_id="lease-1", policy_version=VERSION, group_size=2)
    for index, ids in PROMPTS.items():
        lease.prompts.add(prompt_index=index, token_ids=ids)
    return lease


def _over_the_wire(message):
    return type(message).FromString(message.SerializeToString())


def _submitted() -> swarm_pb2.SubmitRequest:
    return _over_the_wire(submission(_lease(), OUTS, generation_s=1.5))


def test_a_submission_carries_each_leased_prompts_completions_in_lease_order():
    req = _submitted()
    assert (req.lease_id, req.policy_version, req.generation_s) == ("lease-1", VERSION, 1.5)
    assert [g.prompt_index for g in req.groups] == list(PROMPTS)
    for g, comps in zip(req.groups, OUTS, strict=True):
        assert completion_ids(g) == [c.token_ids for c in comps]
        assert behavior_logprobs(g) == [f32(c.logprobs) for c in comps]
    assert wire_tokens(req.groups) == sum(len(c.token_ids) for comps in OUTS for c in comps) == 8


def test_a_submission_needs_completions_for_every_leased_prompt():
    with pytest.raises(ValueError):
        submission(_lease(), OUTS[:1], generation_s=1.0)


def test_the_completions_column_gives_back_what_it_was_given():
    for g, rewards in zip(_submitted().groups, REWARDS, strict=True):
        ids, lps = completion_ids(g), behavior_logprobs(g)
        row = StoredRollout.from_columns(
            1, g.prompt_index, VERSION, completions_column(ids, lps), json.dumps(rewards)
        )
        assert row == StoredRollout(1, g.prompt_index, VERSION, ids, lps, rewards)


def _stored(tmp_path) -> tuple[Store, list]:
    """The submission as the coordinator stores it, and the step's batch read back."""
    store = Store(tmp_path / "run.db")
    for g, rewards in zip(_submitted().groups, REWARDS, strict=True):
        store.add_prompt(g.prompt_index, {"id": str(g.prompt_index)}, PROMPTS[g.prompt_index])
        store.add_rollout(
            g.prompt_index, "lease-1", "node-a", VERSION, completion_ids(g), behavior_logprobs(g), rewards
        )
    assert len(store.assign_batch(step=VERSION, n=10, min_version=0)) == 2
    return store, store.batch(VERSION)


def test_a_stored_rollout_reads_back_exactly(tmp_path):
    _, batch = _stored(tmp_path)
    assert [r.prompt_index for r in batch] == list(PROMPTS)
    for r, comps, rewards in zip(batch, OUTS, REWARDS, strict=True):
        assert r.policy_version == VERSION
        assert r.completions == [c.token_ids for c in comps]
        assert r.logprobs == [f32(c.logprobs) for c in comps]
        assert r.rewards == rewards


def _trained(tmp_path) -> list:
    """The stored batch as a gradient worker receives it and makes groups of it."""
    reply = swarm_pb2.TrainBatchReply()
    store, batch = _stored(tmp_path)
    for r in batch:
        add_train_group(reply, r, store.prompt(r.prompt_index)[1])
    return [group_from_wire(g) for g in _over_the_wire(reply).groups]


def test_a_gradient_workers_groups_hold_the_stored_values(tmp_path):
    groups = _trained(tmp_path)
    for g, index, comps, rewards in zip(groups, PROMPTS, OUTS, REWARDS, strict=True):
        assert g.prompt_ids == PROMPTS[index]
        assert g.completion_ids == [c.token_ids for c in comps]
        assert g.behavior_logprobs == [f32(c.logprobs) for c in comps]
        assert g.rewards == f32(rewards)
        assert g.policy_version == VERSION


def _pieces(groups):
    advantages = [[0.5, -0.5], [-0.25, 0.25]]
    return [
        (g, adv, [i for i, c in enumerate(g.completion_ids) if c])
        for g, adv in zip(groups, advantages, strict=True)
    ]


def test_the_micro_batch_holds_the_groups_values_padded(tmp_path):
    mb = micro_batch(_pieces(_trained(tmp_path)), PAD)
    assert mb.prompt_ids_KP.tolist() == [[1, 500, 42], [PAD, 9, 13]]  # left-padded
    assert mb.prompt_mask_KP.tolist() == [[1, 1, 1], [0, 1, 1]]
    assert mb.prompt_len_K.tolist() == [3, 2]
    assert mb.group_index_B.tolist() == [0, 0, 1]  # the empty completion is not batched
    assert mb.completion_ids_BT.tolist() == [[49151, 0, 17, PAD], [3, PAD, PAD, PAD], [4, 5, 6, 7]]
    assert mb.completion_mask_BT.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]]
    live = [OUTS[0][0], OUTS[0][1], OUTS[1][1]]
    for row, c in zip(mb.behavior_logp_BT, live, strict=True):
        assert row.dtype == torch.float32
        assert row[: len(c.logprobs)].tolist() == f32(c.logprobs)
    assert mb.advantages_B.tolist() == [0.5, -0.5, 0.25]
    assert mb.versions_B.tolist() == [VERSION] * 3


def test_solo_training_batches_the_same_values_as_the_network(tmp_path):
    solo = [
        group_from_completions(PROMPTS[index], comps, f32(rewards), VERSION)
        for index, comps, rewards in zip(PROMPTS, OUTS, REWARDS, strict=True)
    ]
    network = _trained(tmp_path)
    assert [g.rewards for g in solo] == [g.rewards for g in network]
    ours, theirs = micro_batch(_pieces(solo), PAD), micro_batch(_pieces(network), PAD)
    for name in ("prompt_ids_KP", "completion_ids_BT", "behavior_logp_BT", "advantages_B", "versions_B"):
        assert torch.equal(getattr(ours, name), getattr(theirs, name)), name
