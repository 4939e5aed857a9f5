"""Rules for what nodes put where others read it: multiaddrs at Join, signed DHT node records, what a
Join reply carries, and how /status bounds what nodes report. Hermetic: no sockets, no coordinator."""

import tomllib

import pytest

from swarmgrpo.coordinator import status
from swarmgrpo.coordinator.config import RunConfig
from swarmgrpo.coordinator.joining import (
    MAX_BOOTSTRAP_NODES,
    MAX_INITIAL_PEERS,
    bootstrap_peers,
    node_config_toml,
)
from swarmgrpo.core.configtree import render_toml
from swarmgrpo.protocol.dhtrecords import CLOCK_SLACK_S, MAX_TTL_S, sign_node_record, verify_node_record
from swarmgrpo.protocol.multiaddrs import problem
from swarmgrpo.protocol.signing import NodeKey

PEER = "12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq"
RECORD = {
    "peer_id": PEER,
    "addrs": [],
    "role": "rollout",
    "policy_version": 3,
    "activity": "x",
    "tokens_per_s": 2.5,
}


@pytest.mark.parametrize(
    "addr",
    [
        f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}",
        "/ip4/10.0.0.1/tcp/0",
        "/ip6/::1/tcp/4001",
        "/dns4/node.example.org/tcp/443/wss",
        f"/ip4/1.2.3.4/udp/9/quic-v1/p2p/{PEER}",
        "/ip4/1.2.3.4/tcp/5/p2p/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",
    ],
)
def test_addresses_libp2p_peers_advertise_are_accepted(addr):
    assert problem(addr) is None


@pytest.mark.parametrize(
    ("addr", "why"),
    [
        ("garbage", "does not start with /"),
        ("/ip4/1.2.3.4/tcp/99999", "port '99999'"),
        ("/ip4/1.2.3.4/tcp/١٢", "port"),
        ("/ip4/١.2.3.4/tcp/1", "not an IPv4 address"),
        ("/ip4/1.2.3.4/tcp/1/p2p/notapeer", "not a libp2p peer id"),
        (f"/ip4/1.2.3.4/tcp/1/p2p/{PEER[:-1]}", "not a libp2p peer id"),
        ("/ip4/1.2.3.4/tcp", "needs a value"),
        ("/ip4/1.2.3.4/smtp/25", "unknown protocol"),
        ("/dns4/bad host/tcp/1", "not a host name"),
    ],
)
def test_addresses_that_do_not_parse_are_named(addr, why):
    assert why in problem(addr)


def test_a_node_record_verifies_only_with_its_node_key_run_and_fields():
    key, other = NodeKey.generate(), NodeKey.generate()
    signed = sign_node_record(key, "run", RECORD, ttl=30, now=1000.0)
    assert verify_node_record("run", key.node_id, signed, key.public_key, now=1010.0) == (RECORD, "")
    # a node whose clock runs behind the reader's (within the RPCs' skew) is still shown
    assert verify_node_record("run", key.node_id, signed, key.public_key, now=1060.0)[0] == RECORD
    refusals = {
        "another key": verify_node_record(
            "run", key.node_id, sign_node_record(other, "run", RECORD, 30, 1000.0), key.public_key, now=1010.0
        ),
        "another run": verify_node_record("run2", key.node_id, signed, key.public_key, now=1010.0),
        "another node": verify_node_record("run", other.node_id, signed, other.public_key, now=1010.0),
        "unknown node": verify_node_record("run", key.node_id, signed, None, now=1010.0),
        "altered": verify_node_record(
            "run", key.node_id, signed | {"role": "train"}, key.public_key, now=1010.0
        ),
        "expired": verify_node_record("run", key.node_id, signed, key.public_key, now=1031.0 + CLOCK_SLACK_S),
        "extra field": verify_node_record("run", key.node_id, signed | {"x": 1}, key.public_key, now=1010.0),
        "no signature": verify_node_record(
            "run", key.node_id, dict(signed, sig="s"), key.public_key, now=1010.0
        ),
        "not a dict": verify_node_record("run", key.node_id, ["x"], key.public_key, now=1010.0),
    }
    for case, (record, why) in refusals.items():
        assert record is None and why, case
    forever = sign_node_record(key, "run", RECORD, ttl=2 * MAX_TTL_S, now=1000.0)
    assert verify_node_record("run", key.node_id, forever, key.public_key, now=1010.0)[0] is None
    too_long = sign_node_record(key, "run", RECORD | {"activity": "x" * 600}, ttl=30, now=1000.0)
    assert "longer" in verify_node_record("run", key.node_id, too_long, key.public_key, now=1010.0)[1]


def test_a_joiner_gets_the_train_table_only():
    cfg = RunConfig(join_token="s3cret", state_dir="/srv/run", listen="10.0.0.1:50051")
    sent = node_config_toml(render_toml(cfg))
    assert list(tomllib.loads(sent)) == ["train"]
    for private in ("s3cret", "/srv/run", "10.0.0.1", "join_token", "state_dir", "listen"):
        assert private not in sent


def test_a_joiner_gets_the_coordinators_addresses_and_a_few_nodes():
    own = ["/ip4/1.1.1.1/tcp/1/p2p/a", "/ip4/1.1.1.1/tcp/2/p2p/a"]
    nodes = [{"peer_addrs": [f"/ip4/2.2.2.2/tcp/{i * 16 + j}" for j in range(16)]} for i in range(100)]
    peers = bootstrap_peers(own, nodes)
    assert peers[:2] == own and len(peers) == MAX_INITIAL_PEERS
    assert len({int(p.split("/")[4]) // 16 for p in peers[2:]}) <= MAX_BOOTSTRAP_NODES  # 16 ports a node
    assert bootstrap_peers(own, []) == own


def test_bounded_cuts_strings_and_lists_and_keeps_numbers():
    cut = status.bounded({"a": "x" * 1000, "b": list(range(100)), "c": 1.5, "d": {"e": ["y" * 500] * 50}})
    assert len(cut["a"]) == status.MAX_TEXT and cut["a"].endswith("…")
    assert cut["b"] == list(range(status.MAX_ITEMS)) and cut["c"] == 1.5
    assert cut["d"]["e"] == ["y" * (status.MAX_TEXT - 1) + "…"] * status.MAX_ITEMS


def test_swarmgrpo_status_says_how_many_nodes_it_does_not_list():
    from swarmgrpo.coordinator.view import render

    node = {"node_id": "a" * 32, "roles": ["ROLE_ROLLOUT"], "capabilities": {"device": "cpu"}, "alive": True}
    node |= {"policy_version": 0, "tokens_per_s": 1.0, "tokens_generated": 1, "rollouts_accepted": 1}
    node |= {"steps_trained": 0, "activity": "generating"}
    text = render({"nodes": [node], "nodes_total": 110, "dht": {"peer_id": "p", "announced_total": 7}})
    assert "7 nodes announced" in text and "109 more nodes not listed" in text
    assert "more nodes" not in render({"nodes": [node], "nodes_total": 1})
