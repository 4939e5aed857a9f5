"""The coordinator's door: what a request may cost before the service acts on it, and who pays.

The checks, cheapest first (nothing of a request that fails one is stored):
1. gRPC refuses a message longer than the largest valid request of any method before Python sees it
   (`max_receive_bytes`);
2. the door refuses a message longer than its own method's largest valid request
   (swarmgrpo/protocol/sizes.py) before parsing it, then bytes that do not parse as that message;
3. Admission.checked (admission.py): the node id (or Join's token), the Auth's lengths and clock, the
   signature, then the node's own budget, every field, and the nonce.

Who pays: a request refused before its signature checked out, a Join (each may bring a new key) and
a Status call (unsigned) take a token from their network address's bucket; a signed request takes
one from its node's. So a stranger flooding from an address joined nodes share does not slow them
(Joins from that address do wait with it).
A request over its budget is refused with RESOURCE_EXHAUSTED after `hold_s`: a client that retries
in a loop is slowed to one request per hold and thread, and costs the event loop next to nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time

import grpc
from google.protobuf.message import DecodeError

from swarmgrpo.coordinator.config import RateLimits
from swarmgrpo.protocol import swarm_pb2

SERVICE = swarm_pb2.DESCRIPTOR.services_by_name["Coordinator"]
PAY_AT_DOOR = {"Join", "Status"}  # no joined key answers for these: their address pays for each
MAX_HELD = 1000  # refusals held at once (a coroutine each); past this they are answered at once
MAX_KEYS = 65536  # buckets kept before the full ones are forgotten (a full bucket = a new one)


class Buckets:
    """One token bucket per key: `burst` tokens, refilled at `per_s` a second."""

    def __init__(self, per_s: float, burst: float):
        self.per_s = per_s
        self.burst = burst
        self._state: dict[str, tuple[float, float]] = {}  # key -> (tokens, when counted)

    def take(self, key: str, now: float | None = None) -> float:
        """Take one token for `key`: 0.0 when there was one, else the seconds until there is one."""
        now = time.monotonic() if now is None else now
        tokens, then = self._state.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.per_s)
        if len(self._state) >= MAX_KEYS and key not in self._state:
            self._forget_full(now)
        if tokens >= 1.0:
            self._state[key] = (tokens - 1.0, now)
            return 0.0
        self._state[key] = (tokens, now)
        return (1.0 - tokens) / self.per_s

    def __len__(self) -> int:
        return len(self._state)

    def _forget_full(self, now: float) -> None:
        full = self.burst / self.per_s  # a bucket untouched this long is full again
        self._state = {k: (t, w) for k, (t, w) in self._state.items() if now - w < full}
        if len(self._state) >= MAX_KEYS // 2:
            # More busy keys than that (addresses of a botnet): the least recently used half are
            # forgotten and start full again, so memory and the cost of this sweep stay bounded.
            recent = sorted(self._state.items(), key=lambda kv: kv[1][1])[-(MAX_KEYS // 4) :]
            self._state = dict(recent)


def address_of(peer: str) -> str:
    """grpc's `context.peer()` -> who pays: the IPv4 address, the IPv6 /64, or the peer string."""
    rest = peer.partition(":")[2]
    host = rest.rsplit(":", 1)[0].strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return peer
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class Gate:
    def __init__(self, limits: RateLimits, caps: dict[str, int]):
        self.caps = caps
        self.limits = limits
        self.addresses = Buckets(limits.address_per_s, limits.address_burst)
        self.nodes = Buckets(limits.node_per_s, limits.node_burst)
        self.held = 0

    @property
    def max_receive_bytes(self) -> int:
        return max(self.caps.values())

    def handler(self, service) -> grpc.GenericRpcHandler:
        """`service`'s methods behind the door: raw bytes in, the size and parse checked here."""
        handlers = {}
        for m in SERVICE.methods:
            reply = getattr(swarm_pb2, m.output_type.name)
            handlers[m.name] = grpc.unary_unary_rpc_method_handler(
                self._door(m.name, getattr(swarm_pb2, m.input_type.name), getattr(service, m.name)),
                request_deserializer=None,
                response_serializer=reply.SerializeToString,
            )
        return grpc.method_handlers_generic_handler(SERVICE.full_name, handlers)

    def _door(self, method: str, request_type, behavior):
        cap = self.caps[method]
        name = request_type.DESCRIPTOR.name

        async def door(raw: bytes, context):
            if method in PAY_AT_DOOR:
                await self._pay(context, self.addresses, address_of(context.peer()), "")
            if len(raw) > cap:
                await self.refuse_stranger(
                    context,
                    method,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"a {name} of {len(raw)} bytes is longer than any valid one ({cap} bytes in this run); "
                    "send only what the protocol allows (is the node's swarmgrpo version the run's?)",
                )
            try:
                request = request_type.FromString(raw)
            except DecodeError:
                await self.refuse_stranger(
                    context,
                    method,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the {len(raw)} bytes sent to {method} are not a {name}; use swarmgrpo's client",
                )
            return await behavior(request, context)

        return door

    async def refuse_stranger(self, context, method: str, code: grpc.StatusCode, message: str) -> None:
        """Abort a request refused before its signature checked out; its address pays for it."""
        if method not in PAY_AT_DOOR:  # those paid on the way in
            await self._pay(context, self.addresses, address_of(context.peer()), message)
        await context.abort(code, message)

    async def charge_node(self, context, node_id: str) -> None:
        """A signed request (its signature checked out) takes a token from its node's bucket."""
        await self._pay(context, self.nodes, node_id, "")

    async def _pay(self, context, buckets: Buckets, who: str, refused: str) -> None:
        wait = buckets.take(who)
        if not wait:
            return
        if self.held < MAX_HELD and self.limits.hold_s > 0:
            self.held += 1
            try:
                await asyncio.sleep(self.limits.hold_s)
            finally:
                self.held -= 1
        if buckets is self.nodes:
            what = f"node {who[:8]} sent more than {buckets.burst:g} signed requests at once or {buckets.per_s:g}/s"
        else:
            what = (
                f"{who} sent more than {buckets.burst:g} requests at once or {buckets.per_s:g}/s that no "
                "joined node signed (refused ones, joins, status calls)"
            )
        last = f" (and this one was refused: {refused})" if refused else ""
        await context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"{what}; retry in {max(wait - self.limits.hold_s, 0.1):.1f} s{last}",
        )
