"""ed25519 keys for nodes, request signing, and the replay guard.

A node's identity is its key: node_id = hex(sha256(public_key)[:16]). Each request carries an
`Auth` (see swarm.proto) whose signature covers the method, a fresh random nonce, the node's clock
and the whole request. The coordinator checks the signature against the key it stored at Join,
refuses a clock outside `max_skew_s` and a (node, nonce) pair it has seen within that window.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import secrets
import time
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from swarmgrpo.protocol import swarm_pb2

DOMAIN = b"swarmgrpo/v1|"


class AuthError(Exception):
    """A request whose signature, key, nonce or clock does not check out (gRPC UNAUTHENTICATED)."""


def node_id_of(public_key: bytes) -> str:
    return hashlib.sha256(public_key).digest()[:16].hex()


def _signed_bytes(method: str, request) -> bytes:
    signature = request.auth.signature
    request.auth.signature = b""
    try:
        return DOMAIN + method.encode() + b"|" + request.SerializeToString(deterministic=True)
    finally:
        request.auth.signature = signature


class NodeKey:
    """A node's ed25519 key pair; `load_or_create` keeps it in a 0600 file so the identity (and its
    contribution counts) survive restarts."""

    def __init__(self, private_key: Ed25519PrivateKey):
        self._key = private_key
        self.public_key = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.node_id = node_id_of(self.public_key)

    @classmethod
    def generate(cls) -> NodeKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, path: str | Path) -> NodeKey:
        path = Path(path)
        if path.exists():
            raw = path.read_bytes()
            if len(raw) != 32:
                raise AuthError(
                    f"{path} is not a node key (32 raw bytes); move it away to make a new identity"
                )
            return cls(Ed25519PrivateKey.from_private_bytes(raw))
        key = cls.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # a stale tmp file keeps its old mode through O_CREAT
        with os.fdopen(fd, "wb") as f:
            f.write(
                key._key.private_bytes(
                    serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
                )
            )
        os.replace(tmp, path)
        return key

    def sign_bytes(self, message: bytes) -> bytes:
        """A raw ed25519 signature; callers put their own domain prefix in `message`."""
        return self._key.sign(message)

    def sign(self, method: str, request, *, include_public_key: bool = False):
        """Fill `request.auth` (node id, nonce, clock, signature) in place and return the request."""
        auth = request.auth
        auth.node_id = self.node_id
        auth.public_key = self.public_key if include_public_key else b""
        auth.nonce = secrets.randbits(64)
        auth.timestamp_ms = int(time.time() * 1000)
        auth.signature = b""
        auth.signature = self._key.sign(_signed_bytes(method, request))
        return request


def verify(method: str, request, public_key: bytes) -> None:
    """Raise AuthError unless `request` was signed for `method` by `public_key`'s owner."""
    auth = request.auth
    if len(public_key) != 32:
        raise AuthError("public key must be 32 raw ed25519 bytes")
    if auth.node_id != node_id_of(public_key):
        raise AuthError("auth.node_id does not match the public key")
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(auth.signature, _signed_bytes(method, request))
    except (InvalidSignature, ValueError):
        raise AuthError(
            f"bad signature on {method}: the request was altered or signed by another key"
        ) from None


class ReplayGuard:
    """Refuses a request whose clock is off by more than `max_skew_s` or whose (node, nonce) was seen.

    Nonces are remembered for twice the skew window (anything older is refused by its clock), in
    memory and, through `persist`, in the coordinator's database, so a restart does not reopen it;
    `expire` forgets (through `forget` too) the ones past that window, so both stay bounded.
    """

    def __init__(self, max_skew_s: float = 120.0, persist=None, seen: dict | None = None, forget=None):
        self.max_skew_s = max_skew_s
        self.persist = persist
        self.forget = forget
        # (node, nonce) -> when first seen, in the order seen: the oldest first
        self._seen: dict[tuple[str, int], float] = dict(sorted((seen or {}).items(), key=lambda kv: kv[1]))

    def check_clock(self, auth, now: float | None = None) -> None:
        """The clock part of `check` alone: stateless, cheap, so it runs before the signature."""
        now = time.time() if now is None else now
        skew = auth.timestamp_ms / 1000 - now
        if not abs(skew) <= self.max_skew_s:
            raise AuthError(
                f"request clock is {skew:+.0f} s off the coordinator's (limit ±{self.max_skew_s:.0f} s); "
                "set the node's clock (NTP) and retry"
            )

    def check(self, auth, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.check_clock(auth, now)
        key = (auth.node_id, auth.nonce)
        if key in self._seen:
            raise AuthError("nonce already used: a replayed request is refused")
        self._prune(now)
        self._seen[key] = now
        if self.persist is not None:
            self.persist(auth.node_id, auth.nonce, now)

    def expire(self, now: float | None = None) -> int:
        """Forget the nonces seen before the window, in memory and in the database; returns how many."""
        now = time.time() if now is None else now
        dropped = self._prune(now)
        if dropped and self.forget is not None:
            self.forget(now - 2 * self.max_skew_s)
        return dropped

    def __len__(self) -> int:
        return len(self._seen)

    def _prune(self, now: float) -> int:
        horizon = now - 2 * self.max_skew_s
        dropped = 0
        for seen_at in self._seen.values():  # oldest first: stop at the first one inside the window
            if seen_at >= horizon:
                break
            dropped += 1
        for key in list(itertools.islice(self._seen, dropped)):
            del self._seen[key]
        return dropped


__all__ = ["AuthError", "NodeKey", "ReplayGuard", "node_id_of", "swarm_pb2", "verify"]
