"""The run's hivemind DHT between real peers: a holder in its own process, bootstrap and fetcher here.

The holder joins through the bootstrap peer, announces itself and the weights it serves; the fetcher,
told of no holder at all, finds it through the DHT and gets identical bytes.
"""

import hashlib
import json
import random
import sys
import time

import pytest

from swarmgrpo.node.p2p_host import PeerHost, nodes_key
from swarmgrpo.node.p2p_weights import P2PWeights
from swarmgrpo.node.weights import WeightError
from tests.integration.peerprocs import readline, spawn, stop

pytestmark = pytest.mark.integration
RUN = "dht-test"
VERSION = 5


def _payload() -> bytes:
    return random.Random(VERSION).randbytes(2_500_000)


def holder_main() -> None:
    """Holder process: join via argv[1], announce a node record, publish VERSION, serve until stdin closes."""
    host = PeerHost()
    reached = host.join_dht([sys.argv[1]])
    weights = P2PWeights(host, run_id=RUN)
    data = _payload()
    weights.publish(VERSION, data, hashlib.sha256(data).hexdigest())
    host.announce(nodes_key(RUN), "holder-node", {"peer_id": host.peer_id, "role": "rollout"}, ttl=60)
    print(json.dumps({"peer_id": host.peer_id, "reached": reached}), flush=True)
    sys.stdin.read()
    weights.close()
    host.close()


@pytest.fixture(scope="module")
def bootstrap():
    host = PeerHost()
    assert host.join_dht([]) == 0  # the first peer of a DHT
    yield host
    host.close()


@pytest.fixture(scope="module")
def holder(bootstrap):
    proc = spawn(__name__, "holder_main", bootstrap.addrs[0])
    try:
        yield readline(proc, 60)
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def fetcher(bootstrap):
    host = PeerHost()
    assert host.join_dht([bootstrap.addrs[0]]) == 1
    weights = P2PWeights(host, run_id=RUN, timeout=5)
    yield host, weights
    weights.close()
    host.close()


def test_a_peer_joined_through_the_bootstrap_announces_itself(holder, fetcher):
    host, _ = fetcher
    assert holder["reached"] == 1
    nodes = host.lookup(nodes_key(RUN))
    assert nodes["holder-node"] == {"peer_id": holder["peer_id"], "role": "rollout"}


def test_weights_are_found_through_the_dht_when_nobody_names_a_holder(holder, fetcher):
    _, weights = fetcher
    data = _payload()
    sha = hashlib.sha256(data).hexdigest()
    assert [h.peer_id for h in weights.dht_holders(VERSION, sha)] == [holder["peer_id"]]
    assert weights.fetch(VERSION, sha, holders=[]) == data
    # A holder announcing other bytes than the published hash is not even asked.
    assert weights.dht_holders(VERSION, "0" * 64) == []
    with pytest.raises(WeightError, match=f"no peer holds policy version {VERSION}"):
        weights.fetch(VERSION, "0" * 64, holders=[])


def test_records_expire_and_a_dead_bootstrap_peer_is_survived(bootstrap, fetcher):
    host, _ = fetcher
    host.announce(nodes_key(RUN), "short-lived", {"peer_id": host.peer_id}, ttl=1.0)
    assert "short-lived" in host.lookup(nodes_key(RUN))
    time.sleep(1.5)
    assert "short-lived" not in host.lookup(nodes_key(RUN))

    gone = PeerHost()
    dead_addr = gone.addrs[0]
    gone.close()
    loner = PeerHost()
    try:
        assert loner.join_dht([dead_addr], timeout=3) == 0  # starts a DHT of its own, logs a warning
        loner.announce(nodes_key(RUN), "loner", {"ok": True}, ttl=30)
        assert loner.lookup(nodes_key(RUN)) == {"loner": {"ok": True}}
    finally:
        loner.close()
