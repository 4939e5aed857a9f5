"""The all-reduce's receiving side on its own (no host, no streams): held parts, refusals, ended rounds."""

import asyncio
import time

import pytest

from swarmgrpo.p2p import compression
from swarmgrpo.p2p.allreduce_inbox import Inbox
from swarmgrpo.p2p.allreduce_math import AllReduceError
from swarmgrpo.p2p.allreduce_parts import GATHER, REDUCE, Layout
from swarmgrpo.protocol import swarm_pb2

PEERS = ("peer-a", "peer-b")
LAYOUT = Layout("r", PEERS, 0, "none", 100, 100)  # slice 0: 50 values, one segment
SIZE = compression.encoded_size("none", 50)[0]  # its bytes


def _head(round_id="r", phase=REDUCE, part=0, sender=1, weight=1.0, total=SIZE):
    return swarm_pb2.AllReducePart(
        round_id=round_id, phase=phase, part=part, sender=sender, weight=weight, total_bytes=total
    )


def _whole(inbox: Inbox, part, head):
    part.buf[:] = b"x" * len(part.buf)
    return inbox.piece(
        (head.round_id, head.phase, head.part, head.sender, head.segment), part, 0, len(part.buf)
    )


def test_a_held_part_is_handed_to_its_round_once_it_starts():
    async def go():
        inbox = Inbox(timeout=5, segment_values=100)
        head = _head()
        part = await inbox.admit(head, "peer-b")  # round "r" has not started here: held
        await _whole(inbox, part, head)
        await inbox.open(LAYOUT)
        return await inbox.wait({("r", REDUCE, 0, 1, 0)}, time.monotonic() + 1)

    assert asyncio.run(go()) == {("r", REDUCE, 0, 1, 0): (1.0, bytearray(b"x" * SIZE))}


def test_a_held_part_from_a_peer_that_is_not_the_member_is_dropped_at_open():
    async def go():
        inbox = Inbox(timeout=5, segment_values=100)
        head = _head()
        await _whole(inbox, await inbox.admit(head, "impostor"), head)
        await inbox.open(LAYOUT)
        return await inbox.wait({("r", REDUCE, 0, 1, 0)}, time.monotonic() + 0.05)

    with pytest.raises(AllReduceError, match=r"no part from members \[1\]") as e:
        asyncio.run(go())
    assert e.value.culprits == []  # anyone can claim to be a member: no member is blamed


def test_a_members_refused_part_fails_the_wait_at_once_naming_it():
    async def go():
        inbox = Inbox(timeout=5, segment_values=100)
        await inbox.open(LAYOUT)
        assert "not 7" in await inbox.admit(_head(total=7), "peer-b")
        return await inbox.wait({("r", REDUCE, 0, 1, 0)}, time.monotonic() + 5)

    started = time.monotonic()
    with pytest.raises(AllReduceError, match="member 1") as e:
        asyncio.run(go())
    assert e.value.culprits == [1] and time.monotonic() - started < 1


def test_parts_of_an_ended_round_are_taken_and_dropped_and_means_are_not_held_early():
    async def go():
        inbox = Inbox(timeout=5, segment_values=100)
        await inbox.open(LAYOUT)
        await inbox.end("r")
        dropped = await inbox.admit(_head(), "peer-b")
        early_mean = await inbox.admit(_head(round_id="later", phase=GATHER, part=1), "peer-b")
        return dropped, early_mean

    dropped, early_mean = asyncio.run(go())
    assert dropped is None
    assert "means cannot come before" in early_mean
