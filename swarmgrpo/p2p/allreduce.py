"""Weighted all-reduce of one float32 vector among the members of a round, over libp2p streams.

    reducer = AllReduce(host)                                   # registers "swarmgrpo.allreduce"
    averaged = reducer.run("run/7/0", members, me, grads_vector, weight, codec="fp16")

Reduce-scatter then all-gather, as in a butterfly all-reduce: the vector is cut into one slice per
member; member i sends slice j (encoded with `codec`) to member j, which computes the weighted mean
of slice j over all members; then every owner encodes its mean once and sends those same bytes to
every member, itself included. So every member decodes identical bytes and ends with a bitwise
identical vector, compressed or not: replicas that apply the same optimizer step stay identical,
which the coordinator checks by weight hash.

Slices travel in segments (SEGMENT_VALUES values, each encoded on its own), and the round is a
pipeline over them: a member encodes segment s + 1 while segment s is on the wire, an owner sums
segment s and sends its mean while later segments still arrive, and means are decoded as they come.
When the two phases ran one after the other over whole slices, a member's link idled while it
encoded, while the slowest owner summed, and between the phases; pipelined, the link stays busy and
the codec work hides behind it (benchmarks/results/allreduce.md).

Why not hivemind's `DecentralizedAverager`: its all-reduce returns each peer `averaged − local`
(compressed), which each peer adds to its own local vector. Under compression, and even in plain
float32 (x + (a − x) is not always a), peers end with slightly different averages, and replicas
that should be identical drift apart in the last bits. We keep hivemind's transport (P2P, the
DHT that names the peers) and its codecs (`compression`), and do the arithmetic so that it cannot.

Bytes on the wire per member and round: 2·(N−1)/N of the encoded vector, the bandwidth-optimal
figure for an all-reduce; `last_bytes_sent` counts the payload this member sent in its last round,
`last_streams` the streams it opened and `last_resent` the byte ranges it had to send again.

Error feedback (`ErrorFeedback`, for the lossy codecs) carries what a member's encodings lost in
one round into the next (see `allreduce_math`).

Failure: a member that does not deliver within `timeout` seconds fails the round for everyone
(`AllReduceError.missing` names the members not heard from); the caller retries without them.
Sends are retried until then, so members need not start a round at the same moment.

Who owns what: this module drives a round (`run`) and sends; `allreduce_inbox` receives, places
and holds parts; `allreduce_parts` decides what a member takes from the network (every other member
may be hostile); a refused part of a member fails the round at once, naming it
(`AllReduceError.culprits`, also in `missing`); `allreduce_math` holds the codec arithmetic, the
finiteness checks and error feedback (`ErrorFeedback`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from hivemind.p2p import PeerID

from swarmgrpo.p2p.allreduce_inbox import Inbox
from swarmgrpo.p2p.allreduce_math import (
    AllReduceError,
    ErrorFeedback,
    decode_mean,
    encode_with_feedback,
    weighted_mean,
)
from swarmgrpo.p2p.allreduce_parts import GATHER, REDUCE, SEND_WINDOW, Layout
from swarmgrpo.p2p.host import PeerHost
from swarmgrpo.protocol import swarm_pb2

log = logging.getLogger(__name__)
PROTOCOL = "swarmgrpo.allreduce"
STREAMS = 4  # parallel streams per segment sent (see `_send`)
MIN_STREAM_BYTES = 256 * 1024  # parts smaller than this x streams use fewer streams
LINGER_S = 2.0  # `close` keeps taking parts until none has come for this long
SEGMENT_VALUES = 1 << 21  # a slice travels in segments of at most this many values (see `_run`)


@dataclass(frozen=True)
class Member:
    peer_id: str
    addrs: tuple[str, ...] = ()


class AllReduce:
    def __init__(
        self,
        host: PeerHost,
        timeout: float = 120.0,
        chunk_bytes: int = 1 << 20,
        streams: int = STREAMS,
        segment_values: int = SEGMENT_VALUES,
    ):
        """`segment_values` must be the same on every member of a round (it fixes the segments'
        bounds); tests shrink it to run the pipeline on small vectors."""
        self.host, self.timeout, self.chunk_bytes, self.streams = host, timeout, chunk_bytes, streams
        self.segment_values = segment_values
        self.last_bytes_sent = self.last_streams = self.last_resent = 0
        self.last_phases: dict[str, float] = {}  # seconds per phase of the last round (see `_run`)
        self.inbox = Inbox(timeout, segment_values)
        host.call(
            host.p2p.add_protobuf_handler(
                PROTOCOL, self.inbox.receive, swarm_pb2.AllReducePart, stream_input=True
            )
        )

    def close(self, linger: float = LINGER_S) -> None:
        """Stop taking parts, once none has arrived for `linger` seconds. A member that has all it
        needs ends its round while others may still be sending to it: a send whose data arrived
        but whose acknowledgment was lost is retried within ~0.1 s (`_send`), and without the
        handler that retry would fail until the deadline and fail the sender's round."""
        time.sleep(max(0.0, self.inbox.last_part + linger - time.monotonic()))
        if self.host.p2p is not None:
            try:
                self.host.call(self.host.p2p.remove_protobuf_handler(PROTOCOL, stream_input=True), timeout=10)
            except Exception as e:
                log.warning("removing the all-reduce handler: %s", e)

    # ------------------------------------------------------------------ sending

    async def _send(
        self, member: Member, head: swarm_pb2.AllReducePart, data, deadline: float | None = None, index=-1
    ) -> None:
        """`data` to `member` (member `index` of the round) over up to `streams` parallel streams, one
        contiguous range each: a libp2p stream's flow-control window (yamux) caps one stream at
        window / RTT, which on a 50 ms link is far below the link's speed.

        A range whose stream fails is sent again until `deadline` (without one: tried once): a
        member may not have registered its handler yet (it is still loading its model), a dial may
        fail once, and under load a stream is now and then closed before its acknowledgment
        (0.1-0.6% of streams in the emulated-WAN benchmark, which counts them). The receiver
        places ranges by offset, so only the failed range travels again. A dead member fails
        every try."""
        peer = PeerID.from_base58(member.peer_id)
        view = memoryview(data)  # bytes or bytearray; each chunk is copied once, into its message

        async def chunks(start: int, end: int):
            for offset in range(start, max(end, start + 1), self.chunk_bytes):
                msg = swarm_pb2.AllReducePart()
                msg.CopyFrom(head)
                msg.offset, msg.total_bytes = offset, len(data)
                msg.data = bytes(view[offset : min(offset + self.chunk_bytes, end)])
                yield msg

        async def stream(start: int, end: int) -> None:
            await self.host.connect(peer, member.addrs, self.timeout)
            self.last_streams += 1
            ack = await self.host.p2p.call_protobuf_handler(
                peer, PROTOCOL, chunks(start, end), swarm_pb2.AllReduceAck
            )
            if ack.error:
                raise AllReduceError(f"member {member.peer_id[:12]} refused a part: {ack.error}")

        async def retrying(start: int, end: int) -> None:
            pause = 0.1
            while True:
                try:
                    left = None if deadline is None else max(deadline - time.monotonic(), 0.01)
                    return await asyncio.wait_for(stream(start, end), left)
                except (TypeError, AttributeError, NameError):
                    raise  # a bug of ours, not the network: retrying would only hide it until the deadline
                except Exception as e:
                    if deadline is None:
                        raise
                    if time.monotonic() + pause >= deadline:
                        raise AllReduceError(f"could not send to member {index} ({e!r})", [index]) from e
                    self.last_resent += 1
                    log.info(
                        "segment %d of part %d: bytes %d-%d to member %d again (%r)",
                        head.segment, head.part, start, end, index, e,
                    )  # fmt: skip
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 2.0)

        n = max(1, min(self.streams, -(-len(data) // MIN_STREAM_BYTES)))
        bounds = [len(data) * i // n for i in range(n + 1)]
        await asyncio.gather(*(retrying(a, b) for a, b in itertools.pairwise(bounds)))
        self.last_bytes_sent += len(data)

    async def _sender(self, index: int, member: Member, outbox: asyncio.Queue, deadline: float) -> None:
        """Send what comes through `outbox` to one member, in order, with up to SEND_WINDOW segments
        in flight (the next one streams while the last one's acknowledgment travels back), until
        None comes; fail as soon as a send has failed."""
        window = asyncio.Semaphore(SEND_WINDOW)
        flying: list[asyncio.Task] = []

        async def one(head, data):
            try:
                await self._send(member, head, data, deadline, index)
            finally:
                window.release()

        try:
            while (item := await outbox.get()) is not None:
                await window.acquire()
                for task in flying:
                    if task.done() and task.exception() is not None:
                        raise task.exception()
                flying.append(asyncio.create_task(one(*item)))
            await asyncio.gather(*flying)
        finally:
            for task in flying:
                task.cancel()

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
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"averaging weight must be a finite number > 0, got {weight}")
        return self.host.call(
            self._run(round_id, list(members), me, vector.detach().reshape(-1), weight, codec, feedback)
        )

    async def _run(self, round_id, members, me, vector, weight, codec, feedback=None) -> torch.Tensor:
        """A pipeline over segments (see the module docstring): this member encodes its parts a
        segment at a time (segment-major, so every owner soon has something to sum), each segment
        going on the wire while the next is encoded; as soon as an owner holds segment s from every
        member it sums it, encodes the mean and sends it to everyone; each member decodes the means'
        segments as they come. The codec work runs in a worker thread (torch releases the GIL), so
        this loop keeps receiving meanwhile. The round ends when this member has every mean and
        every one of its sends has been acknowledged."""
        n = len(members)
        deadline = time.monotonic() + self.timeout
        self.last_bytes_sent = self.last_streams = self.last_resent = 0
        timer = _Timer()
        self.last_phases = timer.seconds
        vector = vector.to(torch.float32)
        if codec == "none":
            feedback = None  # nothing is lost
        if feedback is not None:
            feedback.prepare(n, me, vector.numel())

        def segments(t: torch.Tensor) -> tuple[torch.Tensor, ...]:  # cut the same way on every member
            return torch.tensor_split(t, max(1, -(-t.numel() // self.segment_values)))

        parts = [segments(s) for s in torch.tensor_split(vector, n)]
        result = torch.empty(vector.numel())
        outs = [segments(s) for s in torch.tensor_split(result, n)]
        sent_residuals = mean_residuals = None
        if feedback is not None:
            sent_residuals = [segments(s) for s in torch.tensor_split(feedback.sent, n)]
            mean_residuals = segments(feedback.mean)
        reduce_boxes = {j: asyncio.Queue() for j in range(n) if j != me}
        gather_boxes = {j: asyncio.Queue() for j in range(n) if j != me}

        async def encode_parts():
            for s in range(max(len(p) for p in parts)):
                for j in [(me + 1 + k) % n for k in range(n)]:  # every member starts with a different owner
                    if s >= len(parts[j]):
                        continue
                    residual = sent_residuals[j][s] if sent_residuals else None
                    data = await timer.work("encode", encode_with_feedback, codec, parts[j][s], residual)
                    if j == me:  # through the same codec as everyone's, so no member is favoured
                        await self.inbox.put((round_id, REDUCE, me, me, s), weight, data)
                    else:
                        head = swarm_pb2.AllReducePart(
                            round_id=round_id, phase=REDUCE, part=j, sender=me, weight=weight, segment=s
                        )
                        reduce_boxes[j].put_nowait((head, data))
            for box in reduce_boxes.values():
                box.put_nowait(None)

        async def reduce_mine():
            for s, mine in enumerate(parts[me]):
                inputs = await self.inbox.wait({(round_id, REDUCE, me, i, s) for i in range(n)}, deadline)
                if s == 0:
                    timer.mark("first_inputs")
                ordered = [inputs[(round_id, REDUCE, me, i, s)] for i in range(n)]
                residual = mean_residuals[s] if mean_residuals else None
                mean = await timer.work("sum", weighted_mean, codec, ordered, mine.numel(), residual, me)
                await self.inbox.put((round_id, GATHER, me, me, s), 0.0, mean)
                head = swarm_pb2.AllReducePart(round_id=round_id, phase=GATHER, part=me, sender=me, segment=s)
                for box in gather_boxes.values():
                    box.put_nowait((head, mean))
            timer.mark("last_inputs")
            for box in gather_boxes.values():
                box.put_nowait(None)

        async def decode_means():
            waiting = {(round_id, GATHER, j, j, s) for j in range(n) for s in range(len(outs[j]))}
            while waiting:
                for key, (_, data) in (await self.inbox.wait(waiting, deadline, any_of=True)).items():
                    await timer.work("decode", decode_mean, data, outs[key[2]][key[4]], key)
                    waiting.discard(key)
            timer.mark("last_mean")

        peers = tuple(m.peer_id for m in members)  # from here on `inbox.end` must run (nothing below raises)
        await self.inbox.open(Layout(round_id, peers, me, codec, vector.numel(), self.segment_values))
        # In the order their errors are reported: a member whose slice never reached this one is
        # the cause; the means that then never come, and sends it never took, are its effects.
        tasks = [asyncio.create_task(reduce_mine())]
        for j in reduce_boxes:
            tasks.append(asyncio.create_task(self._sender(j, members[j], reduce_boxes[j], deadline)))
            tasks.append(asyncio.create_task(self._sender(j, members[j], gather_boxes[j], deadline)))
        tasks += [asyncio.create_task(decode_means()), asyncio.create_task(encode_parts())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            if any(isinstance(t.exception(), AllReduceError) for t in done):
                await asyncio.wait(tasks, timeout=1.0)  # the others' waits end at the same deadline
            for task in tasks:
                if task.done() and task.exception() is not None:
                    raise task.exception()
            timer.mark("sends_acknowledged")
            return result
        except BaseException:
            if feedback is not None:  # the residuals now belong to a round that did not happen
                feedback.reset()
            raise
        finally:
            for task in tasks:
                task.cancel()
            await self.inbox.end(round_id)


class _Timer:
    """Where a round's time goes, for benchmarks and logs (`AllReduce.last_phases`): seconds of codec
    work per kind (encode, sum, decode; in a worker thread, overlapping the wire), and the moments,
    from the round's start, when it got its first and last slice inputs, its last mean, and the
    acknowledgment of its last send."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    async def work(self, kind: str, fn, *args):
        t0 = time.perf_counter()
        out = await asyncio.to_thread(fn, *args)
        self.seconds[kind] = self.seconds.get(kind, 0.0) + time.perf_counter() - t0
        return out

    def mark(self, moment: str) -> None:
        self.seconds[moment] = time.perf_counter() - self._start
