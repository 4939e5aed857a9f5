"""Step teams and publishing as TrainBatch calls and reports come in: the team's formation, the
wait for trainers still copying the step's state, the standby of a CPU trainer beside a GPU one, the
team formed again when its workers die, drops on evidence, a hash published only with a majority,
and a void on a tie."""

import pytest

from swarmgrpo.coordinator.membership import Membership
from swarmgrpo.coordinator.steps import Steps
from swarmgrpo.protocol import swarm_pb2
from tests.unit.coordinator.fakes import HEARTBEAT_S, TRAIN, join, new_prompt

# (weight hash, *store.MANIFEST): what the workers of a step agree on
H1 = ("1" * 64, "", 100, 0, "a" * 64, 200)
H2 = ("2" * 64, "", 100, 0, "b" * 64, 200)


@pytest.fixture
def members(store, clock):
    return Membership(store, HEARTBEAT_S, max_trainers=3, clock=clock)


def steps(store, members, clock, prompts_per_step=2) -> Steps:
    return Steps(
        store,
        members,
        max_staleness=1,
        max_steps=10,
        prompts_per_step=prompts_per_step,
        max_trainers=3,
        heartbeat_interval_s=HEARTBEAT_S,
        clock=clock,
    )


def rollouts(store, n: int, version: int = 0) -> None:
    """n accepted groups of rollouts sampled at `version`, unused by any batch yet."""
    with store.tx():
        for _ in range(n):
            index = int(store.get_meta("next_prompt_index"))
            store.add_prompt(index, *new_prompt(index))
            store.set_meta("next_prompt_index", index + 1)
            store.add_rollout(index, "lease", "r" * 32, version, [[5, 6]], [[-0.1, -0.2]], [1.0])


def trainers(members, *names, device="cpu") -> list[str]:
    return [join(members, n, roles=(TRAIN,), device=device) for n in names]


def beat(members, *node_ids, version: int = 0) -> None:
    for n in node_ids:
        members.heartbeat(n, policy_version=version, activity="", tokens_per_s=0.0)


def test_the_live_trainers_at_the_step_share_its_batch_one_shard_each(store, members, clock):
    s = steps(store, members, clock)
    a, b = trainers(members, "a", "b")
    assert s.train_batch(a, 0).status == swarm_pb2.BATCH_WAIT, "no rollouts yet"
    rollouts(store, 2)
    resync = s.train_batch(a, 1)
    assert resync.status == swarm_pb2.BATCH_RESYNC and "run is at 0" in resync.message
    first, second = s.train_batch(a, 0), s.train_batch(b, 0)
    assert first.status == second.status == swarm_pb2.BATCH_READY
    assert first.team is second.team and first.team.members == [a, b]
    assert sorted(rid for shard in first.team.shards.values() for rid in shard) == [r.id for r in first.batch]
    assert all(len(shard) == 1 for shard in first.team.shards.values())


def test_a_cpu_trainer_stands_by_beside_a_gpu_one_and_takes_over_when_it_dies(store, members, clock):
    s = steps(store, members, clock)
    (cpu,) = trainers(members, "c")
    (gpu,) = trainers(members, "g", device="cuda")
    rollouts(store, 2)
    waits = s.train_batch(cpu, 0, device="cpu")
    assert waits.status == swarm_pb2.BATCH_WAIT and waits.message.startswith("standing by: 1 GPU trainer ")
    ready = s.train_batch(gpu, 0, device="cuda")
    assert ready.status == swarm_pb2.BATCH_READY and ready.team.members == [gpu]
    clock.advance(2 * HEARTBEAT_S)
    beat(members, cpu)
    clock.advance(1.2 * HEARTBEAT_S)  # the GPU trainer is silent 3.2 heartbeats: no longer live
    taken = s.train_batch(cpu, 0, device="cpu")
    assert taken.status == swarm_pb2.BATCH_READY and taken.team.members == [cpu]
    assert taken.team.attempt == 1 and len(taken.team.shards[cpu]) == 2, "formed again, with the whole batch"
    late = s.report(gpu, 0, attempt=0, agreed_on=H1, metrics={})
    assert late.status == swarm_pb2.STEP_REJECTED, "the dead team's late report"


def test_a_step_waits_for_trainers_still_copying_its_state_at_most_two_heartbeats(store, members, clock):
    s = steps(store, members, clock)
    a, b = trainers(members, "a", "b")
    rollouts(store, 2)
    with store.tx():
        store.add_version(1, H1[0], a, {})
    rollouts(store, 2, version=1)
    beat(members, a, version=1)
    waits = s.train_batch(a, 1)
    assert waits.status == swarm_pb2.BATCH_WAIT and "waits for 1 trainers copying version 1" in waits.message
    clock.advance(1.5 * HEARTBEAT_S)
    beat(members, a, b)  # b still holds version 0
    clock.advance(0.6 * HEARTBEAT_S)
    alone = s.train_batch(a, 1)
    assert alone.status == swarm_pb2.BATCH_READY and alone.team.members == [a], "waited 2 heartbeats"
    assert s.train_batch(b, 1).status == swarm_pb2.BATCH_WAIT, "not in this step's team: the next one"


def test_a_trainer_that_caught_up_during_the_wait_joins_the_team(store, members, clock):
    s = steps(store, members, clock)
    a, b = trainers(members, "a", "b")
    with store.tx():
        store.add_version(1, H1[0], a, {})
    rollouts(store, 2, version=1)
    beat(members, a, version=1)
    assert s.train_batch(a, 1).status == swarm_pb2.BATCH_WAIT
    beat(members, b, version=1)
    assert s.train_batch(a, 1).team.members == [a, b]


def test_a_worker_named_missing_stays_while_live_and_is_dropped_once_silent(store, members, clock):
    s = steps(store, members, clock)
    a, b = trainers(members, "a", "b")
    rollouts(store, 2)
    team = s.train_batch(a, 0).team
    kept = s.train_batch(a, 0, missing=[b], failed_attempt=0)
    assert kept.status == swarm_pb2.BATCH_READY and "stay in step 0" in kept.message
    assert team.members == [a, b] and team.attempt == 0
    clock.advance(2 * HEARTBEAT_S)
    beat(members, a)
    clock.advance(1.2 * HEARTBEAT_S)
    dropped = s.train_batch(a, 0, missing=[b], failed_attempt=0)
    assert dropped.status == swarm_pb2.BATCH_READY and dropped.team is team
    assert team.members == [a] and team.attempt == 1
    assert store.unused_rollouts(0) == 1, "the dropped worker's shard goes back to the pool"
    stale = s.train_batch(a, 0, missing=[b], failed_attempt=0)
    assert stale.team.attempt == 1, "a claim about an earlier attempt changes nothing"


def test_a_hash_is_published_only_with_a_majority_of_the_live_team(store, members, clock):
    s = steps(store, members, clock, prompts_per_step=3)
    a, b, c = trainers(members, "a", "b", "c")
    rollouts(store, 3)
    assert s.train_batch(a, 0).team.members == [a, b, c]
    assert s.report(a, 0, 0, H1, {"loss": 1.0}).status == swarm_pb2.STEP_PENDING
    pending = s.report(c, 0, 0, H2, {"loss": 2.0})
    assert pending.status == swarm_pb2.STEP_PENDING and "waiting for 1 other workers" in pending.message
    assert store.policy_version == 0
    published = s.report(b, 0, 0, H1, {"loss": 3.0})
    assert published.status == swarm_pb2.STEP_PUBLISHED and published.version == 1
    assert store.policy_version == 1 and store.version_manifest(1)["weight_hash"] == H1[0]
    assert store.versions()[-1]["metrics"]["workers"] == 2.0
    assert s.report(c, 0, 0, H2, {}).status == swarm_pb2.STEP_REJECTED, "step 0 is published"


def test_the_one_whose_report_completes_the_step_with_other_weights_is_told_to_resync(store, members, clock):
    s = steps(store, members, clock, prompts_per_step=3)
    a, b, c = trainers(members, "a", "b", "c")
    rollouts(store, 3)
    s.train_batch(a, 0)
    s.report(a, 0, 0, H1, {})
    s.report(b, 0, 0, H1, {})
    odd = s.report(c, 0, 0, H2, {})
    assert (
        odd.status == swarm_pb2.STEP_REJECTED
        and "differ from the 1 the other workers agreed on" in odd.message
    )
    assert store.version_manifest(1)["weight_hash"] == H1[0]


def test_a_tie_voids_the_attempt_and_publishes_nothing(store, members, clock):
    s = steps(store, members, clock)
    a, b = trainers(members, "a", "b")
    rollouts(store, 2)
    team = s.train_batch(a, 0).team
    assert s.report(a, 0, 0, H1, {}).status == swarm_pb2.STEP_PENDING
    void = s.report(b, 0, 0, H2, {})
    assert void.status == swarm_pb2.STEP_REJECTED and "the attempt is void" in void.message
    assert store.policy_version == 0 and team.attempt == 1 and team.reports == {}
    again = s.report(a, 0, 0, H1, {})
    assert again.status == swarm_pb2.STEP_REJECTED and "replaced by attempt 1" in again.message


def test_a_step_is_published_once_the_silent_workers_are_no_longer_live(store, members, clock):
    s = steps(store, members, clock)
    a, b = trainers(members, "a", "b")
    rollouts(store, 2)
    assert s.train_batch(a, 0).team.members == [a, b]
    assert s.report(a, 0, 0, H1, {}).status == swarm_pb2.STEP_PENDING
    s.publish_if_complete()
    assert store.policy_version == 0, "b is still live: its report is awaited"
    clock.advance(2 * HEARTBEAT_S)
    beat(members, a)
    clock.advance(1.2 * HEARTBEAT_S)
    s.publish_if_complete()
    assert store.policy_version == 1 and store.version_manifest(1)["weight_hash"] == H1[0]


def test_the_run_is_finished_at_max_steps(store, members, clock):
    s = steps(store, members, clock)
    s.max_steps = 0
    (a,) = trainers(members, "a")
    assert s.train_batch(a, 0).status == swarm_pb2.BATCH_FINISHED
