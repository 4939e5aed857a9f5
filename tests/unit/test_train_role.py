"""The train role's decisions with a fake coordinator: what a worker reports for its step and what it
does with each answer (published, rejected, pending, resync, wait, finished), a failed all-reduce,
which optimizer state goes with the weights it takes, and when it serves its training state.
A real step of the tiny model where the weights matter; no sockets, no processes."""

import copy
import dataclasses

import pytest
import torch

from swarmgrpo.node import train_role
from swarmgrpo.node.train_role import TrainRole
from swarmgrpo.p2p import train_state
from swarmgrpo.p2p.allreduce import AllReduceError
from swarmgrpo.p2p.weights import encode_model
from swarmgrpo.protocol import swarm_pb2
from swarmgrpo.trainer.checkpoint import node_checkpoints
from swarmgrpo.trainer.config import TrainConfig
from tests.unit.node_fakes import FakeClient, joined

FINISHED = swarm_pb2.TrainBatchReply(status=swarm_pb2.BATCH_FINISHED)


def _batch(workers: int = 1, attempt: int = 0) -> swarm_pb2.TrainBatchReply:
    completions = [
        swarm_pb2.Completion(token_ids=[5, 6, 7], logprobs=[-1.0, -1.0, -1.0]),
        swarm_pb2.Completion(token_ids=[8, 9], logprobs=[-1.0, -1.0]),
    ]
    return swarm_pb2.TrainBatchReply(
        status=swarm_pb2.BATCH_READY,
        groups=[
            swarm_pb2.TrainGroup(
                prompt_index=3, prompt_token_ids=[1, 2, 3], completions=completions, rewards=[1.0, 0.0]
            )
        ],
        workers=[swarm_pb2.Worker(node_id=f"n{i}", peer_id=f"p{i}") for i in range(workers)],
        attempt=attempt,
    )


class RecordedStateSync:
    """Stands in for TrainStateSync: takes each policy it is given as the node's version."""

    def __init__(self, progress):
        self.progress = progress
        self.synced: list[int] = []

    def sync(self, policy):
        self.synced.append(policy.policy_version)
        self.progress.version = policy.policy_version
        return True


class NoServer:
    def __init__(self, host, snapshot):
        self.snapshot = snapshot

    def close(self):
        pass


@pytest.fixture
def role_of(tiny, monkeypatch, tmp_path):
    """A train role on a copy of the tiny model, its state sync recorded and no libp2p server."""
    monkeypatch.setattr(train_role, "TrainStateServer", NoServer)

    def make(client, **cfg) -> TrainRole:
        node = joined(client, cfg=dataclasses.replace(TrainConfig(), **cfg), state_dir=str(tmp_path))
        role = TrainRole(node, copy.deepcopy(tiny[0]), tiny[1])
        role.state = RecordedStateSync(node.progress)
        return role

    return make


def test_a_published_step_is_reported_with_the_weights_it_serves_and_checkpointed(role_of, tmp_path):
    published = swarm_pb2.StepReply(status=swarm_pb2.STEP_PUBLISHED, policy_version=1)
    client = FakeClient(train_batch=[_batch(attempt=2), FINISHED], report_step=[published])
    role = role_of(client, save_steps=1)
    role.run()
    [((step, sha, metrics), report)] = client.named("report_step")
    [(version, data, served_sha, fp8)] = role.joined.transport.published
    assert (step, version, served_sha, fp8) == (0, 1, sha, None)
    assert (data, sha) == encode_model(role.model, "bfloat16")  # what it reports is what it serves
    assert report["attempt"] == 2 and report["weight_bytes"] == len(data) and report["state_hash"]
    assert report["set_aside_prompts"] == [] and metrics["shard_weight"] > 0
    assert role.progress.version == 1 and role.step.version == 1
    assert (node_checkpoints(tmp_path, "run") / "checkpoint-1" / "optimizer.pt").is_file()
    assert [args for args, _ in client.named("train_batch")] == [(0, 0, []), (1, 0, [])]


def test_a_rejected_step_takes_the_run_state_instead(role_of, tmp_path):
    rejected = swarm_pb2.StepReply(status=swarm_pb2.STEP_REJECTED, message="other weights won")
    client = FakeClient(
        train_batch=[_batch(), FINISHED],
        report_step=[rejected],
        policy=[swarm_pb2.PolicyState(policy_version=4)],
    )
    role = role_of(client, save_steps=1)
    role.run()
    assert role.state.synced == [4] and role.progress.version == 4 and role.step.version == 4
    assert not node_checkpoints(tmp_path, "run").exists()


def test_resync_wait_and_finished(role_of):
    resync = swarm_pb2.TrainBatchReply(
        status=swarm_pb2.BATCH_RESYNC, policy=swarm_pb2.PolicyState(policy_version=7)
    )
    wait = swarm_pb2.TrainBatchReply(status=swarm_pb2.BATCH_WAIT, retry_after_s=1.5)
    client = FakeClient(train_batch=[resync, wait, FINISHED])
    role = role_of(client)
    role.run()
    assert role.state.synced == [7] and role.step.version == 7
    assert role.joined.waited == [1.5]
    assert [args[0] for args, _ in client.named("train_batch")] == [0, 7, 7]
    assert client.named("report_step") == []


class FakeStep:
    def reduce(self, reducer, *args):
        return reducer(*args)

    def shard_weight(self, groups):
        return 2.0


class FailingAverager:
    """Fails the first all-reduce for want of member 1, then averages."""

    powersgd = None

    def __init__(self):
        self.rounds = []

    def average(self, round_id, members, shard_index, weight):
        self.rounds.append((round_id, [m.peer_id for m in members], weight))
        if len(self.rounds) == 1:
            raise AllReduceError("member 1 did not answer", missing=[1])
        return {"allreduce_s": 0.1}


def test_a_failed_all_reduce_names_the_missing_and_goes_again_with_the_new_team(role_of):
    client = FakeClient(train_batch=[_batch(workers=2, attempt=1)])
    role = role_of(client)
    role.averager = FailingAverager()
    stats = role._average(FakeStep(), _batch(workers=3), groups=[])
    assert [args for args, _ in client.named("train_batch")] == [(0, 0, ["n1"])]
    assert role.averager.rounds == [("run/0/0", ["p0", "p1", "p2"], 2.0), ("run/0/1", ["p0", "p1"], 2.0)]
    assert stats == {"allreduce_s": 0.1, "workers": 2.0} and role.attempt == 1


@pytest.mark.parametrize(
    ("answer", "stats"),
    [
        (_batch(workers=1, attempt=1), {"workers": 1.0}),
        (swarm_pb2.TrainBatchReply(status=swarm_pb2.BATCH_WAIT), None),
    ],
)
def test_after_a_failed_all_reduce_it_trains_alone_or_is_dropped(role_of, answer, stats):
    role = role_of(FakeClient(train_batch=[answer]))
    role.averager = FailingAverager()
    assert role._average(FakeStep(), _batch(workers=2), groups=[]) == stats


@pytest.mark.parametrize(
    ("published", "status"),
    [
        (swarm_pb2.PolicyState(policy_version=1, weight_hash="mine"), swarm_pb2.STEP_PUBLISHED),
        (swarm_pb2.PolicyState(policy_version=1, weight_hash="theirs"), swarm_pb2.STEP_REJECTED),
        (swarm_pb2.PolicyState(policy_version=2, weight_hash="mine"), swarm_pb2.STEP_REJECTED),
    ],
)
def test_await_publication_is_published_only_for_its_own_weights_at_the_next_version(
    role_of, published, status
):
    client = FakeClient(policy=[swarm_pb2.PolicyState(policy_version=0), published])
    role = role_of(client)
    reply = role._await_publication("mine")
    assert reply.status == status and role.joined.waited == [0.2]
    asked = {"after_version": 0, "wait_s": train_role.LONG_POLL_S}
    assert [kw for _, kw in client.named("policy")] == [asked, asked]  # long polls for the next version
    if status == swarm_pb2.STEP_PUBLISHED:
        assert reply.policy_version == 1


def test_await_publication_of_a_stopped_node_is_a_rejection(role_of):
    role = role_of(FakeClient())
    role.joined.stop.set()
    assert role._await_publication("mine").message == "the step was not published in time"


class FakeOptimizer:
    def __init__(self):
        self.state = {"moments": 1}
        self.loaded = []

    def load_state_dict(self, state):
        self.loaded.append(state)


class FakePowerSGD:
    def __init__(self):
        self.loaded = []

    def load_state(self, state):
        self.loaded.append(state)


def test_the_optimizer_state_taken_waits_for_the_step_or_goes_into_it(role_of):
    role = role_of(FakeClient())
    agreed = {"optimizer": {"adamw": 1}, "powersgd": {"q": 2}}
    role._adopt(agreed)
    assert role.pending_state is agreed  # no step yet: the train loop loads it
    role._adopt(None)
    assert role.pending_state is None
    role.step = type("Step", (), {"optimizer": FakeOptimizer(), "version": 0})()
    role.averager = type("Averager", (), {"powersgd": FakePowerSGD()})()
    role.progress.version = 6
    role._adopt(agreed)
    assert role.step.optimizer.loaded == [{"adamw": 1}] and role.step.version == 6
    assert role.averager.powersgd.loaded == [{"q": 2}]
    role._adopt(None)
    assert role.step.optimizer.state == {}  # a fresh start: AdamW's moments begin again


def test_it_serves_its_training_state_only_between_steps_at_the_version_asked(role_of):
    client = FakeClient(train_batch=[FINISHED])
    role = role_of(client)
    assert role._snapshot(0) is None  # no step built yet
    role.run()
    assert role._snapshot(1) is None  # not the version it holds
    state = train_state.unpack(role._snapshot(0))
    weights = role.model.state_dict()
    assert state["version"] == 0 and state["model"] and state["model"].keys() <= weights.keys()
    assert all(torch.equal(t, weights[name]) for name, t in state["model"].items())
    assert not role.snapshot_wanted.is_set() and not role.train_lock.locked()


def test_set_aside_names_the_prompts_of_the_groups_the_step_set_aside(role_of):
    role = role_of(FakeClient())
    step = type("Step", (), {"set_aside": [1]})()
    reply = _batch()
    reply.groups.add(prompt_index=9)
    assert role._set_aside(step, reply) == [9]
