"""The lease book: one open lease per node, the staleness bound on leases and submissions, expiry
and the re-issue of an expired lease's prompts, and the budget of prompts per open step."""

import pytest

from swarmgrpo.coordinator.leases import Group, LeaseBook, Refusal
from swarmgrpo.coordinator.membership import Membership
from swarmgrpo.coordinator.store import Lease
from swarmgrpo.protocol import swarm_pb2
from tests.unit.coordinator.fakes import HEARTBEAT_S, join, new_prompt

TIMEOUT_S = 60.0


@pytest.fixture
def notified():
    return []


def book(store, clock, notified, max_staleness=1, prompts_per_step=2, prompts_per_lease=2) -> LeaseBook:
    return LeaseBook(
        store,
        max_staleness=max_staleness,
        max_steps=10,
        prompts_per_step=prompts_per_step,
        prompts_per_lease=prompts_per_lease,
        lease_timeout_s=TIMEOUT_S,
        line_grace_s=2.0,
        new_prompt=new_prompt,
        notify=lambda: notified.append(1),
        clock=clock,
    )


def nodes(store, clock, *names) -> list[str]:
    members = Membership(store, HEARTBEAT_S, max_trainers=1, clock=clock)
    return [join(members, n) for n in names]


def publish(store, version: int) -> None:
    with store.tx():
        store.add_version(version, f"{version:064x}", "t" * 32, {})


def groups(lease: Lease) -> list[Group]:
    return [Group(i, [[5, 6]], [[-0.1, -0.2]]) for i in lease.prompt_indices]


def test_a_node_holds_one_lease_however_often_it_asks(store, clock, notified):
    leases = book(store, clock, notified)
    a, b = nodes(store, clock, "a", "b")
    first = leases.grant(a, 0, max_prompts=8)
    assert isinstance(first, Lease) and len(first.prompt_indices) == 2, "prompts_per_lease bounds it"
    for _ in range(3):
        assert leases.grant(a, 0, max_prompts=8) == first, "a retried ask gets the lease it holds"
    assert [lease.lease_id for lease in store.open_leases(node_id=a)] == [first.lease_id]
    theirs = leases.grant(b, 0, max_prompts=8)
    assert set(theirs.prompt_indices).isdisjoint(first.prompt_indices)
    with store.tx():
        assert leases.give_back_all(a) == 2, "a node joining again gives its lease back"
    assert store.lease(first.lease_id).state == "returned"


def test_asking_at_another_version_gives_the_held_lease_back(store, clock, notified):
    leases = book(store, clock, notified)
    (a,) = nodes(store, clock, "a")
    old = leases.grant(a, 0, max_prompts=2)
    publish(store, 1)
    new = leases.grant(a, 1, max_prompts=2)
    assert new.lease_id != old.lease_id and new.policy_version == 1
    assert store.lease(old.lease_id).state == "returned" and notified
    assert new.prompt_indices == old.prompt_indices, "the returned prompts are leased first"


def test_a_node_older_than_the_staleness_bound_must_resync_before_it_leases(store, clock, notified):
    leases = book(store, clock, notified, max_staleness=1)
    publish(store, 1)
    publish(store, 2)
    assert leases.too_old(1) is None
    assert leases.too_old(0) == (
        "max_staleness=1 but the node's policy is 2 versions old; fetch version 2 and ask again"
    )


def test_a_submission_sampled_before_the_staleness_bound_is_refused_and_its_prompts_freed(
    store, clock, notified
):
    leases = book(store, clock, notified, max_staleness=1)
    (a,) = nodes(store, clock, "a")
    lease = leases.grant(a, 0, max_prompts=2)
    publish(store, 1)
    assert leases.closed(lease) is None, "one version old: within max_staleness=1"
    publish(store, 2)
    refusal = leases.closed(lease)
    assert refusal.status == swarm_pb2.SUBMIT_STALE and "2 versions old" in refusal.message
    assert store.lease(lease.lease_id).state == "stale"
    assert store.pool_prompts(8) == lease.prompt_indices


def test_an_expired_lease_is_refused_and_its_prompts_are_leased_again(store, clock, notified):
    leases = book(store, clock, notified, max_staleness=0)
    a, b = nodes(store, clock, "a", "b")
    lease = leases.grant(a, 0, max_prompts=2)
    refused = leases.grant(b, 0, max_prompts=2)
    assert isinstance(refused, Refusal) and refused.status == swarm_pb2.LEASE_WAIT
    assert "covered" in refused.message, "k = 0: step 0's prompts are all out"
    clock.advance(TIMEOUT_S - 1)
    assert leases.expire() == 0
    clock.advance(2)
    assert leases.expire() == 1 and notified
    assert leases.closed(store.lease(lease.lease_id)).status == swarm_pb2.SUBMIT_EXPIRED
    again = leases.grant(b, 0, max_prompts=2)
    assert again.prompt_indices == lease.prompt_indices and again.node_id == b


def test_a_lease_past_its_deadline_is_refused_even_before_the_expiry_sweep(store, clock, notified):
    leases = book(store, clock, notified)
    (a,) = nodes(store, clock, "a")
    lease = leases.grant(a, 0, max_prompts=2)
    clock.advance(TIMEOUT_S + 1)
    assert leases.closed(lease).status == swarm_pb2.SUBMIT_EXPIRED
    assert store.lease(lease.lease_id).state == "expired"


def test_an_accepted_lease_stores_its_rollouts_and_a_second_submission_is_a_duplicate(store, clock, notified):
    leases = book(store, clock, notified)
    (a,) = nodes(store, clock, "a")
    lease = leases.grant(a, 0, max_prompts=2)
    leases.accept(lease, groups(lease), [[1.0], [0.0]], generation_s=2.0)
    assert store.unused_rollouts(0) == 2
    assert store.counts()["tokens_accepted"] == 4
    refusal = leases.closed(store.lease(lease.lease_id))
    assert refusal.status == swarm_pb2.SUBMIT_DUPLICATE


def test_work_is_handed_out_for_the_steps_up_to_v_plus_k(store, clock, notified):
    leases = book(store, clock, notified, max_staleness=1, prompts_per_step=2, prompts_per_lease=2)
    a, b, c = nodes(store, clock, "a", "b", "c")
    assert leases.open_steps() == 2, "steps 0 and 1"
    assert len(leases.grant(a, 0, 2).prompt_indices) == 2
    assert len(leases.grant(b, 0, 2).prompt_indices) == 2
    refused = leases.grant(c, 0, 2)
    assert refused.status == swarm_pb2.LEASE_WAIT and "batches up to step 1 are covered" in refused.message
    publish(store, 1)
    assert leases.open_steps() == 2, "steps 1 and 2"
