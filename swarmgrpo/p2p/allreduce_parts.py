"""What a member of an all-reduce round (`allreduce`) takes from the network: every other member
may be hostile, and any peer can open a stream to it.

`refusal`, for the parts of a round running here:
- a part of a running round only from the libp2p peer id (authenticated by the libp2p handshake) of
  the member it claims to come from, and only the parts that member sends this one: reduce parts of
  this member's own slice, means from the slice's owner;
- only of the size the round's layout (length, members, codec, `segment_values`) gives its
  segment, checked on the first chunk, before a buffer is taken; and a reduce weight that is a
  finite number > 0;
- values that decode and are finite: an owner checks each member's decoded part, and its sum,
  before the mean leaves it; every member checks each decoded mean before it is used.
A refused part of a member fails the round at once, naming it (`AllReduceError.culprits`, also
in `missing`, so the caller goes on without it, as for a member not heard from); a part from a
peer that is not the member it claims to be is refused and blames no member (anyone can claim).

Parts of a round this member has not started yet are held, since members start at different
moments, but that round's members are not known until it starts (`early_refusal`): only reduce
parts (a mean cannot come before this member has sent its own part), at most `per_peer`
(SEND_WINDOW, what an honest sender has in flight) per peer, none larger than a whole segment in
any codec, EARLY_PARTS and EARLY_SEGMENTS segments' bytes in all, each for at most the round's
`timeout`; past that a part is refused with "send again later" and its sender retries
(`AllReduce._send`). When the round starts, held parts pass `refusal` like the others or are
dropped. Parts of a round this member ended are acknowledged and dropped (a retried send whose
acknowledgment was lost).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from swarmgrpo.p2p import compression
from swarmgrpo.protocol import swarm_pb2

REDUCE, GATHER = 0, 1  # AllReducePart.phase
SEND_WINDOW = 2  # segments a sender has in flight to one member, per phase; as many held per peer
EARLY_PARTS = 64  # parts of rounds not started here, held at once
EARLY_SEGMENTS = 8  # their bytes in all, in whole segments of the largest codec


class Refusal(NamedTuple):
    reason: str
    culprit: int | None  # the member whose fault it is; None when the sender is not the member it claims


@dataclass(frozen=True)
class Layout:
    """What this member expects of a round: which peer is which member, and each segment's size."""

    round_id: str
    peers: tuple[str, ...]
    me: int
    codec: str
    numel: int
    segment_values: int

    def segment_numels(self, part: int) -> list[int]:
        """Values per segment of slice `part`, cut as `torch.tensor_split` cuts them in `_run`."""
        n = len(self.peers)
        size = self.numel // n + (part < self.numel % n)
        k = max(1, -(-size // self.segment_values))
        return [size // k + (i < size % k) for i in range(k)]


def refusal(layout: Layout, key: tuple, peer: str, total: int, weight: float) -> Refusal | None:
    """Why this member does not take the part `key` of `total` bytes from libp2p peer `peer`
    (None: it takes it)."""
    round_id, phase, part, sender, segment = key
    n, me = len(layout.peers), layout.me
    expected = (phase == REDUCE and part == me and sender != me) or (
        phase == GATHER and part == sender and part != me
    )
    if not (expected and sender < n):
        return Refusal(
            f"member {me} of round {round_id} takes no phase-{phase} part of slice {part} "
            f"from member {sender}",
            None,
        )
    if peer != layout.peers[sender]:
        return Refusal(f"peer {peer} is not member {sender} of round {round_id}", None)
    numels = layout.segment_numels(part)
    if segment >= len(numels):
        return Refusal(f"slice {part} has {len(numels)} segments, there is no segment {segment}", sender)
    low, high = compression.encoded_size(layout.codec, numels[segment])
    if not low <= total <= high:
        span = f"{low}" if low == high else f"{low}-{high}"
        return Refusal(
            f"segment {segment} of slice {part} is {span} bytes in {layout.codec}, not {total}: "
            "do all members run the same swarmgrpo version and round settings?",
            sender,
        )
    if phase == REDUCE and not (math.isfinite(weight) and weight > 0):
        return Refusal(f"averaging weight {weight} is not a finite number > 0", sender)
    return None


def early_refusal(
    msg: swarm_pb2.AllReducePart, peer: str, held: Sequence[tuple[str, int]], largest: int, per_peer: int
) -> str | None:
    """Why a part of a round not started here is not held (None: it is). `held`: (peer, bytes) of
    the parts held now; `largest`: the most bytes a segment takes in any codec; `per_peer`: the
    parts one peer may have held (what an honest sender has in flight)."""
    if msg.phase != REDUCE:
        return f"round {msg.round_id} has not started here, and its means cannot come before it does"
    if not (math.isfinite(msg.weight) and msg.weight > 0):
        return f"averaging weight {msg.weight} is not a finite number > 0"
    if msg.total_bytes > largest:
        return f"a part of {msg.total_bytes} bytes is larger than any segment ({largest} bytes at most)"
    mine = sum(1 for p, _ in held if p == peer)
    if (
        mine >= per_peer
        or len(held) >= EARLY_PARTS
        or sum(b for _, b in held) + msg.total_bytes > EARLY_SEGMENTS * largest
    ):
        return (
            f"round {msg.round_id} has not started here and {len(held)} early parts wait already: "
            "send again later"
        )
    return None
