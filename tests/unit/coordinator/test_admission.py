"""Who may make a request: Join only with the run's token, anything else only from a joined node's
key, signed; a replayed nonce is refused."""

import asyncio

import grpc
import pytest

from swarmgrpo.coordinator.admission import Admission, StrangerRefused
from swarmgrpo.coordinator.config import RunConfig
from swarmgrpo.protocol import PROTOCOL_VERSION, swarm_pb2, validate
from swarmgrpo.protocol.signing import AuthError, NodeKey


class Aborted(Exception):
    pass


class Context:
    """A gRPC context that records the status a call was aborted with."""

    def __init__(self):
        self.code = None

    async def abort(self, code, message):
        self.code = code
        raise Aborted(message)

    def peer(self):
        return "ipv4:127.0.0.1:5000"


@pytest.fixture
def admission(store):
    cfg = RunConfig()
    limits = validate.Limits(1000, cfg.train.num_generations, cfg.train.max_completion_length)
    return Admission(store, "secret", limits, 30.0, cfg.rate_limits, cfg.prompts_per_lease)


def test_join_needs_the_runs_token_and_other_calls_a_joined_key(admission):
    key = NodeKey.generate()
    join = swarm_pb2.JoinRequest(join_token="wrong", protocol_version=PROTOCOL_VERSION)
    key.sign("Join", join, include_public_key=True)
    with pytest.raises(StrangerRefused, match="wrong join token") as e:
        admission.claimed_key("Join", join)
    assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
    join.join_token = "secret"
    assert admission.claimed_key("Join", join) == key.public_key
    lease = swarm_pb2.LeaseRequest()
    lease.auth.node_id = key.node_id
    with pytest.raises(AuthError, match="unknown node: join first"):
        admission.claimed_key("Lease", lease)


def test_a_signed_request_passes_once_and_its_replay_is_refused(admission):
    key = NodeKey.generate()
    join = swarm_pb2.JoinRequest(join_token="secret", protocol_version=PROTOCOL_VERSION)
    key.sign("Join", join, include_public_key=True)

    async def check() -> tuple[grpc.StatusCode | None, str]:
        context = Context()
        try:
            await admission.checked("Join", join, context, lambda r, lim: None)
        except Aborted as e:
            return context.code, str(e)
        return None, ""

    assert asyncio.run(check()) == (None, "")
    assert asyncio.run(check()) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "nonce already used: a replayed request is refused",
    )
