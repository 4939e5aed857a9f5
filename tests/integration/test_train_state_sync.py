"""A worker joining mid-run takes only the training state its team agreed on: a real coordinator,
real trainer and rollout node processes, and a forging peer on a real libp2p host in the test."""

import signal
import threading
import time

import pytest
import torch

from swarmgrpo.node import train_state
from swarmgrpo.node.p2p_host import PeerHost
from swarmgrpo.node.train_state import TrainStateServer
from swarmgrpo.protocol import PROTOCOL_VERSION, swarm_pb2
from swarmgrpo.protocol.client import CoordinatorClient
from swarmgrpo.protocol.signing import NodeKey
from tests.integration.netfixtures import TOKEN, Network

pytestmark = pytest.mark.integration


@pytest.fixture
def network(tmp_path):
    net = Network(
        tmp_path, train={"grad_compression": "powersgd", "max_steps": 10, "generation_batch_size": 12}
    )
    yield net
    net.close()


def _await(what: str, done, net, procs, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), f"{what}:\n{net.logs()}"
        time.sleep(0.2)


def _published(net) -> int:
    with net.db() as db:
        return db.execute("SELECT COUNT(*) FROM versions").fetchone()[0]


class Forger:
    """A peer in the run that serves a worker's true weights with AdamW moments of its choosing
    (exp_avg = 1, exp_avg_sq = 0) through the product's own TrainStateServer, and says it holds the
    run's version (heartbeats, as a rollout node, so it is named as a holder but trains in no team)."""

    def __init__(self, net: Network):
        self.host = PeerHost()
        self.client = CoordinatorClient(net.address, NodeKey.generate(), patience_s=20)
        self.client.join(
            swarm_pb2.JoinRequest(
                protocol_version=PROTOCOL_VERSION,
                join_token=TOKEN,
                capabilities=swarm_pb2.Capabilities(device="cpu", cpu_cores=1),
                roles=[swarm_pb2.ROLE_ROLLOUT],
                peer_id=self.host.peer_id,
                peer_addrs=self.host.addrs,
            )
        )
        self.forged: dict[int, bytes] = {}
        self.server = TrainStateServer(self.host, self.forged.get)
        self.version = 0
        self.stop = threading.Event()
        self.beats = threading.Thread(target=self._beat, daemon=True)
        self.beats.start()

    def _beat(self) -> None:
        while not self.stop.wait(0.2):
            self.client.heartbeat(self.version, "holding", 0.0)

    def forge_from_the_team(self, deadline: float) -> int:
        """Copy the current version's agreed state from a worker, forge its moments; the version."""
        while True:
            policy = self.client.policy()
            try:
                state = train_state.fetch(
                    self.host, policy.holders, policy.policy_version, policy.state_hash, policy.state_bytes
                )
                break
            except Exception:
                assert time.monotonic() < deadline, "no worker served its state"
                time.sleep(0.5)
        for per_param in state["optimizer"]["state"].values():
            per_param["exp_avg"] = torch.ones_like(per_param["exp_avg"])
            per_param["exp_avg_sq"] = torch.zeros_like(per_param["exp_avg_sq"])
        self.forged[state["version"]] = train_state.pack(state)
        self.version = state["version"]
        return self.version

    def close(self) -> None:
        self.stop.set()
        self.beats.join(5)
        self.server.close()
        self.host.close()
        self.client.close()


def test_a_late_worker_refuses_true_weights_with_forged_moments_and_takes_the_agreed_state(network):
    """The forger is the only holder named while the honest worker is paused: the joiner refuses its
    state (it does not hash to the version's agreed state_hash) and, once the honest worker is back,
    takes the agreed one from it, asks the forger last, and agrees with the team on every step after."""
    network.start_coordinator()
    honest = network.start_node("honest", "train", weights="p2p")
    rollout = network.start_node("rollout", "rollout", weights="p2p")
    _await("two versions", lambda: _published(network) >= 2, network, [honest, rollout])
    rollout.send_signal(signal.SIGSTOP)  # the run holds still while the late worker joins
    forger = Forger(network)
    paused = []
    try:
        version = forger.forge_from_the_team(time.monotonic() + 60)
        honest.send_signal(signal.SIGSTOP)
        paused.append(honest)
        peers = lambda: {h.peer_id for h in forger.client.policy().holders}  # noqa: E731
        _await("only the forger named", lambda: peers() == {forger.host.peer_id}, network, [])
        late = network.start_node("late", "train", weights="p2p")
        took = "training state of policy"
        _await("the late worker's first try", lambda: took in network.log("late") or
               f"training state v{version}: holder" in network.log("late"), network, [late])  # fmt: skip
        honest.send_signal(signal.SIGCONT)
        paused.remove(honest)
        _await("the late worker's state", lambda: took in network.log("late"), network, [late, honest])
        forger.stop.set()  # it holds no later version
    finally:
        for p in paused:
            p.send_signal(signal.SIGCONT)
        rollout.send_signal(signal.SIGCONT)
        forger.close()
    for p, name in [(honest, "honest"), (late, "late"), (rollout, "rollout")]:
        assert network.wait(p, 300, name) == 0, network.logs()
    log = network.log("late")
    refused = log.find(f"training state v{version}: holder ")
    assert refused >= 0 and forger.host.peer_id in log[refused : log.find("\n", refused)], log[-3000:]
    assert "not the published" in log[refused : log.find("\n", refused)], log[-3000:]
    assert refused < log.find(f"took the training state of policy {version} that its workers agreed on"), log[
        -3000:
    ]
    for name in ("late", "honest"):
        assert "not published" not in network.log(name), network.log(name)[-3000:]
    with network.db() as db:
        shared = db.execute(
            "SELECT COUNT(*) FROM versions WHERE metrics LIKE '%\"workers\": 2.0%'"
        ).fetchone()[0]
    assert shared >= 1, "the late worker trained steps with the honest one, both agreeing"
