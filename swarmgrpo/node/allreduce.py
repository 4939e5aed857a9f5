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

Error feedback (`ErrorFeedback`, for the lossy codecs): what a member's encodings lost in one round
is added to what it encodes in the next, so rounding errors are delayed, not dropped (the remedy of
1-bit SGD and EF-SGD; PowerSGD carries its own). A member keeps two residuals: that of the parts it
sends in the reduce phase (its whole vector), and that of the mean slice it owns and sends in the
gather phase. Both are per member and never travel, so every member still decodes the same bytes.
Over rounds the decoded means sum to the exact means up to the last residual. They are zeroed when
the round's layout (members, own index, length) changes, and after a failed round.

Failure: a member that does not deliver within `timeout` seconds fails the round for everyone
(`AllReduceError.missing` names the members not heard from); the caller retries without them.
Sends are retried until then, so members need not start a round at the same moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
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
STREAMS = 8  # parallel streams per part sent (see `_send`)
MIN_STREAM_BYTES = 256 * 1024  # parts smaller than this x streams use fewer streams
LINGER_S = 2.0  # `close` keeps taking parts until none has come for this long
REDUCE, GATHER = 0, 1


@dataclass(frozen=True)
class Member:
    peer_id: str
    addrs: tuple[str, ...] = ()


class ErrorFeedback:
    """One member's residuals, carried from round to round (see the module docstring)."""

    def __init__(self):
        self.layout: tuple[int, int, int] | None = None
        self.sent = torch.empty(0)
        self.mean = torch.empty(0)

    def prepare(self, n: int, me: int, numel: int) -> None:
        """Zero the residuals unless the last round had this layout."""
        if self.layout != (n, me, numel):
            self.layout = (n, me, numel)
            self.sent = torch.zeros(numel)
            self.mean = torch.zeros(numel // n + (me < numel % n))  # slice me of torch.tensor_split

    def reset(self) -> None:
        self.layout = None


def _encode_keeping_error(codec: str, values: torch.Tensor, residual: torch.Tensor) -> bytes | bytearray:
    """Encode `values`, leaving values − decode(encoding) in `residual`."""
    data = compression.encode(codec, values)
    compression.decode_into(data, residual)
    residual.sub_(values).neg_()
    return data


class _PhaseClock:
    """Seconds per phase of a round, for benchmarks and logs (`AllReduce.last_phases`)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self._last
        self._last = now


class AllReduceError(RuntimeError):
    def __init__(self, message: str, missing: Sequence[int] = ()):
        super().__init__(message)
        self.missing = list(missing)


class AllReduce:
    def __init__(
        self, host: PeerHost, timeout: float = 120.0, chunk_bytes: int = 1 << 20, streams: int = STREAMS
    ):
        self.host, self.timeout, self.chunk_bytes, self.streams = host, timeout, chunk_bytes, streams
        self.last_bytes_sent = 0
        self.last_phases: dict[str, float] = {}  # seconds per phase of the last round (see `_run`)
        self._inbox: dict[tuple[str, int, int, int], tuple[float, bytes | bytearray, float]] = {}
        # parts still arriving: key -> (buffer, {offset: length} of the ranges in it, first seen)
        self._partial: dict[tuple[str, int, int, int], tuple[bytearray, dict[int, int], float]] = {}
        self._arrived: asyncio.Condition | None = None
        self._last_part = 0.0  # monotonic time a stream last delivered a range (see `close`)
        host.call(self._register())

    async def _register(self) -> None:
        self._arrived = asyncio.Condition()
        await self.host.p2p.add_protobuf_handler(
            PROTOCOL, self._receive, swarm_pb2.AllReducePart, stream_input=True
        )

    def close(self, linger: float = LINGER_S) -> None:
        """Stop taking parts, once none has arrived for `linger` seconds. A member that has all it
        needs ends its round while others may still be sending to it: a send whose data arrived
        but whose acknowledgment was lost is retried within ~0.1 s (`_send_all`), and without the
        handler that retry would fail until the deadline and fail the sender's round."""
        time.sleep(max(0.0, self._last_part + linger - time.monotonic()))
        if self.host.p2p is not None:
            try:
                self.host.call(self.host.p2p.remove_protobuf_handler(PROTOCOL, stream_input=True), timeout=10)
            except Exception as e:
                log.warning("removing the all-reduce handler: %s", e)

    # ------------------------------------------------------------------ receiving

    async def _receive(self, requests: AsyncIterator[swarm_pb2.AllReducePart], context: P2PContext):
        """One stream: a contiguous byte range of one part (a part may come over several streams),
        written straight into the part's buffer as it arrives."""
        head, size, buf = None, 0, None
        async for msg in requests:
            if head is None:
                head = msg
                buf = self._buffer((msg.round_id, msg.phase, msg.part, msg.sender), msg.total_bytes)
            end = msg.offset + len(msg.data)
            if msg.offset != head.offset + size or (msg.round_id, msg.phase, msg.part, msg.sender) != (
                head.round_id,
                head.phase,
                head.part,
                head.sender,
            ):
                return swarm_pb2.AllReduceAck(
                    error=f"chunk at offset {msg.offset} after {size} bytes: stream corrupt"
                )
            if msg.total_bytes != head.total_bytes or end > len(buf):
                return swarm_pb2.AllReduceAck(error=f"chunk ends at {end}, past the part's {len(buf)} bytes")
            buf[msg.offset : end] = msg.data
            size += len(msg.data)
        if head is None:
            return swarm_pb2.AllReduceAck(error="empty stream")
        key = (head.round_id, head.phase, head.part, head.sender)
        await self._piece(key, head.weight, head.offset, size)
        self._last_part = time.monotonic()
        return swarm_pb2.AllReduceAck()

    def _buffer(self, key, total: int) -> bytearray:
        if key not in self._partial:
            self._partial[key] = (bytearray(total), {}, time.monotonic())
        return self._partial[key][0]

    async def _piece(self, key, weight: float, offset: int, length: int) -> None:
        """A range of a part is in its buffer; the part goes to the inbox once its ranges cover it
        (a range sent again by a retried send replaces itself)."""
        async with self._arrived:
            entry = self._partial.get(key)
            if entry is None:
                return  # the round ended meanwhile
            buf, ranges, _ = entry
            ranges[offset] = length
            if sum(ranges.values()) < len(buf):
                return
            del self._partial[key]
        await self._put(key, weight, buf)

    async def _put(self, key, weight: float, data: bytes | bytearray) -> None:
        now = time.monotonic()
        async with self._arrived:
            for old in [k for k, v in self._inbox.items() if now - v[2] > 10 * self.timeout]:
                del self._inbox[old]  # parts of rounds that failed or that we never ran
            for old in [k for k, v in self._partial.items() if now - v[2] > 10 * self.timeout]:
                del self._partial[old]
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

    async def _send(self, member: Member, head: swarm_pb2.AllReducePart, data: bytes | bytearray) -> None:
        """`data` to `member` over up to `streams` parallel streams, one contiguous range each: a
        libp2p stream's flow-control window (yamux) caps one stream at window / RTT, which on a
        50 ms link is far below the link's speed."""
        peer = PeerID.from_base58(member.peer_id)
        await self.host.connect(peer, member.addrs, self.timeout)

        view = memoryview(data)  # bytes or bytearray; each chunk is copied once, into its message

        async def stream(start: int, end: int) -> None:
            async def chunks():
                for offset in range(start, max(end, start + 1), self.chunk_bytes):
                    msg = swarm_pb2.AllReducePart()
                    msg.CopyFrom(head)
                    msg.offset, msg.total_bytes = offset, len(data)
                    msg.data = bytes(view[offset : min(offset + self.chunk_bytes, end)])
                    yield msg

            ack = await self.host.p2p.call_protobuf_handler(peer, PROTOCOL, chunks(), swarm_pb2.AllReduceAck)
            if ack.error:
                raise AllReduceError(f"member {member.peer_id[:12]} refused a part: {ack.error}")

        n = max(1, min(self.streams, -(-len(data) // MIN_STREAM_BYTES)))
        bounds = [len(data) * i // n for i in range(n + 1)]
        await asyncio.gather(*(stream(a, b) for a, b in itertools.pairwise(bounds)))
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
                except (TypeError, AttributeError, NameError):
                    raise  # a bug of ours, not the network: retrying would only hide it until the deadline
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
        feedback: ErrorFeedback | None = None,
    ) -> torch.Tensor:
        """The weighted mean of every member's `vector` (same length everywhere), identical on all.
        With `feedback` (and a lossy codec), this member's residuals are added back and updated."""
        if not 0 <= me < len(members):
            raise ValueError(f"member index {me} is not in a round of {len(members)}")
        if not weight > 0:
            raise ValueError(f"averaging weight must be > 0, got {weight}")
        return self.host.call(
            self._run(round_id, list(members), me, vector.detach().reshape(-1), weight, codec, feedback)
        )

    async def _run(self, round_id, members, me, vector, weight, codec, feedback=None) -> torch.Tensor:
        """Sends run in the background: a phase ends when this member has *received* what it
        needs, not when its own sends are acknowledged, so each phase costs one trip across the
        network, not two. Every send must still succeed before the round counts."""
        n = len(members)
        deadline = time.monotonic() + self.timeout
        self.last_bytes_sent = 0
        clock = _PhaseClock()
        self.last_phases = clock.seconds
        vector = vector.to(torch.float32)
        if codec == "none":
            feedback = None  # nothing is lost
        if feedback is not None:
            feedback.prepare(n, me, vector.numel())
            vector = vector + feedback.sent
            residuals = torch.tensor_split(feedback.sent, n)
        slices = torch.tensor_split(vector, n)
        sending: list[asyncio.Task] = []
        try:
            sends = []
            for j, part in enumerate(slices):
                head = swarm_pb2.AllReducePart(
                    round_id=round_id, phase=REDUCE, part=j, sender=me, weight=weight
                )
                if feedback is not None:
                    data = _encode_keeping_error(codec, part, residuals[j])
                else:
                    data = compression.encode(codec, part)
                if j == me:  # through the same codec as everyone's, so no member is favoured
                    await self._put((round_id, REDUCE, me, me), weight, data)
                else:
                    sends.append((j, members[j], head, data))
            clock.lap("encode")
            sending.append(asyncio.create_task(self._send_all(sends, deadline)))
            keys = {(round_id, REDUCE, me, i) for i in range(n)}
            inputs = await self._receive_while_sending(keys, deadline, sending)
            clock.lap("reduce_wait")
            # Float32 sums in member order. (Float64 sums, cast back, made this the slowest local step
            # of a float32 round: 4.5 s of 56 s under the emulated WAN at N = 2.)
            total, weights = None, 0.0
            for i in range(n):  # fixed order: the owner's arithmetic does not depend on arrival order
                w, data = inputs[(round_id, REDUCE, me, i)]
                values = compression.decode(data)  # float32 parts: a view of the received bytes
                if values.numel() != slices[me].numel():
                    raise ValueError(
                        f"member {i} sent {values.numel()} values for slice {me} of {slices[me].numel()}"
                    )
                total = values * w if total is None else total.add_(values, alpha=w)
                weights += w
            total.div_(weights)
            if feedback is not None:
                mean = _encode_keeping_error(codec, total.add_(feedback.mean), feedback.mean)
            else:
                mean = compression.encode(codec, total)
            clock.lap("sum")
            await self._put((round_id, GATHER, me, me), 0.0, mean)
            head = swarm_pb2.AllReducePart(round_id=round_id, phase=GATHER, part=me, sender=me)
            gathers = [(j, members[j], head, mean) for j in range(n) if j != me]
            sending.append(asyncio.create_task(self._send_all(gathers, deadline)))
            keys = {(round_id, GATHER, j, j) for j in range(n)}
            outputs = await self._receive_while_sending(keys, deadline, sending)
            clock.lap("gather_wait")
            result = torch.empty(vector.numel())
            for j, out in enumerate(torch.tensor_split(result, n)):
                compression.decode_into(outputs[(round_id, GATHER, j, j)][1], out)
            clock.lap("decode")
            await asyncio.gather(*sending)  # every member must have got this member's parts
            clock.lap("send_tail")
            return result
        except BaseException:
            if feedback is not None:  # the residuals now belong to a round that did not happen
                feedback.reset()
            raise
        finally:
            for task in sending:
                task.cancel()
            async with self._arrived:
                for key in [k for k in self._inbox if k[0] == round_id]:
                    del self._inbox[key]
                for key in [k for k in self._partial if k[0] == round_id]:
                    del self._partial[key]

    async def _receive_while_sending(self, keys: set, deadline: float, sending: list) -> dict:
        """`_wait` for `keys`, failing as soon as one of this member's sends has failed."""
        waiting = asyncio.create_task(self._wait(keys, deadline))
        try:
            while True:
                pending = [t for t in sending if not t.done()]
                await asyncio.wait([waiting, *pending], return_when=asyncio.FIRST_COMPLETED)
                for t in sending:
                    if t.done() and t.exception() is not None:
                        raise t.exception()
                if waiting.done():
                    return waiting.result()
        finally:
            waiting.cancel()
