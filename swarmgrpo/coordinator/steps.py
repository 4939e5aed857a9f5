"""Step teams and publishing: which trainers train the open step, on which groups, and when their
reports make the next version.

The rules themselves (roles, members, drops on evidence, the quorum) are teams.py's; this part keeps
the step's team in memory and applies them as TrainBatch calls and step reports come in:

- a step's batch is assigned once enough unused rollouts are fresh (at most max_staleness old);
- a CPU trainer stands by while a GPU trainer is live (a step's workers share a device type);
- the team is formed when the first worker asks, after waiting (at most 2 heartbeat intervals) for
  live trainers of its device type still copying the step's state, and formed again when every
  member died before reporting;
- a worker named missing is dropped on evidence only, and the attempt starts again;
- the version is published when every live member has reported and a majority agrees on the
  weights; a tie voids the attempt.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from swarmgrpo.coordinator import stepmetrics
from swarmgrpo.coordinator.membership import Membership
from swarmgrpo.coordinator.store import MANIFEST, Store
from swarmgrpo.coordinator.teams import StepTeam, pick_members
from swarmgrpo.protocol import swarm_pb2
from swarmgrpo.trainer.rollouts import StoredRollout

log = logging.getLogger("swarmgrpo.coordinator")


@dataclass(frozen=True)
class Answer:
    """What a trainer is told: a swarm_pb2 status for `version` with a sentence, and on
    BATCH_READY its team and the step's batch."""

    status: int
    version: int
    message: str = ""
    retry_after_s: float = 0.0
    team: StepTeam | None = None
    batch: list[StoredRollout] | None = None


class Steps:
    """The open step's team and its reports (in memory: see StepTeam)."""

    def __init__(
        self,
        store: Store,
        members: Membership,
        *,
        max_staleness: int,
        max_steps: int,
        prompts_per_step: int,
        max_trainers: int,
        heartbeat_interval_s: float,
        notify: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.store = store
        self.members = members
        self.max_staleness = max_staleness
        self.max_steps = max_steps
        self.prompts_per_step = prompts_per_step
        self.max_trainers = max_trainers
        self.heartbeat_interval_s = heartbeat_interval_s
        self.notify = notify
        self.clock = clock
        self.teams: dict[int, StepTeam] = {}
        self._team_wait: dict[int, float] = {}  # step -> when its first worker asked (see syncing_trainers)

    @property
    def version(self) -> int:
        return self.store.policy_version

    @property
    def finished(self) -> bool:
        return self.version >= self.max_steps

    # ------------------------------------------------------------------ a trainer asks for its shard

    def train_batch(
        self, node_id: str, step: int, device: str = "", missing=(), failed_attempt: int = 0
    ) -> Answer:
        """A trainer holding version `step` asks for its shard of the open step; `missing` names the
        workers it says were absent from its failed attempt `failed_attempt`."""
        v = self.version
        self.members.note_device(node_id, device)
        if self.finished:
            return Answer(swarm_pb2.BATCH_FINISHED, v, f"the run reached max_steps={self.max_steps}")
        devices = self.members.trainer_devices(node_id)
        standby = self._standby(node_id, devices)
        if standby:
            return Answer(swarm_pb2.BATCH_WAIT, v, standby, retry_after_s=2.0)
        if step != v:
            return Answer(
                swarm_pb2.BATCH_RESYNC,
                v,
                f"the trainer holds version {step}, the run is at {v}: fetch version {v} first",
            )
        batch = self.batch(v)
        if not batch:
            have = self.store.unused_rollouts(v - self.max_staleness)
            return Answer(
                swarm_pb2.BATCH_WAIT,
                v,
                f"step {v} has {have}/{self.prompts_per_step} groups",
                retry_after_s=0.25,
            )
        team = self._team(v, batch, node_id, devices, missing)
        if isinstance(team, Answer):
            return team
        message = ""
        if missing and failed_attempt == team.attempt:
            message = self.weigh_claim(v, team, node_id, missing)
        if node_id not in team.members:
            return Answer(
                swarm_pb2.BATCH_WAIT,
                v,
                f"step {v} is trained by {len(team.members)} other workers; join the next step",
                retry_after_s=0.5,
            )
        with self.store.tx():
            self.store.touch_node(node_id, activity="training")
        return Answer(swarm_pb2.BATCH_READY, v, message, team=team, batch=batch)

    def _team(self, v: int, batch, node_id: str, devices: dict[str, str], missing) -> StepTeam | Answer:
        """Step v's team: the one formed, or formed now (or again), or a wait for syncing trainers."""
        team = self.teams.get(v)
        lost = team is not None and not team.reports and not self.members.any_alive(team.members)
        if team is None:
            syncing = self.syncing_trainers(v, node_id, devices)
            if syncing:
                return Answer(
                    swarm_pb2.BATCH_WAIT,
                    v,
                    f"step {v} waits for {len(syncing)} trainers copying version {v}'s state",
                    retry_after_s=0.25,
                )
        if team is None or (lost and not missing):
            # none yet, or every worker of it died before reporting: the ones here form it again (not
            # from a call retrying an all-reduce, whose worker still holds its old shard's gradient)
            team = self.form_team(v, batch, node_id, devices, attempt=team.attempt + 1 if team else 0)
        return team

    def _standby(self, node_id: str, devices: dict[str, str]) -> str:
        """Why a trainer that is not on a GPU stands by while GPU trainers are live ("" if it trains).
        Standing by rather than re-syncing after every step: that would copy a GPU worker's whole
        training state each time for nothing."""
        gpus = [m for m, d in devices.items() if d == "cuda" and m != node_id]
        if devices.get(node_id) == "cuda" or not gpus:
            return ""
        return (
            f"standing by: {len(gpus)} GPU trainer{'s' * (len(gpus) != 1)} train this run, and a "
            "step's workers share a device type; this trainer takes over when none is live"
        )

    def batch(self, v: int) -> list[StoredRollout]:
        """Step v's batch, assigned now if enough fresh rollouts wait; [] while they do not."""
        k = self.max_staleness
        with self.store.tx():
            batch = self.store.batch(v)
            if not batch:
                self.store.drop_stale(v - k)
                if self.store.unused_rollouts(v - k) >= self.prompts_per_step:
                    self.store.assign_batch(v, self.prompts_per_step, v - k)
                    batch = self.store.batch(v)
        return batch

    def syncing_trainers(self, step: int, asking: str, devices: dict[str, str]) -> list[str]:
        """Live trainers of the asking one's device type still copying an older state, while the step's
        team waits for them: at most 2 heartbeat intervals from the step's first ask. Without the wait a
        worker that re-syncs (a late joiner, one left out of a step) finds the others already training
        the next step whenever its batch was sampled ahead, and chases them step after step."""
        first = self._team_wait.setdefault(step, self.clock())
        self._team_wait = {s: t for s, t in self._team_wait.items() if s >= step}
        if self.clock() - first > 2 * self.heartbeat_interval_s:
            return []
        kind = devices[asking]
        return [
            n["node_id"]
            for n in self.members.live_nodes()
            if n["node_id"] != asking
            and devices.get(n["node_id"]) == kind
            and n["peer_id"]
            and n["policy_version"] < step
        ]

    def form_team(self, step: int, batch, asking: str, devices: dict[str, str], attempt: int = 0) -> StepTeam:
        """The step's gradient workers: the live train-role nodes that hold version `step` now (the
        asking one included), chosen by `pick_members`, each with every N-th group of the batch (by
        prompt index). They share the asking node's device type: GPU workers whenever any is live (the
        others stand by, see `train_batch`). A CPU worker would hold a GPU team back, and the two may
        not agree to the last bit on the same update."""
        kind = devices[asking]
        ready = {  # a train node still copying the state of this version waits
            n["node_id"]: n["joined_at"]
            for n in self.members.live_nodes(asking)
            if n["node_id"] in devices
            and devices[n["node_id"]] == kind
            and (n["node_id"] == asking or (n["peer_id"] and n["policy_version"] == step))
        }
        members = pick_members(ready, asking, self.max_trainers, len(batch))
        ordered = [r.id for r in sorted(batch, key=lambda r: r.prompt_index)]
        shards = {m: ordered[i :: len(members)] for i, m in enumerate(members)}
        self.teams = {s: t for s, t in self.teams.items() if s >= step}  # older steps are done
        self.teams[step] = team = StepTeam(members, shards, attempt=attempt)
        if len(members) > 1:
            log.info(
                "step %d: %d gradient workers on %s %s", step, len(members), kind, [m[:8] for m in members]
            )
        return team

    def weigh_claim(self, step: int, team: StepTeam, node_id: str, missing) -> str:
        """`node_id` says `missing` did not take part in its all-reduce: drop those the evidence
        backs (see StepTeam.droppable); the rest stay, and the claimant trains the attempt again."""
        team.claim(node_id, missing)
        dropped = team.droppable(self.members.live_ids())
        if dropped:
            self._drop_workers(step, team, dropped)
        kept = [m[:8] for m in missing if m in team.members and m != node_id]
        if not kept:
            return ""
        log.info("step %d: %s named %s missing; they are still live, so they stay", step, node_id[:8], kept)
        return (
            f"workers {kept} stay in step {step}: the coordinator still hears from them, and a worker is "
            "dropped only when it falls silent (3 heartbeats) or most of the team names it; train again"
        )

    def _drop_workers(self, step: int, team: StepTeam, dropped: list[str]) -> None:
        with self.store.tx():
            self.store.unassign(team.drop(dropped))
        self.notify()
        log.warning(
            "step %d: workers %s dropped (all-reduce failed); their shards go back to the pool; attempt %d",
            step,
            [m[:8] for m in dropped],
            team.attempt,
        )

    # ------------------------------------------------------------------ reports and publishing

    def report(
        self, node_id: str, step: int, attempt: int, agreed_on: tuple, metrics: dict, set_aside=()
    ) -> Answer:
        """A worker's weights after step `step`, attempt `attempt`: `agreed_on` is (weight hash,
        *store.MANIFEST), what the workers' bitwise-equal files agree on."""
        v = self.version
        team = self.teams.get(v)
        if step != v or not self.store.has_batch(v) or team is None or node_id not in team.members:
            return Answer(
                swarm_pb2.STEP_REJECTED,
                v,
                f"step {step} is not the run's open step {v} with a batch you train; re-sync to version {v}",
            )
        if attempt != team.attempt:
            return Answer(
                swarm_pb2.STEP_REJECTED,
                v,
                f"attempt {attempt} of step {v} was replaced by attempt {team.attempt}; re-sync",
            )
        if set_aside:
            self._set_aside(v, node_id, sorted(set(set_aside)))
        team.reports[node_id] = (tuple(agreed_on), dict(metrics))
        verdict = team.verdict(self.members.live_ids())
        if verdict.waiting:
            return Answer(
                swarm_pb2.STEP_PENDING, v, f"waiting for {len(verdict.waiting)} other workers of step {v}"
            )
        if verdict.winner is None:
            self._void(v, team)
            return Answer(
                swarm_pb2.STEP_REJECTED,
                v,
                f"no weights have a majority of step {v}'s live workers; the attempt is void: "
                f"re-sync to version {v} and train it again",
            )
        self._publish(v, team, verdict.winner)
        if team.reports[node_id][0] == team.winner:
            return Answer(swarm_pb2.STEP_PUBLISHED, v + 1)
        return Answer(
            swarm_pb2.STEP_REJECTED,
            v + 1,
            f"your weights differ from the {v + 1} the other workers agreed on; re-sync from them",
        )

    def publish_if_complete(self) -> None:
        """Publish a step once every worker that is still alive has reported, if a majority agrees
        (called every second by the server: the last report may have come before a worker died)."""
        v = self.version
        team = self.teams.get(v)
        if team is None or not team.reports or team.winner[0]:
            return
        verdict = team.verdict(self.members.live_ids())
        if verdict.waiting:
            return
        if verdict.winner is None:
            self._void(v, team)
        else:
            self._publish(v, team, verdict.winner)

    def _set_aside(self, v: int, trainer: str, prompts: list[int]) -> None:
        """A trainer set groups of step v aside: record it on the rollouts and name who submitted them."""
        with self.store.tx():
            by_node = self.store.set_aside(v, prompts)
        for submitter, indices in by_node.items():
            log.warning(
                "step %d: trainer %s set aside the groups of prompts %s submitted by node %s: their loss "
                "or gradient was not finite (forged or broken behavior log-probs)",
                v,
                trainer[:8],
                indices,
                submitter,
            )

    def _void(self, v: int, team: StepTeam) -> None:
        hashes = sorted({agreed_on[0][:12] for agreed_on, _ in team.reports.values()})
        team.restart()
        self.notify()
        log.warning(
            "step %d: the workers reported different weights %s, none by a majority; attempt %d",
            v,
            hashes,
            team.attempt,
        )

    def _publish(self, v: int, team: StepTeam, winner: tuple) -> None:
        """Version v + 1 is `winner`, the weights a majority of the live team reported (see
        StepTeam.verdict); a worker whose hash differs is flagged and told to re-sync."""
        agreed = [m for m in team.members if m in team.reports and team.reports[m][0] == winner]
        metrics = stepmetrics.combine([team.reports[m][1] for m in agreed])
        metrics["workers"] = float(len(agreed))
        with self.store.tx():
            self.store.add_version(
                v + 1, winner[0], agreed[0], metrics, **dict(zip(MANIFEST, winner[1:], strict=True))
            )
            for m in agreed:
                self.store.add_counts(m, steps=1)
                self.store.touch_node(m, policy_version=v + 1, activity="published")
        team.winner = winner
        self.notify()
        diverged = [m[:8] for m in team.members if m in team.reports and team.reports[m][0] != winner]
        if diverged:
            log.warning(
                "step %d: workers %s reported other weights than the %d that agree; they re-sync",
                v,
                diverged,
                len(agreed),
            )
        log.info("version %d published by %d worker(s) (hash %s)", v + 1, len(agreed), winner[0][:12])
