"""Weighted all-reduce of one float32 vector among the members of a round, over libp2p streams.

    reducer = AllReduce(host)                                   # registers "swarmgrpo.allreduce"
    averaged = reducer.run("run/7/0", members, me, grads_vector, weight, codec="fp16")

Reduce-scatter then all-gather, as in a butterfly all-reduce: the vector is cut into one slice per
member; member i sends slice j (encoded with `codec`) to member j, which computes the weighted mean
of slice j over all members; then every owner encodes its mean once and sends those same bytes to
every member, itself included. So every member decodes identical bytes and ends with a bitwise
identical vector, compressed or not: replicas that apply the same optimizer step stay identical,
which the coordinator checks by weight hash.

Why not hivemind's `DecentralizedAverager`: its all-reduce returns each peer `averaged − local`
(compressed), which each peer adds to its own local vector. Under compression, and even in plain
float32 (x + (a − x) is not always a), peers end with slightly different averages, and replicas
that should be identical drift apart in the last bits. We keep hivemind's transport (P2P, the
DHT that names the peers) and its codecs (`compression`), and do the arithmetic so that it cannot.

Bytes on the wire per member and round: 2·(N−1)/N of the encoded vector, the bandwidth-optimal
figure for an all-reduce; `last_bytes_sent` counts the payload this member sent in its last round.

Failure: a member that does not deliver within `timeout` seconds fails the round for everyone
(`AllReduceError.missing` names the members not heard from); the caller retries without them.
Sends are retried until then, so members need not start a round at the same moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import torch
from hivemind.p2p import P2PContext, PeerID

from swarmgrpo.node import compression
from swarmgrpo.node.p2p_host import PeerHost
from swarmgrpo.protocol import swarm_pb2

log = logging.getLogger(__name__)
PROTOCOL = "swarmgrpo.allreduce"
REDUCE, GATHER = 0, 1


@dataclass(frozen=True)
class Member:
    peer_id: str
    addrs: tuple[str, ...] = ()


class AllReduceError(RuntimeError):
    def __init__(self, message: str, missing: Sequence[int] = ()):
        super().__init__(message)
        self.missing = list(missing)


class AllReduce:
    def __init__(self, host: PeerHost, timeout: float = 120.0, chunk_bytes: int = 1 << 20):
        self.host, self.timeout, self.chunk_bytes = host, timeout, chunk_bytes
        self.last_bytes_sent = 0
        self._inbox: dict[tuple[str, int, int, int], tuple[float, bytes, float]] = {}
        self._arrived: asyncio.Condition | None = None
        host.call(self._register())

    async def _register(self) -> None:
        self._arrived = asyncio.Condition()
        await self.host.p2p.add_protobuf_handler(
            PROTOCOL, self._receive, swarm_pb2.AllReducePart, stream_input=True
        )

    def close(self) -> None:
        if self.host.p2p is not None:
            try:
                self.host.call(self.host.p2p.remove_protobuf_handler(PROTOCOL, stream_input=True), timeout=10)
            except Exception as e:
                log.warning("removing the all-reduce handler: %s", e)

    # ------------------------------------------------------------------ receiving

    async def _receive(self, requests: AsyncIterator[swarm_pb2.AllReducePart], context: P2PContext):
        head, chunks, size = None, [], 0
        async for msg in requests:
            if head is None:
                head = msg
            if msg.offset != size or (msg.round_id, msg.phase, msg.part, msg.sender) != (
                head.round_id,
                head.phase,
                head.part,
                head.sender,
            ):
                return swarm_pb2.AllReduceAck(
                    error=f"chunk at offset {msg.offset} after {size} bytes: stream corrupt"
                )
            chunks.append(msg.data)
            size += len(msg.data)
        if head is None or size != head.total_bytes:
            return swarm_pb2.AllReduceAck(error=f"stream ended after {size} bytes")
        await self._put((head.round_id, head.phase, head.part, head.sender), head.weight, b"".join(chunks))
        return swarm_pb2.AllReduceAck()

    async def _put(self, key, weight: float, data: bytes) -> None:
        now = time.monotonic()
        async with self._arrived:
            for old in [k for k, v in self._inbox.items() if now - v[2] > 10 * self.timeout]:
                del self._inbox[old]  # parts of rounds that failed or that we never ran
            self._inbox[key] = (weight, data, now)
            self._arrived.notify_all()

    async def _wait(self, keys: set, deadline: float) -> dict:
        async with self._arrived:
            while not keys <= self._inbox.keys():
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = sorted(k[3] for k in keys - self._inbox.keys())
                    raise AllReduceError(f"no part from members {missing} within {self.timeout:g} s", missing)
                with contextlib.suppress(TimeoutError):  # re-check the deadline, then wait again
                    await asyncio.wait_for(self._arrived.wait(), left)
            return {k: self._inbox.pop(k)[:2] for k in keys}

    # ------------------------------------------------------------------ sending

    async def _send(self, member: Member, head: swarm_pb2.AllReducePart, data: bytes) -> None:
        peer = PeerID.from_base58(member.peer_id)
        await self.host.connect(peer, member.addrs, self.timeout)

        async def chunks():
            for offset in range(0, max(len(data), 1), self.chunk_bytes):
                msg = swarm_pb2.AllReducePart()
                msg.CopyFrom(head)
                msg.offset, msg.total_bytes = offset, len(data)
                msg.data = data[offset : offset + self.chunk_bytes]
                yield msg

        ack = await self.host.p2p.call_protobuf_handler(peer, PROTOCOL, chunks(), swarm_pb2.AllReduceAck)
        if ack.error:
            raise AllReduceError(f"member {member.peer_id[:12]} refused a part: {ack.error}")
        self.last_bytes_sent += len(data)

    async def _send_all(
        self, sends: list[tuple[int, Member, swarm_pb2.AllReducePart, bytes]], deadline
    ) -> None:
        async def one(member, head, data):
            # Retried until the deadline: a member may not have registered its handler yet (it is
            # still loading its model), or a dial may fail once; a dead member fails every try.
            pause = 0.1
            while True:
                try:
                    left = max(deadline - time.monotonic(), 0.01)
                    return await asyncio.wait_for(self._send(member, head, data), left)
                except Exception:
                    if time.monotonic() + pause >= deadline:
                        raise
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 2.0)

        results = await asyncio.gather(*(one(m, h, d) for _, m, h, d in sends), return_exceptions=True)
        failed = [
            (i, r) for (i, _, _, _), r in zip(sends, results, strict=True) if isinstance(r, BaseException)
        ]
        if failed:
            raise AllReduceError(
                "could not send to members " + ", ".join(f"{i} ({r!r})" for i, r in failed),
                [i for i, _ in failed],
            )

    # ------------------------------------------------------------------ the round

    def run(
        self,
        round_id: str,
        members: Sequence[Member],
        me: int,
        vector: torch.Tensor,
        weight: float,
        codec: str = "none",
    ) -> torch.Tensor:
        """The weighted mean of every member's `vector` (same length everywhere), identical on all."""
        if not 0 <= me < len(members):
            raise ValueError(f"member index {me} is not in a round of {len(members)}")
        if not weight > 0:
            raise ValueError(f"averaging weight must be > 0, got {weight}")
        return self.host.call(
            self._run(round_id, list(members), me, vector.detach().reshape(-1), weight, codec)
        )

    async def _run(self, round_id, members, me, vector, weight, codec) -> torch.Tensor:
        n = len(members)
        deadline = time.monotonic() + self.timeout
        self.last_bytes_sent = 0
        slices = torch.tensor_split(vector.to(torch.float32), n)
        try:
            sends = []
            for j, part in enumerate(slices):
                head = swarm_pb2.AllReducePart(
                    round_id=round_id, phase=REDUCE, part=j, sender=me, weight=weight
                )
                data = compression.encode(codec, part)
                if j == me:  # through the same codec as everyone's, so no member is favoured
                    await self._put((round_id, REDUCE, me, me), weight, data)
                else:
                    sends.append((j, members[j], head, data))
            await self._send_all(sends, deadline)
            inputs = await self._wait({(round_id, REDUCE, me, i) for i in range(n)}, deadline)
            total = torch.zeros(slices[me].numel(), dtype=torch.float64)
            weights = 0.0
            for i in range(n):  # fixed order: the owner's arithmetic does not depend on arrival order
                w, data = inputs[(round_id, REDUCE, me, i)]
                total += w * compression.decode(data).to(torch.float64)
                weights += w
            mean = compression.encode(codec, (total / weights).to(torch.float32))
            await self._put((round_id, GATHER, me, me), 0.0, mean)
            head = swarm_pb2.AllReducePart(round_id=round_id, phase=GATHER, part=me, sender=me)
            await self._send_all([(j, members[j], head, mean) for j in range(n) if j != me], deadline)
            outputs = await self._wait({(round_id, GATHER, j, j) for j in range(n)}, deadline)
            return torch.cat([compression.decode(outputs[(round_id, GATHER, j, j)][1]) for j in range(n)])
        finally:
            async with self._arrived:
                for key in [k for k in self._inbox if k[0] == round_id]:
                    del self._inbox[key]
