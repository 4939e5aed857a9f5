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
from hivemind.p2p import PeerID

from swarmgrpo.p2p.host import PeerHost, nodes_key, weights_key
from swarmgrpo.p2p.weight_transfer import MAX_DHT_HOLDERS, P2PWeights
from swarmgrpo.p2p.weights import WeightError
from swarmgrpo.protocol.signing import NodeKey
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


def test_forged_weight_holder_records_are_checked_and_few_are_tried(bootstrap, fetcher):
    """Anyone can store holder records under a version's key: malformed ones (a peer id or address that
    does not parse, addresses that are not strings) are skipped, and of the well-formed ones claiming
    the published hash only MAX_DHT_HOLDERS are tried. Before, an address list of numbers made
    `fetch` raise TypeError (a node's sync expects WeightError) and every record was dialed."""
    _, weights = fetcher
    version, sha = 77, "ab" * 32
    attacker = PeerHost()
    try:
        assert attacker.join_dht([bootstrap.addrs[0]]) == 1
        key = weights_key(RUN, version)
        dead = []
        for port in range(20):
            peer_id = _random_peer_id()  # nobody answers for it
            dead.append(peer_id)
            attacker.announce(
                key,
                peer_id,
                {"addrs": [f"/ip4/127.0.0.1/tcp/{port + 1}/p2p/{peer_id}"], "sha256": sha},
                ttl=60,
            )
        malformed = {
            "not-a-peer-id": {"addrs": ["/ip4/127.0.0.1/tcp/1"], "sha256": sha},
            _random_peer_id(): {"addrs": [1, 2], "sha256": sha},
            _random_peer_id(): {"addrs": "/ip4/127.0.0.1/tcp/1", "sha256": sha},
            _random_peer_id(): {"addrs": ["garbage", "/ip4/1.2.3.4/tcp/99999"], "sha256": sha},
            _random_peer_id(): {"addrs": ["/ip4/127.0.0.1/tcp/1"] * 1000, "sha256": sha},
        }
        for peer_id, value in malformed.items():
            attacker.announce(key, peer_id, value, ttl=60)
        holders = weights.dht_holders(version, sha)
        assert 0 < len(holders) <= MAX_DHT_HOLDERS
        assert {h.peer_id for h in holders} <= set(dead)
        with pytest.raises(WeightError, match=f"policy version {version} could not be fetched"):
            weights.fetch(version, sha, holders=[])
    finally:
        attacker.close()


def _random_peer_id() -> str:
    identity = bytes([0x00, 36, 0x08, 0x01, 0x12, 0x20]) + NodeKey.generate().public_key  # ed25519 key
    return PeerID(identity).to_base58()
