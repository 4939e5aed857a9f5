"""Who may make a request, checked before any part of the coordinator sees it.

Cheap checks first, so a stranger costs little and learns nothing: who the request claims to be (a
joined node, or Join's token), the Auth's lengths and clock, the signature; then the node's rate
(gate.py), every field (protocol/validate.py) and the nonce (its replay guard, kept in the store).
"""

from __future__ import annotations

import logging
import secrets
import time

import grpc

from swarmgrpo.coordinator.gate import Gate
from swarmgrpo.coordinator.store import Store
from swarmgrpo.protocol import sizes, validate
from swarmgrpo.protocol.signing import AuthError, ReplayGuard, verify

log = logging.getLogger("swarmgrpo.coordinator")


class StrangerRefused(Exception):
    """A request refused before its signature was checked, with the gRPC status to answer."""

    def __init__(self, code: grpc.StatusCode, message: str):
        self.code = code
        super().__init__(message)


class Admission:
    """The checks every request passes; `checked` aborts the RPC with a status a volunteer can act on."""

    def __init__(
        self,
        store: Store,
        join_token: str,
        limits: validate.Limits,
        max_clock_skew_s: float,
        rate_limits,
        prompts_per_lease: int,
    ):
        self.store = store
        self.join_token = join_token
        self.limits = limits
        horizon = time.time() - 2 * max_clock_skew_s
        self.replay = ReplayGuard(
            max_clock_skew_s,
            store.remember_nonce,
            store.recent_nonces(horizon),
            forget=store.forget_nonces,
        )
        self.gate = Gate(rate_limits, sizes.request_caps(limits, prompts_per_lease))

    async def checked(self, method: str, request, context, check) -> None:
        """The request's identity, clock and signature, then its node's rate, `check(request,
        limits)` on every field, and its nonce."""
        try:
            key = self.claimed_key(method, request)
            validate.auth_fields(request.auth, join=method == "Join")
            self.replay.check_clock(request.auth)
            verify(method, request, key)
        except StrangerRefused as e:
            await self.gate.refuse_stranger(context, method, e.code, str(e))
        except validate.InvalidRequest as e:
            await self.gate.refuse_stranger(context, method, grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except AuthError as e:
            await self.gate.refuse_stranger(context, method, grpc.StatusCode.UNAUTHENTICATED, str(e))
        await self.gate.charge_node(context, request.auth.node_id)
        try:
            check(request, self.limits)
            with self.store.tx():
                self.replay.check(request.auth)
        except validate.IncompatibleProtocol as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        except validate.InvalidRequest as e:
            log.warning("%s from node %s refused: %s", method, request.auth.node_id[:32], e)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except AuthError as e:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(e))

    def claimed_key(self, method: str, request) -> bytes:
        """The key the request must be signed with: Join's own (after its token), else the node's."""
        if method != "Join":
            key = self.store.node_key(request.auth.node_id)
            if key is None:
                raise AuthError("unknown node: join first (swarmgrpo node --join HOST:PORT --token T)")
            return key
        token = self.join_token.encode()
        if not token or not secrets.compare_digest(request.join_token.encode(), token):
            raise StrangerRefused(
                grpc.StatusCode.PERMISSION_DENIED, "wrong join token: ask the run owner for the run's --token"
            )
        return request.auth.public_key
