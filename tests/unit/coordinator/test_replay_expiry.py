"""Nonces are kept for the clock window only (2 x max_skew_s), in memory and in the database."""

import pytest

from swarmgrpo.coordinator.store import Store
from swarmgrpo.protocol import swarm_pb2
from swarmgrpo.protocol.signing import AuthError, ReplayGuard

NOW = 1_800_000_000.0
SKEW = 10.0


def auth(nonce: int, at: float, node: str = "a" * 32) -> swarm_pb2.Auth:
    return swarm_pb2.Auth(node_id=node, nonce=nonce, timestamp_ms=int(at * 1000))


def test_expire_forgets_only_what_is_past_the_window_in_memory_and_the_database(tmp_path):
    store = Store(tmp_path / "run.sqlite")
    guard = ReplayGuard(SKEW, store.remember_nonce, forget=store.forget_nonces)
    for i in range(5):
        guard.check(auth(i, NOW + i * 5), now=NOW + i * 5)  # seen at NOW, NOW+5, ... NOW+20
    assert guard.expire(now=NOW + 2 * SKEW + 6) == 2  # the ones seen at NOW and NOW+5
    assert len(guard) == 3
    rows = store.db.execute("SELECT nonce FROM nonces ORDER BY seen_at").fetchall()
    assert [int(n) for (n,) in rows] == [2, 3, 4]
    with pytest.raises(AuthError, match="replay"):  # inside the window a nonce is still refused
        guard.check(auth(4, NOW + 21), now=NOW + 21)
    assert guard.expire(now=NOW + 2 * SKEW + 6) == 0


def test_a_steady_stream_keeps_memory_to_the_window():
    guard = ReplayGuard(SKEW)
    for i in range(2000):  # 10 requests a second for 200 s, no expire call
        t = NOW + i / 10
        guard.check(auth(i, t), now=t)
    assert len(guard) <= 2 * SKEW * 10 + 1


def test_a_request_past_the_window_is_refused_by_its_clock_so_forgetting_its_nonce_is_safe():
    guard = ReplayGuard(SKEW)
    old = auth(7, NOW)
    guard.check(old, now=NOW)
    guard.expire(now=NOW + 2 * SKEW + 1)
    with pytest.raises(AuthError, match="clock"):
        guard.check(old, now=NOW + 2 * SKEW + 1)


def test_check_clock_remembers_nothing():
    calls = []
    guard = ReplayGuard(SKEW, persist=lambda *a: calls.append(a))
    guard.check_clock(auth(1, NOW), now=NOW)
    with pytest.raises(AuthError, match="clock"):
        guard.check_clock(auth(1, NOW + SKEW + 1), now=NOW)
    assert calls == [] and len(guard) == 0
    guard.check(auth(1, NOW), now=NOW)  # the same nonce is still fresh


def test_after_a_restart_the_oldest_loaded_nonces_go_first(tmp_path):
    store = Store(tmp_path / "run.sqlite")
    for i, at in enumerate([NOW + 3, NOW, NOW + 1]):  # rows in no particular order
        store.remember_nonce("a" * 32, i, at)
    guard = ReplayGuard(SKEW, seen=store.recent_nonces(NOW - 2 * SKEW), forget=store.forget_nonces)
    assert guard.expire(now=NOW + 2 * SKEW + 2) == 2
    with pytest.raises(AuthError, match="replay"):
        guard.check(auth(0, NOW + 2 * SKEW + 2, "a" * 32), now=NOW + 2 * SKEW + 2)
