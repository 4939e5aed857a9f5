"""P2PWeights between real peers: a holder in its own process, the fetcher in the test process."""

import glob
import hashlib
import json
import os
import random
import socket
import sys
from pathlib import Path

import pytest

from swarmgrpo.p2p.weight_transfer import P2PWeights
from swarmgrpo.p2p.weights import FP8, WeightError, encode_model, to_fp8
from swarmgrpo.protocol import swarm_pb2
from tests.integration.peerprocs import readline, spawn, stop

pytestmark = pytest.mark.integration
SIZE = 3_500_000  # four 1 MiB chunks


def _payload(version: int) -> bytes:
    return random.Random(version).randbytes(SIZE)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _p2pd_children(pid: int) -> list[int]:
    """p2pd processes (zombies included: an unreaped child is a leak too) whose parent is `pid`."""
    found = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(stat).read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        ppid = int(text[text.rindex(")") + 2 :].split()[1])
        if comm == "p2pd" and ppid == pid:
            found.append(int(stat.split("/")[2]))
    return found


def _model_file() -> bytes:
    """A small real weights file (version 4): two linear layers in bf16."""
    import torch

    torch.manual_seed(4)
    return encode_model(torch.nn.Sequential(torch.nn.Linear(300, 200), torch.nn.Linear(200, 100)))[0]


def serve() -> None:
    """Holder process: publish versions 1, 2 (and 3 under a wrong sha256) and a weights file as 4,
    serve until stdin closes."""
    weights = P2PWeights(keep=4)
    for version in (1, 2):
        data = _payload(version)
        weights.publish(version, data, _sha(data))
    weights.publish(3, _payload(3), _sha(b"not these bytes"))
    weights.publish(4, _model_file(), _sha(_model_file()))
    p2pd = weights.host.p2p._child.pid
    print(json.dumps({"peer_id": weights.peer_id, "addrs": weights.addrs, "p2pd": p2pd}), flush=True)
    sys.stdin.read()
    weights.close()
    print(json.dumps({"p2pd_children": _p2pd_children(os.getpid())}), flush=True)


@pytest.fixture(scope="module")
def holders():
    """Two holder processes, A (serves the fetch tests) and B (is closed by the p2pd test)."""
    procs = {
        name: spawn(__name__, "serve") for name in "AB"
    }  # started together: each takes seconds to import
    try:
        yield {name: (proc, readline(proc)) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            stop(proc)


@pytest.fixture(scope="module")
def holder_a(holders):
    _, info = holders["A"]
    return swarm_pb2.WeightHolder(node_id="A", peer_id=info["peer_id"], peer_addrs=info["addrs"])


@pytest.fixture(scope="module")
def client():
    weights = P2PWeights(timeout=3)
    yield weights
    weights.close()


def test_fetch_gets_identical_bytes(holder_a, client):
    data = client.fetch(2, _sha(_payload(2)), [holder_a])
    assert data == _payload(2)
    assert client.fetch(1, "", [holder_a]) == _payload(1)


def test_unknown_version_names_what_the_holder_has(holder_a, client):
    with pytest.raises(WeightError, match=r"does not hold policy version 7; it holds \[1, 2, 3, 4\]"):
        client.fetch(7, "", [holder_a])


def test_wrong_sha256_is_refused(holder_a, client):
    with pytest.raises(WeightError, match=r"holder's file has sha256 .*, not the published 000000000000"):
        client.fetch(2, "0" * 64, [holder_a])
    with pytest.raises(WeightError, match="received bytes hash to"):
        client.fetch(3, "", [holder_a])


def test_a_holder_makes_the_fp8_file_from_its_own_and_an_fp8_holder_serves_only_fp8(holder_a, client):
    fp8, sha8 = to_fp8(_model_file())
    assert client.fetch(4, sha8, [holder_a], FP8) == fp8  # made by the holder, checked against the hash
    assert client.fetch(4, _sha(_model_file()), [holder_a]) == _model_file()
    with pytest.raises(WeightError, match="unknown weights format 'int4'"):
        client.fetch(4, "", [holder_a], "int4")
    fp8_holder = P2PWeights(timeout=3)  # a rollout node that fetched the FP8 file holds only that
    try:
        fp8_holder.publish(4, fp8, sha8)
        held = swarm_pb2.WeightHolder(node_id="fp8", peer_id=fp8_holder.peer_id, peer_addrs=fp8_holder.addrs)
        assert client.fetch(4, sha8, [held], FP8) == fp8
        with pytest.raises(WeightError, match="holds policy version 4 only in FP8"):
            client.fetch(4, _sha(_model_file()), [held])
    finally:
        fp8_holder.close()


def test_a_republished_version_drops_its_old_fp8_file_and_peers_asking_at_once_share_one(client, monkeypatch):
    """A trainer whose step lost re-syncs the same version with other weights: it must not go on
    serving the FP8 file of its own; and one FP8 file is made however many peers ask at the same time."""
    import threading
    import time

    import torch

    from swarmgrpo.p2p import weight_transfer

    made = []

    def slow_to_fp8(data):  # slow enough that both requests arrive while it runs
        made.append(1)
        time.sleep(1.0)
        return to_fp8(data)

    monkeypatch.setattr(weight_transfer, "to_fp8", slow_to_fp8)
    losing, winning = _model_file(), encode_model(torch.nn.Linear(256, 128))[0]
    holder = P2PWeights(timeout=10)
    fetchers = [P2PWeights(timeout=10) for _ in range(2)]
    try:
        holder.publish(6, losing, _sha(losing), fp8=to_fp8(losing))
        holder.publish(6, winning, _sha(winning))
        held = swarm_pb2.WeightHolder(node_id="h", peer_id=holder.peer_id, peer_addrs=holder.addrs)
        fp8, sha8 = to_fp8(winning)
        got = [None, None]

        def fetch(i):
            got[i] = fetchers[i].fetch(6, sha8, [held], FP8)

        threads = [threading.Thread(target=fetch, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert got == [fp8, fp8]
        assert len(made) == 1, "one FP8 file for both requests"
        assert client.fetch(6, sha8, [held], FP8) == fp8 and len(made) == 1  # cached since
    finally:
        for w in [holder, *fetchers]:
            w.close()


def test_dead_and_silent_holders_are_skipped(holder_a, client):
    stopped = P2PWeights()
    dead = swarm_pb2.WeightHolder(node_id="dead", peer_id=stopped.peer_id, peer_addrs=stopped.addrs)
    stopped.close()
    # A TCP port that accepts and never speaks: the dial hangs in the handshake until a timeout.
    silent_sock = socket.create_server(("127.0.0.1", 0))
    port = silent_sock.getsockname()[1]
    other = P2PWeights()
    silent = swarm_pb2.WeightHolder(
        node_id="silent", peer_id=other.peer_id, peer_addrs=[f"/ip4/127.0.0.1/tcp/{port}"]
    )
    other.close()
    try:
        with pytest.raises(WeightError, match=r"(?s)could not be fetched.*dead \(.*; silent \("):
            client.fetch(2, "", [dead, silent])
        assert client.fetch(2, _sha(_payload(2)), [dead, silent, holder_a]) == _payload(2)
    finally:
        silent_sock.close()


def test_close_leaves_no_p2pd(holders):
    weights = P2PWeights()
    p2pd = weights.host.p2p._child.pid
    assert p2pd in _p2pd_children(os.getpid())
    weights.close()
    assert p2pd not in _p2pd_children(os.getpid())  # the module's `client` still has its own

    proc, info = holders["B"]
    assert _p2pd_children(proc.pid) == [info["p2pd"]]
    proc.stdin.close()
    assert readline(proc)["p2pd_children"] == []
    assert proc.wait(15) == 0
    assert not Path(f"/proc/{info['p2pd']}").exists()


class FaultyHolder:
    """A holder on a real PeerHost that claims the published sha256 and then cheats: "trickle" sends
    the true file a byte per `pause` seconds (each chunk inside the fetcher's per-chunk timeout);
    "oversize" announces a 1 TiB file and streams junk."""

    def __init__(self, mode: str, data: bytes, pause: float = 1.0):
        from swarmgrpo.p2p.host import PeerHost
        from swarmgrpo.p2p.weight_transfer import PROTOCOL

        self.mode, self.data, self.pause = mode, data, pause
        self.requests, self.sent = 0, 0
        self.host = PeerHost()
        self.host.call(
            self.host.p2p.add_protobuf_handler(
                PROTOCOL, self._serve, swarm_pb2.WeightRequest, stream_output=True
            )
        )
        self.holder = swarm_pb2.WeightHolder(
            node_id=mode, peer_id=self.host.peer_id, peer_addrs=self.host.addrs
        )

    async def _serve(self, request, context):
        import asyncio

        self.requests += 1
        sha, total = _sha(self.data), len(self.data) if self.mode == "trickle" else 1 << 40
        while self.sent < total:
            piece = self.data[self.sent : self.sent + 1] if self.mode == "trickle" else bytes(64 << 10)
            yield swarm_pb2.WeightChunk(
                policy_version=request.policy_version,
                offset=self.sent,
                data=piece,
                total_bytes=total,
                sha256=sha,
            )
            self.sent += len(piece)
            await asyncio.sleep(self.pause)

    def close(self):
        self.host.close()


def test_a_trickling_or_oversize_holder_is_dropped_within_its_deadline_and_an_honest_one_serves(holder_a):
    """Both cheats claim the published hash. The fetcher refuses the 1 TiB announcement at its first
    chunk (the version's manifest says how big the file is), drops the trickler when the whole file
    is not in by the transfer deadline, takes the file from the honest holder, and asks that one
    first next time."""
    import logging
    import threading
    import time

    data = _model_file()
    fetcher = P2PWeights(timeout=2, min_bytes_per_s=64 << 10)  # deadline: 2 s + the file at 64 KiB/s
    deadline = 2 + len(data) / (64 << 10)
    trickler, oversize = FaultyHolder("trickle", data), FaultyHolder("oversize", data, pause=0.05)
    got, took = [], []
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("swarmgrpo.p2p.weight_transfer").addHandler(handler)

    def fetch():
        t0 = time.monotonic()
        got.append(fetcher.fetch(4, _sha(data), [trickler.holder, oversize.holder, holder_a], size=len(data)))
        took.append(time.monotonic() - t0)

    try:
        thread = threading.Thread(target=fetch, daemon=True)
        thread.start()
        thread.join(deadline + 60)  # the trickler alone would take len(data) seconds (~44 hours)
        assert got == [data], f"no file after {deadline + 60:.0f} s: {[r.getMessage() for r in records]}"
        reasons = " ".join(r.getMessage() for r in records)
        assert (
            f"trickle ({trickler.holder.peer_id}): did not send the file within {deadline:.0f} s" in reasons
        )
        assert f"announces a file of {1 << 40} bytes; the version's is at most {len(data)}" in reasons
        assert trickler.sent < len(data) and oversize.sent < 32 * (64 << 10), (trickler.sent, oversize.sent)
        assert took[0] < deadline + 30, took  # one deadline, the refusal and the honest transfer
        asked = trickler.requests, oversize.requests
        assert (
            fetcher.fetch(4, _sha(data), [trickler.holder, oversize.holder, holder_a], size=len(data)) == data
        )
        assert (trickler.requests, oversize.requests) == asked, "the honest holder is asked first now"
    finally:
        logging.getLogger("swarmgrpo.p2p.weight_transfer").removeHandler(handler)
        fetcher.close()
        trickler.close()
        oversize.close()
