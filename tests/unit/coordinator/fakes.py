"""What the coordinator's parts are built on in unit tests: a real Store on a temporary SQLite file,
a clock the test moves, and Join requests as the wire carries them."""

from __future__ import annotations

import time

from swarmgrpo.coordinator.membership import Membership
from swarmgrpo.coordinator.store import Store
from swarmgrpo.protocol import swarm_pb2

HEARTBEAT_S = 1.0
ROLLOUT, TRAIN = swarm_pb2.ROLE_ROLLOUT, swarm_pb2.ROLE_TRAIN


class Clock:
    """Wall-clock time that moves only when the test says (`advance`)."""

    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def new_store(path, clock: Clock, monkeypatch) -> Store:
    """A store as a new run's coordinator leaves it, on `clock` (the store stamps rows with time.time)."""
    monkeypatch.setattr(time, "time", clock)
    store = Store(path / "run.sqlite")
    with store.tx():
        store.set_meta("policy_version", 0)
        store.set_meta("next_prompt_index", 0)
    return store


def node_id(name: str) -> str:
    return (name * 32)[:32]


def join(members: Membership, name: str, roles=(ROLLOUT,), device: str = "cpu", peer_id: str = "peer") -> str:
    """`name` joins with `roles` granted as asked; returns its node id."""
    request = swarm_pb2.JoinRequest(
        capabilities=swarm_pb2.Capabilities(device=device),
        peer_id=f"{peer_id}-{name}" if peer_id else "",
        roles=list(roles),
    )
    request.auth.node_id = node_id(name)
    request.auth.public_key = b"k" * 32
    with members.store.tx():
        members.join(request, list(roles))
    return request.auth.node_id


def new_prompt(index: int) -> tuple[dict, list[int]]:
    return {"id": str(index), "messages": [], "answer": ""}, [1, 2, index]
