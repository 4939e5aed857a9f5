"""Deterministic seeds and the train/eval split.

Eval membership is a pure function of the problem id: `in_eval(id, f)` holds iff the id's sha256, read as a
number in [0, 1), is below f. So train and eval are disjoint by construction, no seed can move a problem
across the split, and raising `eval_fraction` only adds problems to eval.
"""

import hashlib


def _hash_unit(key: str) -> float:
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def in_eval(problem_id: str, eval_fraction: float) -> bool:
    """Whether the problem with this id belongs to the held-out eval split."""
    return _hash_unit(problem_id) < eval_fraction


def derive_seed(*parts: object) -> int:
    """A 64-bit seed from any parts; stable across processes (unlike `hash()`, which is salted)."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")
