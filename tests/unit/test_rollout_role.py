"""The rollout role's loop with a fake coordinator and a fake engine: what it submits for the lease it
holds, and what it does with each answer (finished, resync, wait, a refused or accepted submission)."""

import grpc
import pytest

from swarmgrpo.node.daemon import role_for
from swarmgrpo.node.engines.base import SamplingParams
from swarmgrpo.node.rollout_role import RolloutRole
from swarmgrpo.node.train_role import TrainRole
from swarmgrpo.protocol import swarm_pb2
from swarmgrpo.protocol.client import CoordinatorError
from tests.unit.node_fakes import FakeClient, FakeEngine, joined

FINISHED = swarm_pb2.LeaseReply(status=swarm_pb2.LEASE_FINISHED)


def _lease(lease_id: str, version: int = 3) -> swarm_pb2.LeaseReply:
    return swarm_pb2.LeaseReply(
        status=swarm_pb2.LEASE_GRANTED,
        lease_id=lease_id,
        policy_version=version,
        prompts=[
            swarm_pb2.Prompt(prompt_index=4, token_ids=[10, 11, 12]),
            swarm_pb2.Prompt(prompt_index=7, token_ids=[20]),
        ],
        group_size=2,
        sampling=swarm_pb2.Sampling(temperature=0.5, top_p=0.9, top_k=5, max_tokens=8, seed=99),
    )


def _accepted(version: int = 3) -> swarm_pb2.SubmitReply:
    return swarm_pb2.SubmitReply(
        status=swarm_pb2.SUBMIT_ACCEPTED,
        accepted_groups=2,
        rewards=[swarm_pb2.GroupRewards(rewards=[1.0, 0.0])] * 2,
        policy=swarm_pb2.PolicyState(policy_version=version),
    )


class RecordedSync:
    """Stands in for the role's WeightSync: what it was asked to take, and when."""

    def __init__(self):
        self.synced: list[int] = []
        self.caught_up = 0

    def sync(self, policy, force=False):
        self.synced.append(policy.policy_version)
        return True

    def catch_up(self):
        self.caught_up += 1


def _role(client, engine=None, **opts):
    role = RolloutRole(joined(client, **opts), engine or FakeEngine())
    role.weights = RecordedSync()
    return role


def test_submits_what_it_generated_for_the_lease_it_holds():
    client = FakeClient(lease=[_lease("L1"), FINISHED], submit=[_accepted()])
    engine = FakeEngine()
    role = _role(client, engine, max_prompts=5)
    role.progress.version = 3
    role.run()
    assert [args for args, _ in client.named("lease")] == [(3, 5), (3, 5)]  # its version, its --max-prompts
    assert engine.asked == [([[10, 11, 12], [20]], 2, SamplingParams(8, 0.5, pytest.approx(0.9), 5, seed=99))]
    [((request,), _)] = client.named("submit")
    assert request.lease_id == "L1" and request.policy_version == 3
    assert [g.prompt_index for g in request.groups] == [4, 7]
    assert [[list(c.token_ids) for c in g.completions] for g in request.groups] == [
        [[10, 7], [11, 7]],
        [[20, 7], [21, 7]],
    ]
    assert [list(c.logprobs) for c in request.groups[0].completions] == [[-0.5, -0.25], [-1.5, -0.25]]
    assert request.generation_s > 0 and role.progress.tokens_per_s > 0
    assert role.weights.synced == []  # the reply's policy is the one it holds


def test_goes_on_after_a_scoring_budget_refusal():
    refused = CoordinatorError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "scoring took more CPU than the run allows"
    )
    client = FakeClient(lease=[_lease("L1"), _lease("L2"), FINISHED], submit=[refused, _accepted()])
    _role(client).run()
    assert [args[0].lease_id for args, _ in client.named("submit")] == ["L1", "L2"]
    assert len(client.named("lease")) == 3


def test_a_refusal_it_cannot_act_on_reaches_the_daemon():
    denied = CoordinatorError(grpc.StatusCode.PERMISSION_DENIED, "not a member of this run")
    client = FakeClient(lease=[_lease("L1")], submit=[denied])
    with pytest.raises(CoordinatorError) as raised:
        _role(client).run()
    assert raised.value is denied


def test_resync_wait_and_a_newer_policy_each_bring_the_weights_up():
    resync = swarm_pb2.LeaseReply(
        status=swarm_pb2.LEASE_RESYNC, policy=swarm_pb2.PolicyState(policy_version=4)
    )
    wait = swarm_pb2.LeaseReply(status=swarm_pb2.LEASE_WAIT, retry_after_s=2.5)
    client = FakeClient(lease=[resync, wait, _lease("L1"), FINISHED], submit=[_accepted(version=6)])
    role = _role(client)
    role.run()
    assert role.weights.synced == [4, 6]  # the lease's resync, then the submission reply's newer policy
    assert role.joined.waited == [2.5] and role.weights.caught_up == 1


def test_a_stopped_node_leases_nothing():
    client = FakeClient()
    role = _role(client)
    role.joined.stop.set()
    role.run()
    assert client.calls == []


def test_it_takes_the_published_policy_first_when_the_run_has_one():
    client = FakeClient(policy=[swarm_pb2.PolicyState(policy_version=2)], lease=[FINISHED])
    role = _role(client)
    role.joined.policy_at_join = 2
    role.run()
    assert role.weights.synced == [2]
    assert [name for name, _, _ in client.calls] == ["policy", "lease"]


@pytest.mark.parametrize(
    ("weights_format", "quantization", "fp8"),
    [("auto", "fp8", True), ("auto", None, False), ("bf16", "fp8", False), ("fp8", None, True)],
)
def test_fetches_fp8_weights_when_it_asks_for_them_or_rolls_out_in_fp8(weights_format, quantization, fp8):
    role = RolloutRole(joined(FakeClient(), weights_format=weights_format), FakeEngine(quantization))
    assert role.weights.fp8 is fp8


def test_close_closes_the_engine():
    engine = FakeEngine()
    RolloutRole(joined(FakeClient()), engine).close()
    assert engine.closed


def test_the_daemon_picks_the_role_object_from_the_granted_roles():
    assert role_for([swarm_pb2.ROLE_TRAIN]) is TrainRole
    assert role_for([swarm_pb2.ROLE_ROLLOUT]) is RolloutRole
    assert role_for([]) is RolloutRole
