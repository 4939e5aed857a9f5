"""Attacks on who trains, who is dropped, what is published and who gets work, against a real
coordinator process (gRPC + SQLite), played by signed clients with keys of their own."""

import threading
import time

import grpc
import pytest

from swarmgrpo.protocol import swarm_pb2
from swarmgrpo.protocol.client import CoordinatorError
from tests.integration.test_network import _count, _fake_groups, _join

pytestmark = pytest.mark.integration

TRAIN = (swarm_pb2.ROLE_TRAIN,)
REAL, BOGUS = "ab" * 32, "ee" * 32


def _fill_steps(net, steps: int = 2) -> None:
    rollout, _ = _join(net)
    for _ in range(steps):
        assert rollout.submit(_fake_groups(rollout.lease(0, 2))).status == swarm_pb2.SUBMIT_ACCEPTED


def _versions(net) -> list[tuple[int, str, str]]:
    with net.db() as db:
        return db.execute("SELECT version, weight_hash, node_id FROM versions ORDER BY version").fetchall()


@pytest.mark.parametrize("network", [{"max_trainers": 1}], indirect=True)
def test_nodes_not_granted_train_neither_train_nor_drop_the_trainer_nor_publish(network):
    """A rollout node calls TrainBatch, names the trainer missing and reports weights of its choice;
    three fresh keys ask for the train role while the run has its one trainer; a key granted the
    slot while the trainer was silent tries to take its step. None of them enters a team: the honest
    trainer trains the step alone and publishes its own weights."""
    network.start_coordinator()
    honest, joined = _join(network, roles=TRAIN, peer_id="peer-honest")
    assert list(joined.roles) == [swarm_pb2.ROLE_TRAIN]
    _fill_steps(network)
    for _ in range(3):
        honest.heartbeat(0, "waiting", 0.0)  # live: its slot is taken
        with pytest.raises(CoordinatorError) as e:
            _join(network, roles=TRAIN, peer_id="peer-fake")
        assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_trainers=1" in str(e.value)
    rollouts = []
    for i in range(3):
        honest.heartbeat(0, "waiting", 0.0)
        rollouts.append(_join(network, roles=(), peer_id=f"peer-auto{i}"))
    assert all(list(r.roles) == [swarm_pb2.ROLE_ROLLOUT] for _, r in rollouts), "the run has its trainer"
    attackers = [client for client, _ in rollouts] + [_join(network, peer_id="peer-rollout")[0]]
    for attacker in attackers:
        for claim in ([], [honest.key.node_id]):
            with pytest.raises(CoordinatorError) as e:
                attacker.train_batch(0, failed_attempt=0, missing_node_ids=claim)
            assert e.value.code == grpc.StatusCode.PERMISSION_DENIED and "train role" in str(e.value)
        assert attacker.report_step(0, BOGUS, {}).status == swarm_pb2.STEP_REJECTED
    # The trainer falls silent for 3 heartbeats: a new key gets the free slot, but when the trainer
    # is heard from again the step's team is the senior one, and the new key stands by.
    time.sleep(3.5)
    late, joined = _join(network, roles=TRAIN, peer_id="peer-late")
    assert list(joined.roles) == [swarm_pb2.ROLE_TRAIN]
    honest.heartbeat(0, "back", 0.0)
    standby = late.train_batch(0)
    assert standby.status == swarm_pb2.BATCH_WAIT and "trained by 1 other worker" in standby.message, standby
    batch = honest.train_batch(0)
    assert batch.status == swarm_pb2.BATCH_READY
    assert [w.node_id for w in batch.workers] == [honest.key.node_id] and len(batch.groups) == 2
    assert late.report_step(0, BOGUS, {}).status == swarm_pb2.STEP_REJECTED
    assert honest.report_step(0, REAL, {}).status == swarm_pb2.STEP_PUBLISHED
    assert _versions(network) == [(1, REAL, honest.key.node_id)]


@pytest.mark.parametrize("network", [{"max_trainers": 2}], indirect=True)
def test_a_granted_fake_trainer_can_neither_drop_its_honest_teammate_nor_publish_alone(network):
    """Three fake keys against one honest trainer, with a free trainer slot: one fake takes it, the
    other two are refused. In the step's team of two, the fake names the honest trainer missing
    (it still heartbeats: it stays) and reports other weights (no majority: nothing is published)."""
    network.start_coordinator()
    honest, _ = _join(network, roles=TRAIN, peer_id="peer-honest")
    fake, joined = _join(network, roles=TRAIN, peer_id="peer-fake")
    assert list(joined.roles) == [swarm_pb2.ROLE_TRAIN]
    for _ in range(2):
        honest.heartbeat(0, "waiting", 0.0)
        fake.heartbeat(0, "waiting", 0.0)
        with pytest.raises(CoordinatorError) as e:
            _join(network, roles=TRAIN, peer_id="peer-fake")
        assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    _fill_steps(network)
    team = sorted([honest.key.node_id, fake.key.node_id])
    assert sorted(w.node_id for w in fake.train_batch(0).workers) == team
    assert sorted(w.node_id for w in honest.train_batch(0).workers) == team
    honest.heartbeat(0, "training", 0.0)
    claimed = fake.train_batch(0, failed_attempt=0, missing_node_ids=[honest.key.node_id])
    assert claimed.status == swarm_pb2.BATCH_READY and claimed.attempt == 0
    assert sorted(w.node_id for w in claimed.workers) == team, "one peer's word dropped the honest trainer"
    assert "the coordinator still hears from them" in claimed.message
    assert fake.report_step(0, BOGUS, {}).status == swarm_pb2.STEP_PENDING
    voided = honest.report_step(0, REAL, {})
    assert voided.status == swarm_pb2.STEP_REJECTED and "majority" in voided.message, voided
    time.sleep(1.5)  # the server's publish check runs every second: it must not publish either
    assert _versions(network) == []
    again = honest.train_batch(0)
    assert again.attempt == 1 and sorted(w.node_id for w in again.workers) == team


@pytest.mark.parametrize("network", [{"lease_timeout_s": 6.0}], indirect=True)
def test_four_hoarding_keys_leave_an_honest_node_served_within_one_lease_timeout(network):
    """Four keys lease and never submit, asking again the moment each lease expires (and holding
    Lease calls open meanwhile); an honest node that asks after them is served when their first
    leases expire, within one lease timeout of asking."""
    network.start_coordinator()  # 2 prompts a step, k = 1: 4 prompts may be out, 2 a lease
    timeout = 6.0
    hoarders = [_join(network)[0] for _ in range(4)]
    stop = threading.Event()

    def hoard(client):
        while not stop.is_set():
            reply = client.lease(0, 2, wait_s=0.5)
            if reply.status == swarm_pb2.LEASE_GRANTED:  # sit on it, then ask again as it expires
                stop.wait(max(0.0, reply.deadline_ms / 1000 - time.time() + 0.01))

    threads = [threading.Thread(target=hoard, args=(h,), daemon=True) for h in hoarders]
    for t in threads:
        t.start()
    try:
        while _count(network, "SELECT COUNT(*) FROM leases WHERE state = 'open'") < 2:
            time.sleep(0.1)
        honest, _ = _join(network)
        asked = time.monotonic()
        while (reply := honest.lease(0, 2, wait_s=1.0)).status != swarm_pb2.LEASE_GRANTED:
            assert reply.status == swarm_pb2.LEASE_WAIT, reply
            assert time.monotonic() - asked < 3 * timeout, "the honest node was starved"
        waited = time.monotonic() - asked
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    print(f"honest node served after {waited:.1f} s (lease_timeout_s = {timeout:g})")
    # Leases are expired by the server's one-second check or by the next Lease call.
    assert waited < timeout + 1.5, f"served after {waited:.1f} s"
    assert honest.submit(_fake_groups(reply)).status == swarm_pb2.SUBMIT_ACCEPTED
