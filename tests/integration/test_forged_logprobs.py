"""A node that forges its behavior log-probs, against the real coordinator and a real trainer process.

The attacker is a signed client that leases like a rollout node and submits, for every lease, first
log-probs of -1e30 and -50 (refused and named: an honest draw lands below ln(1e-12 / vocab) = -38.4
once in 1e12 tokens), then -20 (accepted: plausible for one token, so only the ratio cap bounds it).
max_staleness = 1 and leasing one step ahead make the trainer take most groups' ratio against those
numbers; the run must reach max_steps with every step's numbers finite and bounded.
"""

import math
import time

import grpc
import pytest

from swarmgrpo.coordinator.runlog import read_table
from swarmgrpo.node.engines.base import Completion
from swarmgrpo.protocol import swarm_pb2
from swarmgrpo.protocol.client import CoordinatorError
from swarmgrpo.trainer.rollouts import submission
from tests.integration.test_network import _await, _counts, _join

pytestmark = pytest.mark.integration


TEXTS = ["HELLO WORLD", "hello world", "HELLO", "Hello"]  # uppercase rewards that differ within a group


def _forged_group(completions: list[list[int]], logprob: float) -> list[Completion]:
    return [Completion(ids, [logprob] * len(ids), finished=True) for ids in completions]


def _forged(lease, completions: list[list[int]], logprob: float) -> swarm_pb2.SubmitRequest:
    group = _forged_group(completions[: lease.group_size], logprob)
    return submission(lease, [group] * len(lease.prompts), generation_s=0.1)


def _feed(attacker, completions, version: int) -> bool:
    """Lease at `version`; submit the forgeries. False when no work was granted."""
    lease = attacker.lease(version, 2)
    if lease.status != swarm_pb2.LEASE_GRANTED:
        return False
    for forged in (-1e30, -50.0):
        with pytest.raises(CoordinatorError) as refused:
            attacker.submit(_forged(lease, completions, forged))
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert ".logprobs: " in str(refused.value) and "not a sampled token's log-probability" in str(
            refused.value
        )
    assert attacker.submit(_forged(lease, completions, -20.0)).status == swarm_pb2.SUBMIT_ACCEPTED
    return True


@pytest.mark.parametrize("network", [{"train": {"max_steps": 4}}], indirect=True)
def test_forged_logprobs_are_refused_or_bounded_and_the_run_reaches_max_steps(network, tiny):
    _, tok = tiny
    completions = [tok.encode(t, add_special_tokens=False) for t in TEXTS]
    network.start_coordinator()
    attacker, _ = _join(network)
    assert _feed(attacker, completions, 0) and _feed(attacker, completions, 0)  # steps 0 and 1 at version 0
    trainer = network.start_node("trainer", "train")
    fed = 2
    while fed < 4:  # steps 2 and 3, each leased one version ahead of its training
        assert trainer.poll() is None, network.logs()
        if _feed(attacker, completions, attacker.policy().policy_version):
            fed += 1
        else:
            time.sleep(0.2)
    assert network.wait(trainer, 240, "trainer") == 0, network.logs()
    versions = read_table(network.http, "versions")
    rows = read_table(network.http, "rollouts")
    stale = sum(r["step"] is not None and r["policy_version"] < r["step"] for r in rows)
    assert [v["version"] for v in versions] == [1, 2, 3, 4]
    assert stale >= 4, "at least two steps took their ratio against the forged log-probs"
    for v, m in ((v["version"], v["metrics"]) for v in versions):
        assert all(x is not None and math.isfinite(x) for x in m.values()), (v, m)  # None: not finite
        # |loss| <= delta * max|A| (1.5 for G = 4); uncapped, a -50 log-prob made it ~1e17, -20 ~1e8
        assert abs(m["loss"]) < 10 and m["trained_sequences"] > 0 and "step_skipped" not in m, (v, m)
    refusals = network.log("coordinator").count(f"Submit from node {attacker.key.node_id} refused")
    assert refusals == 8, network.log("coordinator")[-3000:]


def test_groups_a_trainer_sets_aside_are_recorded_with_the_node_that_sent_them(network):
    network.start_coordinator()
    sender, _ = _join(network)
    trainer, _ = _join(network, roles=(swarm_pb2.ROLE_TRAIN,))
    lease = sender.lease(0, 2)
    assert (
        sender.submit(_forged(lease, [[5, 6], [7], [8, 9], [10]], -20.0)).status == swarm_pb2.SUBMIT_ACCEPTED
    )
    batch = trainer.train_batch(0)
    assert batch.status == swarm_pb2.BATCH_READY
    bad = batch.groups[1].prompt_index
    reply = trainer.report_step(0, "ab" * 32, {"loss": 0.1, "set_aside_groups": 1.0}, set_aside_prompts=[bad])
    assert reply.status == swarm_pb2.STEP_PUBLISHED
    marked = [
        (r["prompt_index"], r["node_id"]) for r in read_table(network.http, "rollouts") if r["set_aside"]
    ]
    (metrics,) = [v["metrics"] for v in read_table(network.http, "versions") if v["version"] == 1]
    assert marked == [(bad, sender.key.node_id)] and metrics["set_aside_groups"] == 1.0
    _await(
        network,
        "the coordinator names the sender",
        lambda: f"prompts [{bad}] submitted by node {sender.key.node_id}" in network.log("coordinator"),
        [network.coordinator],
        timeout=10,
    )
    with pytest.raises(CoordinatorError) as e:  # a report cannot name more than a batch holds
        trainer.report_step(1, "cd" * 32, {}, set_aside_prompts=list(range(2000)))
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and "set_aside_prompts" in str(e.value)
    assert _counts(network)["rollouts_set_aside"] == 1
