"""The node's client against a real gRPC server: a rate-limit refusal that says when to retry is sent
again after that long (the daemon's setting), and raised at once by a client that does not wait."""

from concurrent import futures

import grpc
import pytest

from swarmgrpo.protocol import swarm_pb2, swarm_pb2_grpc
from swarmgrpo.protocol.client import CoordinatorClient, CoordinatorError
from swarmgrpo.protocol.signing import NodeKey


class Busy(swarm_pb2_grpc.CoordinatorServicer):
    """Refuses the first `refusals` heartbeats as the coordinator's rate limit does, then answers."""

    def __init__(self, refusals: int, message: str = "node over its budget; retry in 0.2 s"):
        self.refusals, self.message, self.calls = refusals, message, 0

    def Heartbeat(self, request, context):
        self.calls += 1
        if self.calls <= self.refusals:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self.message)
        return swarm_pb2.PolicyState(policy_version=7)


@pytest.fixture
def serve():
    servers = []

    def start(servicer) -> str:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        swarm_pb2_grpc.add_CoordinatorServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for s in servers:
        s.stop(None)


def test_a_rate_limited_call_is_sent_again_after_the_wait_it_names(serve):
    busy = Busy(refusals=2)
    client = CoordinatorClient(serve(busy), NodeKey.generate(), busy_patience_s=60)
    assert client.heartbeat(0, "x", 0.0).policy_version == 7
    assert busy.calls == 3
    client.close()


def test_without_busy_patience_the_refusal_is_raised_and_other_refusals_always_are(serve):
    client = CoordinatorClient(serve(Busy(refusals=1)), NodeKey.generate())
    with pytest.raises(CoordinatorError) as e:
        client.heartbeat(0, "x", 0.0)
    assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "retry in" in str(e.value)
    over_budget = Busy(refusals=1, message="scoring this submission took more than 2 s of CPU")
    patient = CoordinatorClient(serve(over_budget), NodeKey.generate(), busy_patience_s=60)
    with pytest.raises(CoordinatorError) as e:  # says no time to retry: not a rate limit
        patient.heartbeat(0, "x", 0.0)
    assert over_budget.calls == 1
    client.close()
    patient.close()
