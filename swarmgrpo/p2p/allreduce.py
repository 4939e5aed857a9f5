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
the codec work hides behind it (README, "all-reduce bytes and seconds").

Why not hivemind's `DecentralizedAverager`: its all-reduce returns each peer `averaged − local`
(compressed), which each peer adds to its own local vector. Under compression, and even in plain
float32 (x + (a − x) is not always a), peers end with slightly different averages, and replicas
that should be identical drift apart in the last bits. We keep hivemind's transport (P2P, the
DHT that names the peers) and its codecs (`compression`), and do the arithmetic so that it cannot.

Bytes on the wire per member and round: 2·(N−1)/N of the encoded vector, the bandwidth-optimal
figure for an all-reduce; `last_bytes_sent` counts the payload this member sent in its last round,
`last_streams` the streams it opened and `last_resent` the byte ranges it had to send again.

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

What a member takes from the network, and what it holds before its round starts, is decided in
`allreduce_parts` (every other member may be hostile); a refused part of a member fails the round
at once, naming it (`AllReduceError.culprits`, also in `missing`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import torch
from hivemind.p2p import P2PContext, PeerID

from swarmgrpo.p2p import compression
from swarmgrpo.p2p.allreduce_parts import GATHER, REDUCE, Layout, Refusal, early_refusal, refusal
from swarmgrpo.p2p.host import PeerHost
from swarmgrpo.protocol import swarm_pb2

log = logging.getLogger(__name__)
PROTOCOL = "swarmgrpo.allreduce"
STREAMS = 4  # parallel streams per segment sent (see `_send`)
MIN_STREAM_BYTES = 256 * 1024  # parts smaller than this x streams use fewer streams
LINGER_S = 2.0  # `close` keeps taking parts until none has come for this long
SEGMENT_VALUES = 1 << 21  # a slice travels in segments of at most this many values (see `_run`)
SEND_WINDOW = 2  # segments in flight to one member, per phase
FINISHED_ROUNDS = 256  # rounds remembered as ended here, so late parts of them are dropped


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


class AllReduceError(RuntimeError):
    """`missing`: the members the caller should go on without: those not heard from in time, and
    `culprits`, those whose parts this member refused (the message says why)."""

    def __init__(self, message: str, missing: Sequence[int] = (), culprits: Sequence[int] = ()):
        super().__init__(message)
        self.culprits = sorted(set(culprits))
        self.missing = sorted(set(missing) | set(culprits))


@dataclass
class _Part:
    """A segment arriving over one or more streams: its buffer and the byte ranges in it so far."""

    buf: bytearray
    weight: float
    peer: str
    since: float
    ranges: dict[int, int] = field(default_factory=dict)

    def whole(self) -> bool:
        return sum(self.ranges.values()) >= len(self.buf)


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
        # arrived segments: (round, phase, part, sender, segment) -> (weight, bytes, arrival time)
        self._inbox: dict[tuple[str, int, int, int, int], tuple[float, bytes | bytearray, float]] = {}
        self._partial: dict[tuple[str, int, int, int, int], _Part] = {}  # segments still arriving
        self._held: dict[tuple[tuple, str], _Part] = {}  # (key, peer) -> part of a round not started here
        self._rounds: dict[str, Layout] = {}  # the rounds running here
        self._refused: dict[str, dict[int, str]] = {}  # round -> {member: why its part was refused}
        self._finished: dict[str, None] = {}  # the last FINISHED_ROUNDS rounds that ended here
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
        but whose acknowledgment was lost is retried within ~0.1 s (`_send`), and without the
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
        written straight into the part's buffer as it arrives, once `_admit` has taken it. A refused
        part's chunks are read and dropped: the sender sends them all the same, and a stream closed
        with data unread is reset, which loses the answer that says why."""
        peer = context.remote_id.to_base58()
        head, size, part, refused = None, 0, None, ""
        async for msg in requests:
            if head is None:
                head = msg
                part = await self._admit(msg, peer)
                if isinstance(part, str):
                    part, refused = None, part
            end = msg.offset + len(msg.data)
            if msg.offset != head.offset + size or _key(msg) != _key(head):
                return swarm_pb2.AllReduceAck(
                    error=f"chunk at offset {msg.offset} after {size} bytes: stream corrupt"
                )
            if msg.total_bytes != head.total_bytes or end > head.total_bytes:
                return swarm_pb2.AllReduceAck(
                    error=f"chunk ends at {end}, past the part's {head.total_bytes} bytes"
                )
            if part is not None:  # None: a part of a round that ended here, taken and dropped
                part.buf[msg.offset : end] = msg.data
            size += len(msg.data)
        if head is None or refused:
            return swarm_pb2.AllReduceAck(error=refused or "empty stream")
        if part is not None:
            await self._piece(_key(head), part, head.offset, size)
        self._last_part = time.monotonic()
        return swarm_pb2.AllReduceAck()

    async def _admit(self, msg: swarm_pb2.AllReducePart, peer: str) -> _Part | str | None:
        """Where the part `msg` announces goes: a buffer (new, or the one its other ranges are in),
        None (its round ended here: read and dropped), or why it is refused (see `allreduce_parts`)."""
        key = _key(msg)
        async with self._arrived:
            layout = self._rounds.get(msg.round_id)
            if layout is None:
                return None if msg.round_id in self._finished else self._hold(key, msg, peer)
            refused = refusal(layout, key, peer, msg.total_bytes, msg.weight)
            if refused is not None:
                self._refuse(msg.round_id, refused)
                return refused.reason
            part = self._partial.get(key)
            if part is None or len(part.buf) != msg.total_bytes:  # a uint8 part sent again in another size
                part = self._partial[key] = _Part(
                    bytearray(msg.total_bytes), msg.weight, peer, time.monotonic()
                )
            return part

    def _hold(self, key, msg: swarm_pb2.AllReducePart, peer: str) -> _Part | str:
        now = time.monotonic()
        for old in [k for k, p in self._held.items() if now - p.since > self.timeout]:
            del self._held[old]  # its round never started here within a round's timeout
        part = self._held.get((key, peer))
        if part is not None and len(part.buf) == msg.total_bytes:
            return part
        self._held.pop((key, peer), None)
        largest = max(compression.encoded_size(c, self.segment_values)[1] for c in compression.CODECS)
        held = [(p.peer, len(p.buf)) for p in self._held.values()]
        why = early_refusal(msg, peer, held, largest, SEND_WINDOW)
        if why is not None:
            log.info("not holding a part from %s: %s", peer, why)
            return why
        part = self._held[(key, peer)] = _Part(bytearray(msg.total_bytes), msg.weight, peer, now)
        return part

    def _refuse(self, round_id: str, refused: Refusal) -> None:
        """Log a refused part; one a member is to blame for fails the round (`_wait`). Call holding
        `_arrived`."""
        if refused.culprit is None:  # anyone can send these: not worth a warning each
            log.info("round %s: refused a part: %s", round_id, refused.reason)
        else:
            log.warning(
                "round %s: refused a part of member %d: %s", round_id, refused.culprit, refused.reason
            )
            self._refused.setdefault(round_id, {}).setdefault(refused.culprit, refused.reason)
            self._arrived.notify_all()

    async def _open(self, layout: Layout) -> None:
        """Start taking the parts of a round: the held ones pass `refusal` now, or are dropped."""
        round_id, now = layout.round_id, time.monotonic()
        async with self._arrived:
            self._rounds[round_id] = layout
            self._finished.pop(round_id, None)
            for key, peer in [k for k in self._held if k[0][0] == round_id]:
                part = self._held.pop((key, peer))
                refused = refusal(layout, key, peer, len(part.buf), part.weight)
                if refused is not None:
                    self._refuse(round_id, refused)
                elif part.whole():
                    self._inbox[key] = (part.weight, part.buf, now)
                else:
                    self._partial[key] = part

    async def _end(self, round_id: str) -> None:
        async with self._arrived:
            self._rounds.pop(round_id, None)
            self._refused.pop(round_id, None)
            self._finished[round_id] = None
            while len(self._finished) > FINISHED_ROUNDS:
                del self._finished[next(iter(self._finished))]
            for key in [k for k in self._inbox if k[0] == round_id]:
                del self._inbox[key]
            for key in [k for k in self._partial if k[0] == round_id]:
                del self._partial[key]

    async def _piece(self, key, part: _Part, offset: int, length: int) -> None:
        """A range of `part` is in its buffer; the part goes to the inbox once its ranges cover it
        (a range sent again by a retried send replaces itself). A held part waits for its round."""
        async with self._arrived:
            part.ranges[offset] = length
            if not part.whole() or self._partial.get(key) is not part:
                return  # still arriving, held, or dropped meanwhile (its round ended or refused it)
            del self._partial[key]
        await self._put(key, part.weight, part.buf)

    async def _put(self, key, weight: float, data: bytes | bytearray) -> None:
        now = time.monotonic()
        async with self._arrived:
            for old in [k for k, v in self._inbox.items() if now - v[2] > 10 * self.timeout]:
                del self._inbox[old]  # parts of rounds that failed or that we never ran
            for old in [k for k, v in self._partial.items() if now - v.since > 10 * self.timeout]:
                del self._partial[old]
            self._inbox[key] = (weight, data, now)
            self._arrived.notify_all()

    async def _wait(self, keys: set, deadline: float, any_of: bool = False) -> dict:
        """Take `keys` from the inbox once all have arrived (with `any_of`: once one has, taking
        those there are); past the deadline, fail naming the senders not heard from; as soon as a
        part of one of them is refused, fail naming it."""
        async with self._arrived:
            while not (keys & self._inbox.keys() if any_of else keys <= self._inbox.keys()):
                _raise_refused(self._refused, keys)
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = sorted({k[3] for k in keys - self._inbox.keys()})
                    raise AllReduceError(f"no part from members {missing} within {self.timeout:g} s", missing)
                with contextlib.suppress(TimeoutError):  # re-check the deadline, then wait again
                    await asyncio.wait_for(self._arrived.wait(), left)
            return {k: self._inbox.pop(k)[:2] for k in keys & self._inbox.keys()}

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
                    data = await timer.work("encode", _encode, codec, parts[j][s], residual)
                    if j == me:  # through the same codec as everyone's, so no member is favoured
                        await self._put((round_id, REDUCE, me, me, s), weight, data)
                    else:
                        head = swarm_pb2.AllReducePart(
                            round_id=round_id, phase=REDUCE, part=j, sender=me, weight=weight, segment=s
                        )
                        reduce_boxes[j].put_nowait((head, data))
            for box in reduce_boxes.values():
                box.put_nowait(None)

        async def reduce_mine():
            for s, mine in enumerate(parts[me]):
                inputs = await self._wait({(round_id, REDUCE, me, i, s) for i in range(n)}, deadline)
                if s == 0:
                    timer.mark("first_inputs")
                ordered = [inputs[(round_id, REDUCE, me, i, s)] for i in range(n)]
                residual = mean_residuals[s] if mean_residuals else None
                mean = await timer.work("sum", _weighted_mean, codec, ordered, mine.numel(), residual, me)
                await self._put((round_id, GATHER, me, me, s), 0.0, mean)
                head = swarm_pb2.AllReducePart(round_id=round_id, phase=GATHER, part=me, sender=me, segment=s)
                for box in gather_boxes.values():
                    box.put_nowait((head, mean))
            timer.mark("last_inputs")
            for box in gather_boxes.values():
                box.put_nowait(None)

        async def decode_means():
            waiting = {(round_id, GATHER, j, j, s) for j in range(n) for s in range(len(outs[j]))}
            while waiting:
                for key, (_, data) in (await self._wait(waiting, deadline, any_of=True)).items():
                    await timer.work("decode", _decode_mean, data, outs[key[2]][key[4]], key)
                    waiting.discard(key)
            timer.mark("last_mean")

        peers = tuple(m.peer_id for m in members)  # from here on `_end` must run (nothing below raises)
        await self._open(Layout(round_id, peers, me, codec, vector.numel(), self.segment_values))
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
            await self._end(round_id)


def _key(msg: swarm_pb2.AllReducePart) -> tuple[str, int, int, int, int]:
    return (msg.round_id, msg.phase, msg.part, msg.sender, msg.segment)


def _encode(codec: str, values: torch.Tensor, residual: torch.Tensor | None) -> bytes | bytearray:
    """Encode `values`; with a residual, add it first and leave in it what the encoding lost."""
    if residual is None:
        return compression.encode_part(codec, values)
    values = values + residual
    data = compression.encode_part(codec, values)
    compression.decode_part_into(data, residual)
    residual.sub_(values).neg_()
    return data


def _weighted_mean(codec, inputs, numel: int, residual: torch.Tensor | None, me: int) -> bytes | bytearray:
    """The owner's encoded weighted mean of one segment, summed in float32 in member order (so the
    arithmetic does not depend on arrival order; float64 sums, cast back, once made this the slowest
    local step of a float32 round). A member's part that does not decode to `numel` finite values
    fails the round naming it, and so does the one that takes a finite sum past float32."""
    total, weights, peaks = None, 0.0, []
    for i, (w, data) in enumerate(inputs):
        values = _decoded(data, numel, f"member {i}'s part of slice {me}", i)
        peaks.append(w * _peak(values, f"member {i}'s part of slice {me}", i))
        total = values * w if total is None else total.add_(values, alpha=w)
        weights += w
    mean = total.div_(weights)
    if not math.isfinite(_peak(mean)):
        culprit = max(range(len(peaks)), key=peaks.__getitem__)
        raise AllReduceError(
            f"the weighted sum of slice {me} overflows float32: member {culprit}'s part is "
            f"{peaks[culprit]:.3g} at its largest (weight included)",
            culprits=[culprit],
        )
    return _encode(codec, mean, residual)


def _decode_mean(data: bytes | bytearray, out: torch.Tensor, key: tuple) -> None:
    """A mean from its owner into `out`, refused (naming the owner) unless it is finite."""
    owner = key[2]
    what = f"the mean of segment {key[4]} of slice {owner} from its owner"
    try:
        compression.decode_part_into(data, out)
    except Exception as e:  # the bytes are the owner's: whatever fails in decoding them is their fault
        raise AllReduceError(f"{what} does not decode: {e}", culprits=[owner]) from e
    _peak(out, what, owner)


def _decoded(data: bytes | bytearray, numel: int, what: str, sender: int) -> torch.Tensor:
    try:
        values = compression.decode_part(data)  # float32 parts: a view of the received bytes
    except Exception as e:  # the bytes are the sender's: whatever fails in decoding them is their fault
        raise AllReduceError(f"{what} does not decode: {e}", culprits=[sender]) from e
    if values.numel() != numel:
        raise AllReduceError(f"{what} has {values.numel()} values, not {numel}", culprits=[sender])
    return values


def _peak(values: torch.Tensor, what: str = "", sender: int | None = None) -> float:
    """The largest magnitude in `values` (NaN if any is NaN); with `sender`, a part that is not all
    finite fails the round naming its sender."""
    if not values.numel():
        return 0.0
    low, high = torch.aminmax(values)  # NaN if any value is; 9x faster than vector_norm(inf) here
    peak = float(torch.maximum(-low, high))  # maximum, unlike max(), keeps a NaN
    if sender is not None and not math.isfinite(peak):
        raise AllReduceError(f"{what} holds non-finite values (NaN or infinity)", culprits=[sender])
    return peak


def _raise_refused(refused: dict[str, dict[int, str]], keys: set) -> None:
    """Fail, naming them, if a part of a member awaited in `keys` was refused."""
    culprits = {}
    for round_id, _, _, sender, _ in keys:
        if sender in refused.get(round_id, {}):
            culprits[sender] = refused[round_id][sender]
    if culprits:
        why = "; ".join(f"member {i}: {reason}" for i, reason in sorted(culprits.items()))
        raise AllReduceError(f"refused the parts of members {sorted(culprits)} ({why})", culprits=culprits)


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
