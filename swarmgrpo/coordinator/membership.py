"""Who is in the run: joins and leaves, liveness, the roles granted, the device each trainer uses.

One rule says who is live (`live_nodes`): a node heard from within 3 heartbeats that has not left.
Leases, teams, the quorum of a step and the weight holders a node may fetch from all ask it here.
The roles themselves are decided in teams.py (`grant_roles`); this part counts the live trainers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

from swarmgrpo.coordinator.store import Store
from swarmgrpo.coordinator.teams import TRAIN, grant_roles
from swarmgrpo.protocol import swarm_pb2

LIVE_HEARTBEATS = 3  # a node silent this many heartbeat intervals is no longer live


class Membership:
    """The run's nodes as the store holds them, seen through the liveness rule."""

    def __init__(
        self,
        store: Store,
        heartbeat_interval_s: float,
        max_trainers: int,
        clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self.heartbeat_interval_s = heartbeat_interval_s
        self.max_trainers = max_trainers
        self.clock = clock
        self.train_devices: dict[str, str] = {}  # node id -> the device its TrainBatch calls named

    # ------------------------------------------------------------------ liveness

    def live_nodes(self, asking: str = "") -> list[dict]:
        """Nodes heard from within 3 heartbeats that have not left (and the asking one)."""
        alive = self.clock() - LIVE_HEARTBEATS * self.heartbeat_interval_s
        return [
            n
            for n in self.store.nodes()
            if n["node_id"] == asking or (n["left_at"] is None and n["last_seen"] >= alive)
        ]

    def live_ids(self) -> set[str]:
        return {n["node_id"] for n in self.live_nodes()}

    def any_alive(self, node_ids: Iterable[str]) -> bool:
        node_ids = set(node_ids)
        return any(n["node_id"] in node_ids for n in self.live_nodes())  # node_ids empty: False

    def weight_holders(self, version: int) -> list[dict]:
        """Live nodes with a p2p address that hold `version`, the most recently heard first."""
        return [
            n
            for n in sorted(self.live_nodes(), key=lambda n: -n["last_seen"])
            if n["policy_version"] == version and n["peer_id"]
        ]

    # ------------------------------------------------------------------ roles and devices

    def grant_roles(self, node_id: str, offered: Sequence[int]) -> list[int]:
        """The coordinator's choice (see coordinator/teams.py): train only while the run has fewer
        than max_trainers live trainers besides this node. Raises teams.NoTrainSlot."""
        trainers = sum(TRAIN in n["roles"] and n["node_id"] != node_id for n in self.live_nodes())
        return grant_roles(offered, trainers, self.max_trainers)

    def is_trainer(self, node_id: str) -> bool:
        return TRAIN in self.store.node_roles(node_id)

    def note_device(self, node_id: str, device: str) -> None:
        """The device a trainer's TrainBatch call named (none named: what it joined with counts)."""
        if device:
            self.train_devices[node_id] = device

    def trainer_devices(self, asking: str) -> dict[str, str]:
        """Live train-role nodes (and the asking one) -> the device they train on: what their
        TrainBatch calls said, else what they joined with."""
        return {
            n["node_id"]: self.train_devices.get(n["node_id"]) or n["capabilities"].get("device", "cpu")
            for n in self.live_nodes(asking)
            if TRAIN in n["roles"] or n["node_id"] == asking
        }

    # ------------------------------------------------------------------ joins, heartbeats, leaves

    def join(self, request, roles: list[int]) -> None:
        """Record a Join request's node with its granted roles; in a transaction."""
        caps = {f.name: getattr(request.capabilities, f.name) for f in request.capabilities.DESCRIPTOR.fields}
        caps["engines"] = list(caps["engines"])
        self.train_devices.pop(request.auth.node_id, None)  # a node joining again says it again
        self.store.upsert_node(
            request.auth.node_id,
            request.auth.public_key,
            caps,
            [swarm_pb2.Role.Name(r) for r in roles],
            request.peer_id,
            list(request.peer_addrs),
            request.software_version,
        )

    def heartbeat(self, node_id: str, policy_version: int, activity: str, tokens_per_s: float) -> None:
        with self.store.tx():
            self.store.touch_node(
                node_id, policy_version=policy_version, activity=activity, tokens_per_s=tokens_per_s
            )

    def leave(self, node_id: str) -> None:
        """Mark the node left; in a transaction."""
        self.store.touch_node(node_id, left_at=self.clock(), activity="left")
