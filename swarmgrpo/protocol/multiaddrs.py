"""Multiaddr text check for addresses nodes advertise (Join's peer_addrs), without hivemind.

The coordinator hands a node's addresses to later joiners, which dial them: an address that does not
parse must be refused at Join, with the reason. This accepts the forms libp2p peers advertise
(/ip4|/ip6|/dns*, /tcp|/udp, /quic-v1, /ws, /p2p/<peer id>, /p2p-circuit) and nothing else.
"""

from __future__ import annotations

import ipaddress
import re

_HOST = re.compile(r"(?=.{1,253}$)[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63})*\.?")
_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_MULTIHASH_IDENTITY, _MULTIHASH_SHA256 = 0x00, 0x12
_FLAGS = {"quic", "quic-v1", "ws", "wss", "p2p-circuit", "webtransport"}


def _port(value: str) -> str | None:
    if not (value.isascii() and value.isdigit() and int(value) < 65536):
        return f"port '{value[:12]}' is not 0..65535"
    return None


def _host(value: str) -> str | None:
    return None if value.isascii() and _HOST.fullmatch(value) else f"'{value[:40]}' is not a host name"


def _base58(value: str) -> bytes | None:
    n = 0
    for ch in value:
        digit = _BASE58.find(ch)
        if digit < 0:
            return None
        n = n * 58 + digit
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return b"\0" * (len(value) - len(value.lstrip("1"))) + raw


def _peer_id(value: str) -> str | None:
    """A base58 multihash: sha256 (Qm…) or identity (12D3Koo…, an inlined ed25519 key)."""
    raw = _base58(value) if 0 < len(value) <= 128 else None
    if (
        raw is None
        or len(raw) < 3
        or raw[0] not in (_MULTIHASH_IDENTITY, _MULTIHASH_SHA256)
        or raw[1] != len(raw) - 2
    ):
        return f"'{value[:60]}' is not a libp2p peer id"
    return None


_VALUED = {
    "ip4": lambda v: None if _is_ip(v, ipaddress.IPv4Address) else f"'{v[:40]}' is not an IPv4 address",
    "ip6": lambda v: None if _is_ip(v, ipaddress.IPv6Address) else f"'{v[:40]}' is not an IPv6 address",
    "dns": _host,
    "dns4": _host,
    "dns6": _host,
    "dnsaddr": _host,
    "tcp": _port,
    "udp": _port,
    "p2p": _peer_id,
}


def _is_ip(value: str, kind) -> bool:
    try:
        kind(value)
    except ValueError:
        return False
    return value.isascii()


def problem(addr: str) -> str | None:
    """Why `addr` is not a multiaddr a peer can dial, or None when it is."""
    if not addr.startswith("/"):
        return f"'{addr[:60]}' does not start with /"
    parts = addr[1:].split("/")
    i = 0
    while i < len(parts):
        name = parts[i]
        if name in _FLAGS:
            i += 1
            continue
        if name not in _VALUED:
            return f"unknown protocol '{name[:20]}' in '{addr[:60]}'"
        if i + 1 >= len(parts):
            return f"'{name}' needs a value in '{addr[:60]}'"
        why = _VALUED[name](parts[i + 1])
        if why:
            return why
        i += 2
    return None
