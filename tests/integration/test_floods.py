"""A stranger floods a real coordinator process while an honest node goes on working.

The stranger (tests/integration/flooder.py, its own process) has no join token: correctly signed
requests from keys that never joined, requests forged in the honest node's name, Joins with a
guessed token, garbage bytes, a request too long for its method, and 64 MiB messages (what the
coordinator used to parse). Every one must be refused with a status that says why, before it is
parsed where it is too long; none may leave a row in the database; and the honest node's heartbeats
must stay within 2x the latency they had before the flood.
"""

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from swarmgrpo.protocol.client import CoordinatorClient, CoordinatorError
from swarmgrpo.protocol.client import status as client_status
from tests.integration.netfixtures import join, open_network

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SKEW_S = 2.0  # the run's max_clock_skew_s: nonces are kept for 2 x SKEW_S


@pytest.fixture
def network(tmp_path, request):
    with open_network(tmp_path, max_clock_skew_s=SKEW_S, **getattr(request, "param", {})) as net:
        yield net


def _honest(net) -> CoordinatorClient:
    return join(net, patience_s=5)[0]


def _heartbeat_latencies(client: CoordinatorClient, seconds: float) -> list[float]:
    """Heartbeats one after another, 20 ms apart, for `seconds`: each call's latency."""
    out, until = [], time.monotonic() + seconds
    while time.monotonic() < until:
        t = time.perf_counter()
        client.heartbeat(0, "idle", 0.0)
        out.append(time.perf_counter() - t)
        time.sleep(0.02)
    return out


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def _nonces(net) -> list[tuple[str, float]]:
    with net.db() as db:
        return db.execute("SELECT node_id, seen_at FROM nonces").fetchall()


def test_a_strangers_flood_is_refused_cheaply_and_does_not_slow_an_honest_node(network):
    network.start_coordinator()
    honest = _honest(network)
    before = _heartbeat_latencies(honest, 2.0)
    peak_before = _peak_rss_mib(network.coordinator.pid)

    flooder = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.flooder", network.address, "6", honest.key.node_id],
        cwd=ROOT,
        env=network.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert json.loads(flooder.stdout.readline()) == {"flooding": True}
        flooded = _heartbeat_latencies(honest, 5.0)
        report = json.loads(flooder.stdout.readline())
        assert flooder.wait(60) == 0
    finally:
        if flooder.poll() is None:
            flooder.kill()
            flooder.wait()
    peak_after = _peak_rss_mib(network.coordinator.pid)
    base = before + _heartbeat_latencies(honest, 2.0)  # before and after: the machine's load may change

    calls = sum(r["calls"] for r in report.values())
    print(
        f"flood: {calls} calls; honest heartbeat median {statistics.median(base) * 1e3:.1f} ms without, "
        f"{statistics.median(flooded) * 1e3:.1f} ms during; coordinator peak RSS {peak_before:.0f} -> "
        f"{peak_after:.0f} MiB; {json.dumps(report)}"
    )
    assert statistics.median(flooded) < 2 * statistics.median(base), (base, flooded)
    # 3 messages of 64 MiB were refused before they were parsed (or even kept whole)
    assert peak_after - peak_before < 32, (peak_before, peak_after)
    for kind, r in report.items():
        assert "OK" not in r["codes"], (kind, r)
    first = {kind: r["samples"] for kind, r in report.items()}
    assert "join first" in first["unknown_key"]["UNAUTHENTICATED"]
    assert "bad signature" in first["forged"]["UNAUTHENTICATED"]
    assert "join token" in first["wrong_token"]["PERMISSION_DENIED"]
    assert "are not a" in first["garbage"]["INVALID_ARGUMENT"]
    assert "longer than any valid one" in first["too_long_for_method"]["RESOURCE_EXHAUSTED"]
    assert report["oversize"]["codes"] == {"RESOURCE_EXHAUSTED": 3}, report["oversize"]
    assert "retry in" in " ".join(r["samples"].get("RESOURCE_EXHAUSTED", "") for r in report.values())

    # the stranger left nothing; the honest node's nonces go once they are past the clock window
    assert {n for n, _ in _nonces(network)} == {honest.key.node_id}
    assert len(_nonces(network)) <= (2 * SKEW_S + 1) / 0.02
    time.sleep(2 * SKEW_S + 2.0)
    assert _nonces(network) == [], "nonces past the clock window are deleted"
    honest.heartbeat(0, "idle", 0.0)  # and the honest node is still served


@pytest.mark.parametrize(
    "network",
    [
        {
            "rate_limits": {
                "node_per_s": 0.5,
                "node_burst": 5,
                "address_per_s": 0.1,
                "address_burst": 3,
                "hold_s": 0.0,
            }
        }
    ],
    indirect=True,
)
def test_a_node_over_its_budget_is_told_when_to_retry_and_stores_nothing(network):
    network.start_coordinator()
    greedy, other = _honest(network), _honest(network)  # two of the address's 3 unsigned requests
    for _ in range(4):  # with its Join, 5 signed requests: its burst
        greedy.heartbeat(0, "idle", 0.0)
    with pytest.raises(CoordinatorError) as e:
        greedy.heartbeat(0, "idle", 0.0)
    assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"node {greedy.key.node_id[:8]} sent more than 5 signed requests" in str(e.value)
    assert "retry in" in str(e.value)
    mine = [seen for node, seen in _nonces(network) if node == greedy.key.node_id]
    assert len(mine) == 1 + 4, "the Join and 4 heartbeats; the refused one left no nonce"
    other.heartbeat(0, "idle", 0.0)  # each node has its own budget

    _honest(network)  # the address's third Join or Status; the fourth is over its budget
    with pytest.raises(CoordinatorError) as e:
        _honest(network)
    assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "no joined node signed" in str(e.value)
    with pytest.raises(CoordinatorError) as e:
        client_status(network.address)
    assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    other.heartbeat(0, "idle", 0.0)  # signed requests from the same address go on

    time.sleep(2.2)  # one token back at 0.5/s
    greedy.heartbeat(0, "idle", 0.0)
