"""Long polls: a node's Lease, TrainBatch or GetPolicy call held open until something changes.

The parts that move work or the policy (the lease book, the step teams) call `notify()`; every held
call then asks its question again. A call whose answer still says "wait" sleeps until the next change
or its own deadline, whichever comes first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class Polls:
    """The coordinator's one change signal and the held calls that wait on it (one event loop)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._changed = asyncio.Event()  # set (and replaced) whenever work or the policy moves

    def notify(self) -> None:
        """Wake the held calls: they look again."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def hold(self, wait_s: float, answer: Callable[[], Awaitable], waiting: Callable[[object], bool]):
        """`answer()`, asked again each time something changes while `waiting(reply)` holds, for
        at most `wait_s` seconds (a node's long poll)."""
        deadline = self.clock() + wait_s
        while True:
            changed = self._changed  # taken before answering: a change during it is not missed
            reply = await answer()
            remaining = deadline - self.clock()
            if not waiting(reply) or remaining <= 0:
                return reply
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                return reply

    async def hold_wait_reply(self, wait_s: float, answer, waiting):
        """`hold` for replies that tell the node when to ask again (`retry_after_s`): one that was
        held and ran out asks for no delay, since the node has already waited."""
        reply = await self.hold(wait_s, answer, waiting)
        if wait_s > 0 and waiting(reply):
            reply.retry_after_s = 0.0
        return reply
