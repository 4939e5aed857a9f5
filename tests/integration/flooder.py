"""A stranger flooding a coordinator, run as its own process (`python -m tests.integration.flooder
ADDRESS SECONDS KNOWN_NODE_ID`): a few threads, each sending one kind of bad request in a loop for
SECONDS, then one JSON line on stdout: per kind, how many calls, the status codes and one answer of
each code. It has no join token: every request it sends must be refused.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import Counter, deque

import grpc

from swarmgrpo.protocol import PROTOCOL_VERSION, swarm_pb2
from swarmgrpo.protocol.signing import NodeKey

OLD_MAX_BYTES = 64 * 1024 * 1024  # what the coordinator took before it capped requests per method


def _unknown_key(_: int, node_id: str):
    """A correctly signed Heartbeat from a key that never joined."""
    req = NodeKey.generate().sign("Heartbeat", swarm_pb2.HeartbeatRequest(activity="x"))
    return "Heartbeat", req.SerializeToString()


def _forged(i: int, node_id: str):
    """A Heartbeat in a joined node's name with a signature the stranger made up."""
    req = swarm_pb2.HeartbeatRequest(activity="x")
    req.auth.node_id, req.auth.nonce = node_id, i
    req.auth.timestamp_ms, req.auth.signature = int(time.time() * 1000), os.urandom(64)
    return "Heartbeat", req.SerializeToString()


def _wrong_token(_: int, node_id: str):
    req = swarm_pb2.JoinRequest(protocol_version=PROTOCOL_VERSION, join_token="guess")
    req.capabilities.device = "cpu"
    return "Join", NodeKey.generate().sign("Join", req, include_public_key=True).SerializeToString()


def _garbage(i: int, node_id: str):
    return ("Lease", "Submit", "TrainBatch")[i % 3], b"\xff" * 200


def _too_long_for_method(_: int, node_id: str):
    """Under the largest valid request of any method, over any valid Heartbeat."""
    req = swarm_pb2.HeartbeatRequest(activity="x" * 100_000)
    return "Heartbeat", req.SerializeToString()


def _oversize(i: int, node_id: str):
    """What the coordinator took before: 64 MiB (a few of them; each is 64 MiB to send)."""
    return ("Submit", b"\x00" * (OLD_MAX_BYTES - 1)) if i < 3 else None


def _in_flight(i: int, node_id: str):
    """Requests from a key that never joined, sent without waiting for the answers (see DEPTH)."""
    return _UNKNOWN


_UNKNOWN = _unknown_key(0, "")


KINDS = {
    "unknown_key": _unknown_key,
    "forged": _forged,
    "wrong_token": _wrong_token,
    "garbage": _garbage,
    "too_long_for_method": _too_long_for_method,
    "oversize": _oversize,
    "in_flight": _in_flight,
}
DEPTH = {"in_flight": 64}  # calls a kind keeps in flight at once (1: it waits for each answer)


def _flood(address: str, kind: str, make, node_id: str, until: float, out: dict) -> None:
    channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", OLD_MAX_BYTES)])
    codes, samples, pending, i = Counter(), {}, deque(), 0
    while time.monotonic() < until or pending:
        made = make(i, node_id) if time.monotonic() < until else None
        if made is not None:
            method, raw = made
            call = channel.unary_unary(f"/swarmgrpo.v1.Coordinator/{method}")  # raw bytes both ways
            pending.append(call.future(raw, timeout=30))
            i += 1
        if pending and (made is None or len(pending) >= DEPTH.get(kind, 1)):
            e = pending.popleft().exception()
            code, details = (e.code().name, e.details() or "") if e is not None else ("OK", "")
            codes[code] += 1
            samples.setdefault(code, details)
        if made is None and not pending:
            break
    channel.close()
    out[kind] = {"calls": i, "codes": dict(codes), "samples": samples}


def main() -> None:
    address, seconds, node_id = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    until = time.monotonic() + seconds
    out: dict = {}
    threads = [
        threading.Thread(target=_flood, args=(address, kind, make, node_id, until, out))
        for kind, make in KINDS.items()
    ]
    print(json.dumps({"flooding": True}), flush=True)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
