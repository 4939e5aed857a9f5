"""Policy weights fetched from peers over libp2p streams (hivemind's P2P and its go-libp2p daemon).

A node that publishes version v keeps the bytes `weights.encode_model` made (a bf16 safetensors file) and
their sha256 in memory, for the last `keep` versions, serves them on the stream protocol
`swarmgrpo.weights` (one `WeightRequest` in, `WeightChunk`s of `chunk_bytes` out, in order, each
carrying the file's size and sha256) and, once its host has joined the DHT, announces itself as a
holder under `swarmgrpo/<run>/weights/<v>` for `holder_ttl` seconds.

A fetching node asks the holders the coordinator named, then those the DHT knows (anyone can write
there: only records whose peer id and addresses parse, and at most MAX_DHT_HOLDERS of them, picked at
random; no record is trusted for the bytes, which must hash to the published sha256), one at a time, in
the order its `HolderRanking` gives (see `holders`): it dials the holder's addresses, reassembles the
chunks, checks that offsets are contiguous and that size and sha256 match both the holder's claim and
the published hash, and moves on to the next holder on any failure. A holder fails when it is silent
for `timeout` seconds, announces a file larger than the version's manifest says (`size`; `max_bytes`
for a version published without one), or has not sent the whole file by `transfer_deadline` (the
file at `min_bytes_per_s`, plus `timeout`).

Block FP8 (`WeightRequest.format = "fp8"`, `weights.to_fp8`): a holder of the transfer file makes the
FP8 file from it on the first request (once per version; the trainer hands over the one it made
for the version's hash) and serves that; a node that fetched the FP8 file serves only FP8 requests.

The P2P daemon and its asyncio loop belong to a `PeerHost` (shared with the node's DHT membership);
a `P2PWeights` made without one starts and owns its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import threading
from collections.abc import Sequence

from hivemind.p2p import P2PContext, PeerID

from swarmgrpo.p2p.holders import transfer_deadline
from swarmgrpo.p2p.host import PeerHost, dialable, weights_key
from swarmgrpo.p2p.weights import WeightError, WeightTransport, check_format, is_fp8, to_fp8
from swarmgrpo.protocol import swarm_pb2

log = logging.getLogger(__name__)
PROTOCOL = "swarmgrpo.weights"
MAX_ADDRS = 16


MAX_DHT_HOLDERS = 4
"""Holders found in the DHT that a fetch tries (after those the coordinator named)."""


def holder_addrs(peer: str, addrs) -> list[str]:
    """A DHT holder record's addresses when its peer id and addresses parse ([] when not): the record
    is anyone's to write, so only its shape is trusted; the bytes are checked against the published
    sha256 anyway."""
    if not isinstance(addrs, list) or not 0 < len(addrs) <= MAX_ADDRS:
        return []
    try:
        PeerID.from_base58(peer)
    except Exception:
        return []
    return [a for a, _, _ in dialable(a for a in addrs if isinstance(a, str) and len(a) <= 512)]


class NotHeld(WeightError):
    """The holder answered that it does not hold what was asked: it cost a round trip, not a
    transfer, so it does not count against the holder."""


class P2PWeights(WeightTransport):
    def __init__(
        self,
        host: PeerHost | None = None,
        *,
        initial_peers: Sequence[str] = (),
        host_maddrs: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",),
        run_id: str = "",
        keep: int = 3,
        chunk_bytes: int = 1 << 20,
        timeout: float = 30.0,
        holder_ttl: float = 600.0,
        min_bytes_per_s: float = 1 << 20,
        max_bytes: int = 16 << 30,
    ):
        self.keep, self.chunk_bytes, self.timeout = keep, chunk_bytes, timeout
        # 1 MiB/s: a volunteer's 10 Mbit/s uplink still serves; 16 GiB: an 8B model in bf16.
        self.min_bytes_per_s, self.max_bytes = min_bytes_per_s, max_bytes
        self.run_id, self.holder_ttl = run_id, holder_ttl
        self._held: dict[int, tuple[bytes, str]] = {}  # version -> the file this node holds, its sha256
        self._fp8: dict[int, tuple[bytes, str]] = {}  # version -> its FP8 file made from the held one
        self._making: dict[tuple[int, str], asyncio.Future] = {}  # (version, held sha256) -> to_fp8 run
        self._lock = threading.Lock()
        self._owns_host = host is None
        self.host = host if host is not None else PeerHost(host_maddrs, initial_peers)
        try:
            self.host.call(
                self.host.p2p.add_protobuf_handler(
                    PROTOCOL, self._serve, swarm_pb2.WeightRequest, stream_output=True
                )
            )
        except BaseException:
            self.close()
            raise
        self.peer_id: str = self.host.peer_id
        self.addrs: list[str] = self.host.addrs

    # ------------------------------------------------------------------ serving

    def publish(self, version: int, data: bytes, sha256: str, fp8: tuple[bytes, str] | None = None) -> None:
        with self._lock:
            self._held[version] = (bytes(data), sha256)
            self._fp8.pop(version, None)  # made from a file this node may no longer hold
            if fp8 is not None:
                self._fp8[version] = fp8
            for old in sorted(self._held)[: -self.keep]:
                del self._held[old]
            for old in [v for v in self._fp8 if v not in self._held]:
                del self._fp8[old]
        if self.run_id and self.host.dht is not None:
            try:
                self.host.announce(
                    weights_key(self.run_id, version),
                    self.peer_id,
                    {"addrs": self.addrs, "sha256": sha256},
                    self.holder_ttl,
                )
            except Exception as e:  # announcing is best effort: the coordinator names holders too
                log.warning("could not announce weights v%d in the DHT: %s", version, e)

    def dht_holders(self, version: int, sha256: str) -> list[swarm_pb2.WeightHolder]:
        """Holders of `version` announced in the DHT (other than this node) with the expected hash."""
        if not self.run_id or self.host.dht is None:
            return []
        try:
            found = self.host.lookup(weights_key(self.run_id, version))
        except Exception as e:
            log.warning("DHT lookup of weights v%d failed: %s", version, e)
            return []
        usable = [
            swarm_pb2.WeightHolder(peer_id=peer, peer_addrs=addrs, policy_version=version)
            for peer, v in found.items()
            if peer != self.peer_id
            and (not sha256 or v.get("sha256") == sha256)
            and (addrs := holder_addrs(peer, v.get("addrs")))
        ]
        dropped = len(found) - len(usable) - (self.peer_id in found)
        if dropped:
            log.info(
                "weights v%d: %d DHT holder records unusable (malformed or another hash)", version, dropped
            )
        # Anyone can store a record here, and each holder tried may cost `timeout`: a few, at random.
        return random.sample(usable, min(MAX_DHT_HOLDERS, len(usable)))

    async def _serve(self, request: swarm_pb2.WeightRequest, context: P2PContext):
        version = request.policy_version
        try:
            held = await self._file_for(version, request.format)
        except WeightError as e:
            yield swarm_pb2.WeightChunk(policy_version=version, error=str(e))
            return
        for chunk in chunks(version, *held, self.chunk_bytes):
            yield chunk

    async def _file_for(self, version: int, fmt: str) -> tuple[bytes, str]:
        """(bytes, sha256) this node serves for `version` in `fmt`; WeightError says why it cannot."""
        check_format(fmt)
        with self._lock:
            held, made = self._held.get(version), self._fp8.get(version)
            versions = sorted(self._held)
        if held is None:
            raise WeightError(
                f"peer {self.peer_id} does not hold policy version {version}; it holds {versions}"
            )
        held_fp8 = is_fp8(held[0])
        if not fmt:
            if held_fp8:
                raise WeightError(f"peer {self.peer_id} holds policy version {version} only in FP8")
            return held
        if held_fp8:
            return held
        if made is None:
            made = await self._make_fp8(version, held)
        return made

    async def _make_fp8(self, version: int, held: tuple[bytes, str]) -> tuple[bytes, str]:
        """The FP8 file of the held `version`, made once however many peers ask for it at the same
        time (in a thread: the event loop keeps serving meanwhile); cached while that file is held."""
        key = (version, held[1])
        task = self._making.get(key)
        if task is None:
            task = asyncio.ensure_future(asyncio.to_thread(to_fp8, held[0]))
            self._making[key] = task
            task.add_done_callback(lambda _: self._making.pop(key, None))
        made = await asyncio.shield(task)  # a requester that gives up does not stop it for the others
        with self._lock:
            if self._held.get(version) is held:
                self._fp8[version] = made
        return made

    # ------------------------------------------------------------------ fetching

    def fetch(self, version: int, sha256: str, holders, fmt: str = "", size: int = 0) -> bytes:
        if self.host.p2p is None:
            raise WeightError("this P2PWeights is closed")
        with self._lock:
            held, made = self._held.get(version), self._fp8.get(version)
        local = made if fmt else None
        if held is not None and is_fp8(held[0]) == bool(fmt):
            local = held
        if local is not None and (not sha256 or local[1] == sha256):
            return local[0]  # this node holds it already (it published or fetched it before)
        problems = []
        named = list(holders)
        seen = {h.peer_id for h in named}
        # Any holder of the version can make its FP8 file; the DHT names holders by the held file's hash.
        in_dht = self.dht_holders(version, "" if fmt else sha256)
        candidates = named + [h for h in in_dht if h.peer_id not in seen]
        limit = size or self.max_bytes
        deadline = transfer_deadline(limit, self.timeout, self.min_bytes_per_s)
        for holder in self.host.ranking.order(candidates):
            try:
                data = self.host.call(
                    asyncio.wait_for(self._fetch_from(holder, version, sha256, fmt, limit), deadline)
                )
            except Exception as e:
                if not isinstance(e, NotHeld):
                    self.host.ranking.failed(holder.peer_id)
                reason = (
                    f"did not send the file within {deadline:.0f} s"
                    if isinstance(e, TimeoutError)
                    else str(e)
                )
                problems.append(f"{holder.node_id or '?'} ({holder.peer_id or 'no peer id'}): {reason}")
                log.warning("weights v%d: holder %s", version, problems[-1])
                continue
            if sha256:  # bytes checked against the published hash: it served this node well
                self.host.ranking.served(holder.peer_id)
            return data
        if not problems:
            raise WeightError(f"no peer holds policy version {version}: wait for a holder and retry")
        raise WeightError(
            f"policy version {version} could not be fetched from any holder: " + "; ".join(problems)
        )

    async def _fetch_from(self, holder, version: int, expected: str, fmt: str, max_bytes: int) -> bytes:
        request = swarm_pb2.WeightRequest(policy_version=version, format=fmt)
        return await fetch_file(self.host, holder, PROTOCOL, request, expected, max_bytes, self.timeout)

    def close(self) -> None:
        host = getattr(self, "host", None)
        if host is None:
            return
        if self._owns_host:
            host.close()
        elif host.p2p is not None:
            try:
                host.call(host.p2p.remove_protobuf_handler(PROTOCOL, stream_output=True), timeout=10)
            except Exception as e:
                log.warning("removing the weight handler: %s", e)


def chunks(version: int, data: bytes, sha256: str, chunk_bytes: int):
    """`data` as WeightChunks of `chunk_bytes`, each carrying the total size and sha256."""
    for offset in range(0, max(len(data), 1), chunk_bytes):
        yield swarm_pb2.WeightChunk(
            policy_version=version,
            offset=offset,
            data=data[offset : offset + chunk_bytes],
            total_bytes=len(data),
            sha256=sha256,
        )


async def fetch_file(
    host: PeerHost, holder, protocol: str, request, expected: str, max_bytes: int, timeout: float
) -> bytes:
    """One file from `holder` over stream `protocol` (WeightChunks in answer to `request`), checked by
    `receive`; each step (dial, first answer, each chunk) must come within `timeout` seconds."""
    peer = PeerID.from_base58(holder.peer_id)
    try:
        await host.connect(peer, holder.peer_addrs, timeout)
        stream = await asyncio.wait_for(
            host.p2p.iterate_protobuf_handler(peer, protocol, request, swarm_pb2.WeightChunk), timeout
        )
    except TimeoutError:
        raise WeightError(f"no answer within {timeout:g} s") from None
    try:
        return await receive(stream, expected, timeout, max_bytes)
    finally:
        await stream.aclose()


async def receive(stream, expected: str, timeout: float, max_bytes: int = 0) -> bytes:
    """Reassemble a stream of WeightChunks, checking order, size and sha256 (and `expected`, if set);
    a file announced larger than `max_bytes` (if set) is refused at its first chunk."""
    parts, size, total, claimed, hasher = [], 0, None, "", hashlib.sha256()
    while True:
        try:
            chunk = await asyncio.wait_for(anext(stream), timeout)
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise WeightError(f"holder silent for {timeout:g} s after {size} bytes") from None
        if chunk.error:
            raise NotHeld(chunk.error)
        if total is None:
            total, claimed = chunk.total_bytes, chunk.sha256
            if expected and claimed != expected:  # refuse before spending bandwidth on it
                raise WeightError(
                    f"holder's file has sha256 {claimed[:12]}…, not the published {expected[:12]}…"
                )
            if max_bytes and total > max_bytes:
                raise WeightError(
                    f"holder announces a file of {total} bytes; the version's is at most {max_bytes}"
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
