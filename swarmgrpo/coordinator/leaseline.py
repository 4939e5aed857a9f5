"""Who gets prompts when fewer are free than nodes ask for: a share per key and a waiting line.

The coordinator hands out P prompts per open step (the budget), one lease per node. One lease per
node bounds one key, not many: k keys that lease and never submit held the whole budget, and an
honest node found nothing free until their leases expired, then raced them for the freed prompts,
which they asked for again at once.

- **Share**: a node gets at most ceil(budget / nodes wanting work) prompts (and prompts_per_lease);
  nodes wanting work are those holding a lease and those in line.
- **Line**: a node refused for want of prompts stands in line while it keeps asking (a held Lease
  call, or a new ask within `grace_s`). Free prompts are kept for the nodes ahead of an asker: first
  those with fewer leases expired unsubmitted, then those waiting longer. Every lease held when an
  honest node asks expires (or is submitted) within lease_timeout_s, and a hoarder's expiry puts it
  behind every node that delivers, so the honest node is served within one lease timeout.

Open: keys are free, and a fresh key has no expired lease, so it queues like an honest node. Fresh
keys that outnumber the free prompts, in line before an honest node, delay it by one more lease
timeout per round; probation for new keys (standing, a later issue) is what bounds that.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


def lease_size(
    asker: str,
    free: int,
    budget: int,
    per_lease: int,
    holders: set[str],
    line: dict[str, float],
    expired: dict[str, int],
    now: float,
) -> int:
    """Prompts `asker` may lease now: its share, out of the `free` prompts not kept for the nodes
    ahead of it. `holders` hold a lease; `line` maps each node in line to when it joined the line;
    `expired` counts each node's leases that expired unsubmitted."""
    wanting = holders | set(line) | {asker}
    share = min(per_lease, -(-budget // len(wanting)))

    def rank(node: str) -> tuple[int, float]:
        return expired.get(node, 0), line.get(node, now)

    ahead = [n for n in line if n != asker and n not in holders and rank(n) < rank(asker)]
    return max(0, min(share, free - share * len(ahead)))


@dataclass
class _Waiter:
    since: float
    last_ask: float
    held_calls: int = 0


class LeaseLine:
    """The nodes waiting for prompts, in memory (after a coordinator restart they line up again)."""

    def __init__(self, grace_s: float):
        self.grace_s = grace_s
        self._waiters: dict[str, _Waiter] = {}

    @contextmanager
    def asking(self, node_id: str) -> Iterator[None]:
        """While a node's Lease call is open (held or not), it still asks."""
        waiter = self._waiters.get(node_id)
        if waiter is not None and not self._present(waiter, time.monotonic()):
            del self._waiters[node_id]  # it stopped asking a while ago: its place in line is gone
        elif waiter is not None:
            waiter.held_calls += 1
        try:
            yield
        finally:
            waiter = self._waiters.get(node_id)
            if waiter is not None:
                waiter.held_calls = max(0, waiter.held_calls - 1)
                waiter.last_ask = time.monotonic()

    def refused(self, node_id: str) -> None:
        """`node_id` found no prompts for it: it stands in line (keeping its place if it was)."""
        now = time.monotonic()
        waiter = self._waiters.get(node_id)
        if waiter is None or not self._present(waiter, now):
            self._waiters[node_id] = _Waiter(since=time.time(), last_ask=now, held_calls=1)
        else:
            waiter.last_ask = now

    def served(self, node_id: str) -> None:
        self._waiters.pop(node_id, None)

    def waiting(self) -> dict[str, float]:
        """Node id -> when it joined the line (wall clock), for the nodes still asking."""
        now = time.monotonic()
        self._waiters = {n: w for n, w in self._waiters.items() if self._present(w, now)}
        return {n: w.since for n, w in self._waiters.items()}

    def _present(self, waiter: _Waiter, now: float) -> bool:
        return waiter.held_calls > 0 or now - waiter.last_ask <= self.grace_s
