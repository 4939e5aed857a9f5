"""A node's libp2p identity: one hivemind `P2P` daemon and the node's place in the run's hivemind DHT.

    host = PeerHost(listen=["/ip4/0.0.0.0/tcp/0"])
    host.join_dht(initial_peers)                      # bootstrap: the coordinator's join answer, --initial-peers
    host.announce("swarmgrpo/run/nodes", node_id, {...}, ttl=15)
    host.lookup("swarmgrpo/run/nodes")               # {subkey: value} of every live entry

Everything peer-to-peer on a node shares this host: the weight server (`weight_transfer`) registers its
stream handler on `host.p2p`, and the DHT node speaks over the same daemon, so a node has one peer
id and one set of addresses.

Threads: the daemon is synchronous, so the P2P client and the `DHTNode` live on a private asyncio loop
in a background thread and the public methods block on it. We run hivemind's `DHTNode` in-process
rather than a `hivemind.DHT`: the latter forks a Python process, which is unsafe after gRPC and torch
have started threads; the DHT protocol, routing table and storage are the same.

DHT records (all values msgpack-able dicts, all with an expiration, so a node that dies without a
word disappears by itself):
- `swarmgrpo/<run>/nodes`, subkey node id: peer id, addresses, role, policy version, activity;
- `swarmgrpo/<run>/weights/<version>`, subkey peer id: addresses and sha256 of a weight holder.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterable, Sequence

from hivemind.dht.node import DHTNode
from hivemind.p2p import P2P, P2PDaemonError, PeerID
from hivemind.utils import get_dht_time
from hivemind.utils.multiaddr import Multiaddr

from swarmgrpo.p2p.holders import HolderRanking

log = logging.getLogger(__name__)


def nodes_key(run_id: str) -> str:
    return f"swarmgrpo/{run_id}/nodes"


def weights_key(run_id: str, version: int) -> str:
    return f"swarmgrpo/{run_id}/weights/{version}"


def transport_addr(addr: str) -> tuple[PeerID | None, Multiaddr]:
    """Split '/ip4/…/tcp/…/p2p/<id>' into the peer id and the transport part.

    p2pd's CONNECT misparses addresses that end in /p2p/<id> ("length greater than remaining number
    of bytes in buffer"), so dials get the transport part only.
    """
    maddr = Multiaddr(addr)
    try:
        peer = maddr.value_for_protocol("p2p")
    except Exception:
        return None, maddr
    return PeerID.from_base58(peer), maddr.decapsulate(f"/p2p/{peer}")


def dialable(addrs: Iterable[str]) -> list[tuple[str, PeerID | None, Multiaddr]]:
    """(address, peer id, transport part) of each of `addrs` that parses; the others are logged and
    skipped: an address comes from another node (through the coordinator or the DHT), and one bad
    address must not keep this node from dialing the rest."""
    usable = []
    for addr in addrs:
        try:
            usable.append((addr, *transport_addr(addr)))
        except Exception as e:
            log.warning("skipping peer address %r: it does not parse (%s)", str(addr)[:120], str(e)[:200])
    return usable


async def _cancel_other_tasks() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class PeerHost:
    def __init__(self, listen: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",), initial_peers: Sequence[str] = ()):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="p2p-host", daemon=True)
        self._thread.start()
        self.p2p: P2P | None = None
        self.dht: DHTNode | None = None
        self.ranking = HolderRanking()  # what the peers have served this node, for its fetches
        try:
            self.p2p = self.call(self._start(list(initial_peers), list(listen)))
        except BaseException:
            self.close()
            raise
        self.peer_id: str = self.p2p.peer_id.to_base58()
        self.addrs: list[str] = [str(a) for a in self.call(self.p2p.get_visible_maddrs())]

    def call(self, coro, timeout: float | None = None):
        """Run a coroutine on the host's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @staticmethod
    async def _start(initial_peers: list[str], listen: list[str]) -> P2P:
        try:
            return await P2P.create(initial_peers=initial_peers, host_maddrs=listen)
        except P2PDaemonError as e:
            if not initial_peers:
                raise
            # p2pd refuses to start when no bootstrap peer answers; a node whose bootstrap peers
            # are all gone can still serve, fetch from holders it is told about, and be joined.
            log.warning("no initial peer answered (%s); starting without bootstrap peers", e)
            return await P2P.create(host_maddrs=listen)

    async def connect(self, peer: PeerID, addrs: Sequence[str], timeout: float) -> None:
        transports = [t for _, _, t in dialable(addrs)]
        if not transports:
            raise ValueError(f"none of the {len(addrs)} addresses of peer {peer} parses as a multiaddr")
        await asyncio.wait_for(self.p2p._client.connect(peer, transports), timeout)

    # ------------------------------------------------------------------ DHT

    def join_dht(self, initial_peers: Sequence[str], timeout: float = 10.0) -> int:
        """Join the run's DHT through whichever of `initial_peers` answer; returns how many did.

        No answering peer is not fatal: this node starts a DHT of its own that later joiners can
        bootstrap from (the coordinator hands out the addresses of the nodes it knows).
        """
        if self.dht is not None:
            raise RuntimeError("already joined the DHT")
        candidates = [
            (peer, addr)
            for addr, peer, _ in dialable(dict.fromkeys(initial_peers))
            if peer is not None and peer.to_base58() != self.peer_id
        ]

        async def dial_all():
            dials = (self.connect(peer, [addr], timeout) for peer, addr in candidates)
            return await asyncio.gather(*dials, return_exceptions=True)

        answers = self.call(dial_all())
        reachable = []
        for (_, addr), answer in zip(candidates, answers, strict=True):
            if isinstance(answer, BaseException):  # a dead or unreachable bootstrap peer: the others may do
                log.info("DHT bootstrap peer %s did not answer: %r", addr, answer)
            else:
                reachable.append(addr)
        self.dht = self.call(
            DHTNode.create(
                p2p=self.p2p,
                initial_peers=reachable,
                ensure_bootstrap_success=False,
                bootstrap_timeout=timeout,
                wait_timeout=timeout / 2,
            )
        )
        if initial_peers and not reachable:
            log.warning("no DHT bootstrap peer answered; this node starts the DHT on its own")
        return len(reachable)

    def announce(self, key: str, subkey: str, value: dict, ttl: float) -> bool:
        if self.dht is None:
            raise RuntimeError("join_dht() first")
        return self.call(self.dht.store(key, value, get_dht_time() + ttl, subkey=subkey))

    def lookup(self, key: str) -> dict[str, dict]:
        """Every live {subkey: value} stored under `key` ({} when none)."""
        if self.dht is None:
            raise RuntimeError("join_dht() first")
        found = self.call(self.dht.get(key, latest=True))
        if found is None or not hasattr(found.value, "items"):
            return {}
        return {str(sub): item.value for sub, item in found.value.items() if isinstance(item.value, dict)}

    # ------------------------------------------------------------------ shutdown

    def close(self) -> None:
        if self.dht is not None:
            dht, self.dht = self.dht, None
            try:
                self.call(asyncio.wait_for(dht.shutdown(), 10))
            except Exception as e:
                log.warning("DHT shutdown: %s", e)
        if self.p2p is not None:
            p2p, self.p2p = self.p2p, None
            try:
                self.call(asyncio.wait_for(p2p.shutdown(), 10))
            except Exception as e:  # the daemon is being torn down anyway
                log.warning("p2p shutdown: %s", e)
        if self._loop.is_running():
            try:  # hivemind leaves background tasks (cache refresh, timers): end them before the loop
                self.call(_cancel_other_tasks(), timeout=10)
            except Exception as e:
                log.warning("p2p host tasks did not finish: %s", e)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        if not self._loop.is_running() and not self._loop.is_closed():
            self._loop.close()
