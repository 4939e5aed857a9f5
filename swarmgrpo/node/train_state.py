"""A gradient worker's exact training state, served to a worker that joins (or re-syncs) mid-run.

Gradient workers stay identical by taking identical steps from identical states, so a new worker
needs more than the bf16 weights rollout nodes fetch: the float32 weights, AdamW's moments and step
counts, and PowerSGD's shared Q. A worker serves that state on the stream protocol
`swarmgrpo.trainstate` between steps (`snapshot` returns None while it is mid-step or holds another
version), as `WeightChunk`s of one `torch.save` file checked by sha256. A worker serves its newest
version (at least the one asked for); the joiner checks that it is the run's current version and
that the weights encode to the published hash before it trusts them.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
from collections.abc import Callable

import torch
from hivemind.p2p import P2PContext, PeerID

from swarmgrpo.node.p2p_host import PeerHost
from swarmgrpo.node.p2p_weights import chunks, receive
from swarmgrpo.node.weights import WeightError
from swarmgrpo.protocol import swarm_pb2

log = logging.getLogger(__name__)
PROTOCOL = "swarmgrpo.trainstate"


def pack(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def unpack(data: bytes) -> dict:
    return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")  # a GPU peer's state too


class TrainStateServer:
    def __init__(self, host: PeerHost, snapshot: Callable[[int], bytes | None], chunk_bytes: int = 1 << 20):
        self.host, self.snapshot, self.chunk_bytes = host, snapshot, chunk_bytes
        host.call(
            host.p2p.add_protobuf_handler(PROTOCOL, self._serve, swarm_pb2.WeightRequest, stream_output=True)
        )

    async def _serve(self, request: swarm_pb2.WeightRequest, context: P2PContext):
        version = request.policy_version
        data = await asyncio.to_thread(self.snapshot, version)
        if data is None:
            yield swarm_pb2.WeightChunk(
                policy_version=version, error=f"no training state of version {version} here now"
            )
            return
        for chunk in chunks(version, data, hashlib.sha256(data).hexdigest(), self.chunk_bytes):
            yield chunk

    def close(self) -> None:
        if self.host.p2p is not None:
            try:
                self.host.call(
                    self.host.p2p.remove_protobuf_handler(PROTOCOL, stream_output=True), timeout=10
                )
            except Exception as e:
                log.warning("removing the training-state handler: %s", e)


def fetch(host: PeerHost, holders, version: int, timeout: float = 60.0) -> dict:
    """The training state of `version` from the first of `holders` (WeightHolder) that serves it."""
    problems = []
    for holder in holders:
        if holder.peer_id == host.peer_id:
            continue
        try:
            return unpack(host.call(_fetch_from(host, holder, version, timeout)))
        except Exception as e:
            problems.append(f"{holder.node_id[:8] or '?'}: {e}")
    raise WeightError(
        f"no peer served the training state of version {version}: " + "; ".join(problems or ["none asked"])
    )


async def _fetch_from(host: PeerHost, holder, version: int, timeout: float) -> bytes:
    peer = PeerID.from_base58(holder.peer_id)
    await host.connect(peer, holder.peer_addrs, timeout)
    stream = await asyncio.wait_for(
        host.p2p.iterate_protobuf_handler(
            peer, PROTOCOL, swarm_pb2.WeightRequest(policy_version=version), swarm_pb2.WeightChunk
        ),
        timeout,
    )
    try:
        return await receive(stream, "", timeout)
    finally:
        await stream.aclose()
