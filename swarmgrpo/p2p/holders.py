"""Which peer a node asks first for a file, and how long it gives one peer to send it.

The coordinator names the holders of a version by what they say they hold (heartbeats), and the DHT
by what they announce: both are claims. What a holder has actually done for this node is not a claim,
so a node's `HolderRanking` (one per `PeerHost`, shared by the weight and training-state fetchers)
orders the named holders by it: a holder that ever failed this node (refused, corrupt, oversize, too
slow) goes behind every holder that did not, and among equals the one that served more verified
files goes first; otherwise the names keep the order they came in.

One transfer from one holder is bounded twice: by the size the version's manifest gives (the holder's
announced size must fit it) and by `transfer_deadline` for the whole file, so a holder that trickles
a byte at a time is dropped when its time is up however often it sends, and the next one is asked.
"""

from __future__ import annotations

import threading


class HolderRanking:
    def __init__(self):
        self._served: dict[str, int] = {}  # peer id -> verified files it sent this node
        self._failed: dict[str, int] = {}  # peer id -> transfers it failed
        self._lock = threading.Lock()

    def order(self, holders: list) -> list:
        """`holders` (WeightHolder) best first: fewest failures, then most files served (stable)."""
        with self._lock:
            return sorted(
                holders, key=lambda h: (self._failed.get(h.peer_id, 0), -self._served.get(h.peer_id, 0))
            )

    def served(self, peer_id: str) -> None:
        with self._lock:
            self._served[peer_id] = self._served.get(peer_id, 0) + 1

    def failed(self, peer_id: str) -> None:
        with self._lock:
            self._failed[peer_id] = self._failed.get(peer_id, 0) + 1


def transfer_deadline(nbytes: int, timeout: float, min_bytes_per_s: float) -> float:
    """Seconds one holder gets for a whole file of at most `nbytes`: the time to start (`timeout`)
    plus the file at the slowest rate a holder may send."""
    return timeout + nbytes / min_bytes_per_s
