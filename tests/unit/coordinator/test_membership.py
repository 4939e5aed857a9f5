"""Who is live (the one rule: heard from within 3 heartbeats, not left), which roles a joiner gets,
and on which device each trainer trains."""

import pytest

from swarmgrpo.coordinator.membership import Membership
from swarmgrpo.coordinator.teams import NoTrainSlot
from tests.unit.coordinator.fakes import HEARTBEAT_S, ROLLOUT, TRAIN, join


@pytest.fixture
def members(store, clock):
    return Membership(store, HEARTBEAT_S, max_trainers=1, clock=clock)


def test_a_node_is_live_until_three_heartbeats_of_silence_and_a_heartbeat_keeps_it(members, clock):
    a, b = join(members, "a"), join(members, "b")
    assert members.live_ids() == {a, b}
    clock.advance(2.9 * HEARTBEAT_S)
    members.heartbeat(a, policy_version=0, activity="generating", tokens_per_s=1.0)
    clock.advance(0.2 * HEARTBEAT_S)
    assert members.live_ids() == {a}, "b was silent 3.1 heartbeats"
    assert members.any_alive([b, a]) and not members.any_alive([b]) and not members.any_alive([])
    assert [n["node_id"] for n in members.live_nodes(asking=b)] == [a, b], "the asking node counts as live"


def test_a_node_that_left_is_not_live_and_joining_again_brings_it_back(members):
    a = join(members, "a")
    with members.store.tx():
        members.leave(a)
    assert members.live_ids() == set()
    join(members, "a")
    assert members.live_ids() == {a}


def test_train_is_granted_while_the_run_has_fewer_live_trainers_than_max_trainers(members, clock):
    t = join(members, "t", roles=(TRAIN,))
    assert members.is_trainer(t)
    with pytest.raises(NoTrainSlot):
        members.grant_roles("x" * 32, [TRAIN])
    assert members.grant_roles("x" * 32, []) == [ROLLOUT]
    assert members.grant_roles(t, [TRAIN]) == [TRAIN], "a restarted trainer (same key) gets its role back"
    clock.advance(3.1 * HEARTBEAT_S)
    assert members.grant_roles("x" * 32, [TRAIN]) == [TRAIN], "the trainer fell silent: its slot is free"


def test_a_trainer_trains_on_the_device_its_calls_name_else_the_one_it_joined_with(members):
    members.max_trainers = 3
    gpu, cpu = join(members, "g", roles=(TRAIN,), device="cuda"), join(members, "c", roles=(TRAIN,))
    rollout = join(members, "r")
    assert members.trainer_devices(asking=gpu) == {gpu: "cuda", cpu: "cpu"}
    members.note_device(gpu, "cpu")  # a GPU box run with --device cpu
    members.note_device(cpu, "")  # naming none changes nothing
    assert members.trainer_devices(asking=gpu) == {gpu: "cpu", cpu: "cpu"}
    assert rollout in members.trainer_devices(asking=rollout), "the asking node is counted"
    join(members, "g", roles=(TRAIN,), device="cuda")
    assert members.trainer_devices(asking=cpu)[gpu] == "cuda", "a node joining again says its device again"


def test_weight_holders_are_live_nodes_at_the_version_with_a_peer_id(members, clock):
    a, b = join(members, "a"), join(members, "b")
    join(members, "n", peer_id="")  # no p2p address: nobody can fetch from it
    members.heartbeat(a, policy_version=0, activity="", tokens_per_s=0.0)
    clock.advance(1.0)
    members.heartbeat(b, policy_version=0, activity="", tokens_per_s=0.0)
    assert [n["node_id"] for n in members.weight_holders(0)] == [b, a], "the most recently heard first"
    assert members.weight_holders(1) == []
