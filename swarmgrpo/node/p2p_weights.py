"""Policy weights fetched from peers over libp2p streams (hivemind's P2P and its go-libp2p daemon).

A node that publishes version v keeps the bytes `weights.encode` made (a bf16 safetensors file) and
their sha256 in memory, for the last `keep` versions, and serves them on the stream protocol
`swarmgrpo.weights`: one `WeightRequest` in, `WeightChunk`s of `chunk_bytes` out, in order, each
carrying the file's size and sha256. A fetching node asks the holders the coordinator named, one at
a time: it dials the holder's addresses, reassembles the chunks, checks that offsets are contiguous
and that size and sha256 match both the holder's claim and the published hash, and moves on to the
next holder on any failure; a holder silent for `timeout` seconds counts as failed.

Threads: the daemon is synchronous, so the P2P client lives on a private asyncio loop in a
background thread and the public methods block on it. We run a standalone `P2P` (one p2pd child)
rather than a `hivemind.DHT`: the DHT forks a Python process, which is unsafe after gRPC and torch
have started threads, and weight transfer needs only direct dials to addresses we are given.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections.abc import Sequence

from hivemind.p2p import P2P, P2PContext, P2PDaemonError, PeerID
from hivemind.utils.multiaddr import Multiaddr

from swarmgrpo.node.weights import WeightError, WeightTransport
from swarmgrpo.protocol import swarm_pb2

log = logging.getLogger(__name__)
PROTOCOL = "swarmgrpo.weights"


class P2PWeights(WeightTransport):
    def __init__(
        self,
        initial_peers: Sequence[str] = (),
        host_maddrs: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",),
        keep: int = 3,
        chunk_bytes: int = 1 << 20,
        timeout: float = 30.0,
    ):
        self.keep, self.chunk_bytes, self.timeout = keep, chunk_bytes, timeout
        self._held: dict[int, tuple[bytes, str]] = {}
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="p2p-weights", daemon=True)
        self._thread.start()
        self._p2p: P2P | None = None
        try:
            self._p2p = self._call(self._start(list(initial_peers), list(host_maddrs)))
        except BaseException:
            self.close()
            raise
        self.peer_id: str = self._p2p.peer_id.to_base58()
        self.addrs: list[str] = [str(a) for a in self._call(self._p2p.get_visible_maddrs())]

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _start(self, initial_peers: list[str], host_maddrs: list[str]) -> P2P:
        try:
            p2p = await P2P.create(initial_peers=initial_peers, host_maddrs=host_maddrs)
        except P2PDaemonError as e:
            if not initial_peers:
                raise
            # p2pd refuses to start when no bootstrap peer answers; weight transfer dials holders
            # directly, so a node whose bootstrap peers are all gone can still serve and fetch.
            log.warning("no initial peer answered (%s); starting without bootstrap peers", e)
            p2p = await P2P.create(host_maddrs=host_maddrs)
        await p2p.add_protobuf_handler(PROTOCOL, self._serve, swarm_pb2.WeightRequest, stream_output=True)
        return p2p

    # ------------------------------------------------------------------ serving

    def publish(self, version: int, data: bytes, sha256: str) -> None:
        with self._lock:
            self._held[version] = (bytes(data), sha256)
            for old in sorted(self._held)[: -self.keep]:
                del self._held[old]

    async def _serve(self, request: swarm_pb2.WeightRequest, context: P2PContext):
        version = request.policy_version
        with self._lock:
            held = self._held.get(version)
            versions = sorted(self._held)
        if held is None:
            yield swarm_pb2.WeightChunk(
                policy_version=version,
                error=f"peer {self.peer_id} does not hold policy version {version}; it holds {versions}",
            )
            return
        data, sha = held
        for offset in range(0, max(len(data), 1), self.chunk_bytes):
            yield swarm_pb2.WeightChunk(
                policy_version=version,
                offset=offset,
                data=data[offset : offset + self.chunk_bytes],
                total_bytes=len(data),
                sha256=sha,
            )

    # ------------------------------------------------------------------ fetching

    def fetch(self, version: int, sha256: str, holders) -> bytes:
        if self._p2p is None:
            raise WeightError("this P2PWeights is closed")
        problems = []
        for holder in holders:
            try:
                return self._call(self._fetch_from(holder, version, sha256))
            except Exception as e:
                reason = f"timed out after {self.timeout:g} s" if isinstance(e, TimeoutError) else str(e)
                problems.append(f"{holder.node_id or '?'} ({holder.peer_id or 'no peer id'}): {reason}")
                log.warning("weights v%d: holder %s", version, problems[-1])
        if not problems:
            raise WeightError(f"no peer holds policy version {version}: wait for a holder and retry")
        raise WeightError(
            f"policy version {version} could not be fetched from any holder: " + "; ".join(problems)
        )

    async def _fetch_from(self, holder, version: int, expected: str) -> bytes:
        peer = PeerID.from_base58(holder.peer_id)
        # p2pd's CONNECT misparses addresses that end in /p2p/<id> ("length greater than remaining
        # number of bytes in buffer"): give it the transport part only.
        addrs = [Multiaddr(a).decapsulate(f"/p2p/{holder.peer_id}") for a in holder.peer_addrs]
        await asyncio.wait_for(self._p2p._client.connect(peer, addrs), self.timeout)
        request = swarm_pb2.WeightRequest(policy_version=version)
        stream = await asyncio.wait_for(
            self._p2p.iterate_protobuf_handler(peer, PROTOCOL, request, swarm_pb2.WeightChunk), self.timeout
        )
        try:
            return await self._receive(stream, expected)
        finally:
            await stream.aclose()

    async def _receive(self, stream, expected: str) -> bytes:
        parts, size, total, claimed, hasher = [], 0, None, "", hashlib.sha256()
        while True:
            try:
                chunk = await asyncio.wait_for(anext(stream), self.timeout)
            except StopAsyncIteration:
                break
            if chunk.error:
                raise WeightError(chunk.error)
            if total is None:
                total, claimed = chunk.total_bytes, chunk.sha256
                if expected and claimed != expected:  # refuse before spending bandwidth on it
                    raise WeightError(
                        f"holder's file has sha256 {claimed[:12]}…, not the published {expected[:12]}…"
                    )
            if chunk.offset != size or (chunk.total_bytes, chunk.sha256) != (total, claimed):
                raise WeightError(f"chunk at offset {chunk.offset} after {size} bytes: stream corrupt")
            parts.append(chunk.data)
            hasher.update(chunk.data)
            size += len(chunk.data)
            if size > total:
                raise WeightError(f"holder sent more than the {total} bytes it announced")
        if total is None or size != total:
            raise WeightError(f"stream ended after {size} of {total if total is not None else '?'} bytes")
        if hasher.hexdigest() != claimed:
            raise WeightError(f"received bytes hash to {hasher.hexdigest()[:12]}…, not {claimed[:12]}…")
        return b"".join(parts)

    def close(self) -> None:
        if self._p2p is not None:
            p2p, self._p2p = self._p2p, None
            try:
                self._call(asyncio.wait_for(p2p.shutdown(), 10))
            except Exception as e:  # the daemon is being torn down anyway
                log.warning("p2p shutdown: %s", e)
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        if not self._loop.is_running() and not self._loop.is_closed():
            self._loop.close()
