"""Two real gradient workers where one worker's shard holds only zero-advantage groups every step.

That worker trains nothing itself, but the team's averaged gradient reaches it through the
all-reduce and it must take the same AdamW step as its peer, or the replicas' weights part ways.
"""

import time

import pytest

from swarmgrpo.coordinator.runlog import read_table
from swarmgrpo.protocol import swarm_pb2
from swarmgrpo.trainer.rollouts import submission
from tests.integration.test_forged_logprobs import _forged_group
from tests.integration.test_network import _await, _join, _nodes

pytestmark = pytest.mark.integration


def _one_flat_group(lease, tok) -> swarm_pb2.SubmitRequest:
    """Group 0: four equal completions (equal rewards, zero advantage); group 1: rewards that differ."""
    same = [tok.encode("HELLO", add_special_tokens=False)] * 4
    mixed = [
        tok.encode(t, add_special_tokens=False) for t in ("HELLO WORLD", "hello world", "HELLO", "Hello")
    ]
    groups = [_forged_group(same, -2.0), _forged_group(mixed, -2.0)]
    return submission(lease, groups[: len(lease.prompts)], generation_s=0.1)


@pytest.mark.parametrize(
    "network", [{"train": {"max_steps": 3, "grad_compression": "none", "learning_rate": 0.01}}], indirect=True
)
def test_a_worker_whose_shard_has_no_signal_takes_the_teams_step(network, tiny):
    _, tok = tiny
    network.start_coordinator()
    workers = [network.start_node(f"worker{i}", "train", weights="p2p") for i in range(2)]
    trainers = lambda: [n for n in _nodes(network) if "ROLE_TRAIN" in n["roles"]]  # noqa: E731
    beating = lambda: sum(n["last_seen"] > n["joined_at"] for n in trainers())  # noqa: E731
    _await(network, "both workers joined and heartbeat", lambda: beating() == 2, workers)
    feeder, _ = _join(network)
    fed = 0
    while fed < 3:
        assert all(w.poll() is None for w in workers), network.logs()
        lease = feeder.lease(feeder.policy().policy_version, 2)
        if lease.status == swarm_pb2.LEASE_GRANTED:
            assert feeder.submit(_one_flat_group(lease, tok)).status == swarm_pb2.SUBMIT_ACCEPTED
            fed += 1
        else:
            time.sleep(0.2)
    for i, w in enumerate(workers):
        assert network.wait(w, 240, f"worker{i}") == 0, network.logs()
    versions = read_table(network.http, "versions")
    steps = [n["steps_trained"] for n in trainers()]
    assert [v["version"] for v in versions] == [1, 2, 3]
    for v, m in ((v["version"], v["metrics"]) for v in versions):
        assert m["workers"] == 2 and m["frac_zero_std"] == 0.5 and m["grad_norm"] > 0, (v, m)
    assert steps == [3, 3], steps  # both published every step: the same weight hash each time
    assert "reported other weights" not in network.log("coordinator"), network.log("coordinator")[-3000:]
    for i in range(2):
        assert "not published" not in network.log(f"worker{i}"), network.log(f"worker{i}")[-3000:]
