"""Node records in the run's DHT (`swarmgrpo/<run>/nodes`, subkey node id), signed by the node's key.

Anyone who reaches a DHT peer can store a record under any subkey, so a reader trusts a record only
when it is signed by the key the coordinator stored for that node id at Join (`verify_node_record`),
and then keeps only the known fields, of the known types, with bounded lengths. The signature covers
the run, the node id, every field and the record's own expiry, so a record cannot be moved to
another node or run, altered, or replayed after it expired.
"""

from __future__ import annotations

import json
import math
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from swarmgrpo.protocol.signing import DOMAIN, NodeKey, node_id_of

MAX_TTL_S = 24 * 3600.0
CLOCK_SLACK_S = (
    120.0  # a node's clock may be this far off the reader's (the coordinator's default max_clock_skew_s)
)
"""A record claiming to live longer than this is refused (a node announces every heartbeat)."""
MAX_ADDRS = 16
MAX_TEXT = 512
FIELDS = {  # name -> the type a reader accepts
    "peer_id": str,
    "addrs": list,
    "role": str,
    "policy_version": int,
    "activity": str,
    "tokens_per_s": float,
}


def _signed_bytes(run_id: str, node_id: str, fields: dict) -> bytes:
    body = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return DOMAIN + b"dht-node|" + run_id.encode() + b"|" + node_id.encode() + b"|" + body.encode()


def sign_node_record(key: NodeKey, run_id: str, record: dict, ttl: float, now: float | None = None) -> dict:
    """`record` (the FIELDS) with its expiry and the node's signature, ready to store in the DHT."""
    fields = {**record, "expires": round((time.time() if now is None else now) + ttl, 3)}
    return {**fields, "sig": key.sign_bytes(_signed_bytes(run_id, key.node_id, fields))}


def _well_formed(value) -> str | None:
    if not isinstance(value, dict) or set(value) != {*FIELDS, "expires", "sig"}:
        return "not a node record (unknown or missing fields)"
    for name, kind in FIELDS.items():
        if not isinstance(value[name], kind) or isinstance(value[name], bool):
            return f"field {name} is not {kind.__name__}"
    if not math.isfinite(value["tokens_per_s"]) or not isinstance(value["expires"], float | int):
        return "tokens_per_s or expires is not a finite number"
    addrs = value["addrs"]
    if len(addrs) > MAX_ADDRS or not all(isinstance(a, str) and len(a) <= MAX_TEXT for a in addrs):
        return f"addrs is not at most {MAX_ADDRS} strings"
    if any(len(value[n]) > MAX_TEXT for n in ("peer_id", "role", "activity")):
        return f"a text field is longer than {MAX_TEXT}"
    return None


def verify_node_record(
    run_id: str, node_id: str, value, public_key: bytes | None, now: float | None = None
) -> tuple[dict | None, str]:
    """(the record's fields, "") when `value` is a live record signed by `public_key`, the key
    `node_id` joined with; (None, why) otherwise."""
    if public_key is None or node_id_of(public_key) != node_id:
        return None, "no node joined with this id"
    problem = _well_formed(value)
    if problem:
        return None, problem
    now = time.time() if now is None else now
    if not now - CLOCK_SLACK_S < value["expires"] <= now + MAX_TTL_S + CLOCK_SLACK_S:
        return None, "expired, or claims to live too long"
    fields = {k: v for k, v in value.items() if k != "sig"}
    sig = value["sig"]
    try:
        if not isinstance(sig, bytes):
            raise InvalidSignature
        Ed25519PublicKey.from_public_bytes(public_key).verify(sig, _signed_bytes(run_id, node_id, fields))
    except (InvalidSignature, ValueError):
        return None, "bad signature: not signed by the node's key"
    return {k: value[k] for k in FIELDS}, ""
