"""The receiving side of the all-reduce (`allreduce`): the parts that come over libp2p streams to
this member, placed as they arrive, held while their round has not started here, and handed to the
round (`wait`) once whole. What it takes is decided in `allreduce_parts` (every other member may be
hostile); a refused part of a member fails that round's `wait` at once, naming it.

`Inbox` owns no host: `AllReduce` registers `Inbox.receive` as the stream handler, and puts its own
parts through `put` like anyone's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from hivemind.p2p import P2PContext

from swarmgrpo.p2p import compression
from swarmgrpo.p2p.allreduce_math import AllReduceError
from swarmgrpo.p2p.allreduce_parts import SEND_WINDOW, Layout, Refusal, early_refusal, refusal
from swarmgrpo.protocol import swarm_pb2

log = logging.getLogger(__name__)
FINISHED_ROUNDS = 256  # rounds remembered as ended here, so late parts of them are dropped
Key = tuple[str, int, int, int, int]  # (round, phase, part, sender, segment)


@dataclass
class Part:
    """A segment arriving over one or more streams: its buffer and the byte ranges in it so far."""

    buf: bytearray
    weight: float
    peer: str
    since: float
    ranges: dict[int, int] = field(default_factory=dict)

    def whole(self) -> bool:
        return sum(self.ranges.values()) >= len(self.buf)


class Inbox:
    def __init__(self, timeout: float, segment_values: int):
        """`timeout`: a round's; held parts wait at most that long for their round, and parts of
        rounds that never took them are dropped after ten times that."""
        self.timeout, self.segment_values = timeout, segment_values
        self._inbox: dict[Key, tuple[float, bytes | bytearray, float]] = {}  # -> (weight, bytes, arrival)
        self._partial: dict[Key, Part] = {}  # segments still arriving
        self._held: dict[tuple[Key, str], Part] = {}  # (key, peer) -> part of a round not started here
        self._rounds: dict[str, Layout] = {}  # the rounds running here
        self._refused: dict[str, dict[int, str]] = {}  # round -> {member: why its part was refused}
        self._finished: dict[str, None] = {}  # the last FINISHED_ROUNDS rounds that ended here
        self._arrived = asyncio.Condition()
        self.last_part = 0.0  # monotonic time a stream last delivered a range (see `AllReduce.close`)

    async def receive(self, requests: AsyncIterator[swarm_pb2.AllReducePart], context: P2PContext):
        """One stream: a contiguous byte range of one part (a part may come over several streams),
        written straight into the part's buffer as it arrives, once `admit` has taken it. A refused
        part's chunks are read and dropped: the sender sends them all the same, and a stream closed
        with data unread is reset, which loses the answer that says why."""
        peer = context.remote_id.to_base58()
        head, size, part, refused = None, 0, None, ""
        async for msg in requests:
            if head is None:
                head = msg
                part = await self.admit(msg, peer)
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
            await self.piece(_key(head), part, head.offset, size)
        self.last_part = time.monotonic()
        return swarm_pb2.AllReduceAck()

    async def admit(self, msg: swarm_pb2.AllReducePart, peer: str) -> Part | str | None:
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
                part = self._partial[key] = Part(
                    bytearray(msg.total_bytes), msg.weight, peer, time.monotonic()
                )
            return part

    def _hold(self, key, msg: swarm_pb2.AllReducePart, peer: str) -> Part | str:
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
        part = self._held[(key, peer)] = Part(bytearray(msg.total_bytes), msg.weight, peer, now)
        return part

    def _refuse(self, round_id: str, refused: Refusal) -> None:
        """Log a refused part; one a member is to blame for fails the round (`wait`). Call holding
        `_arrived`."""
        if refused.culprit is None:  # anyone can send these: not worth a warning each
            log.info("round %s: refused a part: %s", round_id, refused.reason)
        else:
            log.warning(
                "round %s: refused a part of member %d: %s", round_id, refused.culprit, refused.reason
            )
            self._refused.setdefault(round_id, {}).setdefault(refused.culprit, refused.reason)
            self._arrived.notify_all()

    async def open(self, layout: Layout) -> None:
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

    async def end(self, round_id: str) -> None:
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

    async def piece(self, key, part: Part, offset: int, length: int) -> None:
        """A range of `part` is in its buffer; the part goes to the inbox once its ranges cover it
        (a range sent again by a retried send replaces itself). A held part waits for its round."""
        async with self._arrived:
            part.ranges[offset] = length
            if not part.whole() or self._partial.get(key) is not part:
                return  # still arriving, held, or dropped meanwhile (its round ended or refused it)
            del self._partial[key]
        await self.put(key, part.weight, part.buf)

    async def put(self, key, weight: float, data: bytes | bytearray) -> None:
        now = time.monotonic()
        async with self._arrived:
            for old in [k for k, v in self._inbox.items() if now - v[2] > 10 * self.timeout]:
                del self._inbox[old]  # parts of rounds that failed or that we never ran
            for old in [k for k, v in self._partial.items() if now - v.since > 10 * self.timeout]:
                del self._partial[old]
            self._inbox[key] = (weight, data, now)
            self._arrived.notify_all()

    async def wait(self, keys: set, deadline: float, any_of: bool = False) -> dict:
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


def _key(msg: swarm_pb2.AllReducePart) -> Key:
    return (msg.round_id, msg.phase, msg.part, msg.sender, msg.segment)


def _raise_refused(refused: dict[str, dict[int, str]], keys: set) -> None:
    """Fail, naming them, if a part of a member awaited in `keys` was refused."""
    culprits = {}
    for round_id, _, _, sender, _ in keys:
        if sender in refused.get(round_id, {}):
            culprits[sender] = refused[round_id][sender]
    if culprits:
        why = "; ".join(f"member {i}: {reason}" for i, reason in sorted(culprits.items()))
        raise AllReduceError(f"refused the parts of members {sorted(culprits)} ({why})", culprits=culprits)
