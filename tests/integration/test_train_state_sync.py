"""A worker joining mid-run takes only the training state its team agreed on: a real coordinator,
real trainer and rollout node processes, and a forging peer on a real libp2p host in the test."""

import signal
import threading
import time

import pytest
import torch

from swarmgrpo.coordinator.runlog import read_status, read_table
from swarmgrpo.localnet import LocalNetwork
from swarmgrpo.node.engines.base import Completion
from swarmgrpo.p2p import train_state
from swarmgrpo.p2p.host import PeerHost
from swarmgrpo.p2p.train_state import TrainStateServer
from swarmgrpo.protocol import swarm_pb2
from swarmgrpo.protocol.client import CoordinatorClient
from swarmgrpo.trainer.rollouts import submission
from tests.integration.netfixtures import join

pytestmark = pytest.mark.integration


def _await(what: str, done, net, procs, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), f"{what}:\n{net.logs()}"
        time.sleep(0.2)


def _published(net) -> int:
    return read_status(net.http)["counts"]["versions_published"]


class Heartbeats:
    """`with Heartbeats(client, version):` the client heartbeats `version` every 0.2 s meanwhile."""

    def __init__(self, client: CoordinatorClient, version: int):
        self.client, self.version = client, version
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(0.2):
            self.client.heartbeat(self.version, "holding", 0.0)

    def start(self) -> "Heartbeats":
        self.thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


class Forger:
    """A peer in the run that serves a worker's true weights with AdamW moments of its choosing
    (exp_avg = 1, exp_avg_sq = 0) through the product's own TrainStateServer, and says it holds the
    run's version (heartbeats, as a rollout node, so it is named as a holder but trains in no team)."""

    def __init__(self, net: LocalNetwork):
        self.host = PeerHost()
        self.client, _ = join(net, peer_id=self.host.peer_id, peer_addrs=self.host.addrs)
        self.forged: dict[int, bytes] = {}
        self.server = TrainStateServer(self.host, self.forged.get)
        self.beats = Heartbeats(self.client, 0).start()

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
        self.beats.version = state["version"]
        return state["version"]

    def close(self) -> None:
        self.beats.close()
        self.server.close()
        self.host.close()
        self.client.close()


@pytest.mark.parametrize(
    "network",
    [{"train": {"grad_compression": "powersgd", "max_steps": 6}}],
    indirect=True,
)
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
        forger.beats.close()  # it holds no later version
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
    shared = sum(v["metrics"].get("workers") == 2 for v in read_table(network.http, "versions"))
    assert shared >= 1, "the late worker trained steps with the honest one, both agreeing"


def _varied_groups(lease, tokenizer) -> swarm_pb2.SubmitRequest:
    """Completions whose uppercase shares differ, so every group has advantages and AdamW steps."""
    texts = ["HELLO THERE", "hello there", "HeLLo THERE", "hi"]
    ids = [tokenizer.encode(text, add_special_tokens=False) for text in texts[: lease.group_size]]
    group = [Completion(c, [-1.0] * len(c), finished=True) for c in ids]
    return submission(lease, [group] * len(lease.prompts), generation_s=0.1)


def _adam_steps(checkpoint) -> set[float]:
    optimizer = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    return {float(s["step"]) for s in optimizer["state"].values()}


@pytest.mark.parametrize(
    "network", [{"train": {"max_steps": 4, "save_steps": 1, "save_total_limit": 0}}], indirect=True
)
def test_a_worker_that_falls_back_to_the_weights_starts_its_optimizer_state_afresh(network):
    """A trainer that took two AdamW steps is paused; another worker publishes the next version with no
    agreed training state; resumed, the trainer takes that version's weights, and the step it trains
    next starts AdamW's moments afresh (step count 1), not from the ones of the weights it left."""
    from swarmgrpo.p2p.weight_transfer import P2PWeights
    from swarmgrpo.p2p.weights import encode_model
    from swarmgrpo.trainer.models import load_model

    model, tokenizer = load_model("tiny", seed=1)
    network.start_coordinator()
    trainer = network.start_node("trainer", "train", weights="p2p")
    rollout = _client(network, swarm_pb2.ROLE_ROLLOUT)
    for v in (0, 1):
        assert (
            rollout.submit(_varied_groups(rollout.lease(v, 2), tokenizer)).status == swarm_pb2.SUBMIT_ACCEPTED
        )
        _await(f"version {v + 1}", lambda v=v: _published(network) == v + 1, network, [trainer])
    ckpts = network.root / "trainer" / "checkpoints" / "test-run"
    _await("checkpoint 2", lambda: (ckpts / "checkpoint-2" / "optimizer.pt").exists(), network, [trainer])
    assert _adam_steps(ckpts / "checkpoint-2") == {2.0}
    trainer.send_signal(signal.SIGSTOP)
    other_weights = P2PWeights()
    other = _client(network, swarm_pb2.ROLE_TRAIN, other_weights)
    try:
        _await("the trainer counted gone", lambda: not other.policy().holders, network, [])
        assert (
            rollout.submit(_varied_groups(rollout.lease(2, 2), tokenizer)).status == swarm_pb2.SUBMIT_ACCEPTED
        )
        deadline = time.monotonic() + 30
        while (batch := other.train_batch(2, device="cpu")).status != swarm_pb2.BATCH_READY:
            assert time.monotonic() < deadline, batch
            time.sleep(0.5)
        data, sha = encode_model(model)
        other_weights.publish(3, data, sha)
        reply = other.report_step(2, sha, {}, attempt=batch.attempt, weight_bytes=len(data))
        assert reply.status == swarm_pb2.STEP_PUBLISHED, reply
        with Heartbeats(other, 3):  # named as the holder of version 3 until the trainer has it
            trainer.send_signal(signal.SIGCONT)
            _await(
                "the trainer's re-sync",
                lambda: "synced to policy 3" in network.log("trainer"),
                network,
                [trainer],
            )
    finally:
        trainer.send_signal(signal.SIGCONT)
        other.leave("done")
        other_weights.close()
    assert rollout.submit(_varied_groups(rollout.lease(3, 2), tokenizer)).status == swarm_pb2.SUBMIT_ACCEPTED
    assert network.wait(trainer, 120, "trainer") == 0, network.logs()
    log = network.log("trainer")
    assert "taking the bfloat16 weights with a fresh optimizer state" in log, log[-3000:]
    assert _adam_steps(ckpts / "checkpoint-4") == {1.0}, "AdamW went on from the moments it had before"


def _client(net: LocalNetwork, role: int, weights=None) -> CoordinatorClient:
    peer = {"peer_id": weights.peer_id, "peer_addrs": weights.addrs} if weights else {}
    return join(net, roles=(role,), **peer)[0]
