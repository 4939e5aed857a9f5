"""Who trains, who is dropped from a step, and when a step's weights become the next version.

The coordinator decides all three; a node's word alone changes none of them. Before these rules, any
joined node that called TrainBatch was put in the step's team, one member's claim that the others
were missing dropped them, and a team of one published its own hash: a rollout node could take over
training and publish weights of its choice.

- **The train role is granted, never taken** (`grant_roles`, at Join). The run owner sets how many
  trainers the run wants (`RunConfig.max_trainers`). A node that asks for train gets it while fewer
  live nodes hold it; otherwise it is refused (or, offering any role, rolls out). A node that offers
  any role trains only when no live node does (need). A trainer keeps its role while it is live, so
  new keys cannot displace a healthy trainer; a restarted trainer (same key) gets its role back. A
  node without the role is refused at TrainBatch, so it can never enter a team.
- **A step's team is formed by the coordinator** (`pick_members`) from the live trainers that hold
  the step's version, at most `max_trainers` of them, the earliest to have joined the run first;
  hardware decides among them (one device type per team, GPUs first: CPU trainers stand by).
- **A worker is dropped only on evidence** (`StepTeam.droppable`): a teammate's claim that it was
  missing from the all-reduce counts when the coordinator itself no longer hears from it (3
  heartbeats), or when more than half of the step's team names it. One peer's word against a worker
  that still heartbeats drops nobody; the claimant gets the same team back and retries the attempt.
- **A version is published on a quorum** (`StepTeam.verdict`): when every live member of the team
  the coordinator formed has reported, a weight hash is published only if more than half of the
  live team (members that reported or are still live) reported it. A tie publishes nothing: the
  attempt is void and trained again.

Standing, today (without reputation): being a live trainer already, and seniority in the run. What
stays open: trainers granted while slots were free are trusted with a vote, so colluding keys that
join before the honest trainers and fill `max_trainers` can out-vote them; a granted trainer that
never takes part in the all-reduce stalls a team of two (neither claim is believed). Reputation,
audits of recomputed shards and an owner-held list of trusted trainer keys are the remedies.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from swarmgrpo.protocol import swarm_pb2

TRAIN = "ROLE_TRAIN"


class NoTrainSlot(Exception):
    """The node asked only for the train role and the run has its trainers."""


def grant_roles(offered: Sequence[int], live_trainers: int, max_trainers: int) -> list[int]:
    """The roles a joining node gets. `offered` is its --roles (empty: any); `live_trainers` counts
    the other live nodes that hold the train role. Raises NoTrainSlot for a node that offered only
    train when `max_trainers` live nodes hold it."""
    if list(offered) == [swarm_pb2.ROLE_ROLLOUT]:
        return [swarm_pb2.ROLE_ROLLOUT]
    if list(offered) == [swarm_pb2.ROLE_TRAIN]:
        if live_trainers >= max_trainers:
            raise NoTrainSlot(
                f"the run has its max_trainers={max_trainers} live trainers; join with --roles rollout "
                "(or auto) to roll out, or ask the run owner to raise max_trainers"
            )
        return [swarm_pb2.ROLE_TRAIN]
    return [swarm_pb2.ROLE_TRAIN] if live_trainers == 0 and max_trainers > 0 else [swarm_pb2.ROLE_ROLLOUT]


def pick_members(ready: dict[str, float], asking: str, max_trainers: int, groups: int) -> list[str]:
    """A step's gradient workers among the `ready` trainers (node id -> when it first joined the run,
    the asking one included): the `max_trainers` most senior, then at most one per group in node-id
    order, the asking one kept if it is among the senior. Seniority bounds the team even when more
    nodes hold the role (trainers silent through a coordinator outage were replaced, then came back):
    newer keys stand by, they never displace the run's trainers."""
    senior = sorted(ready, key=lambda n: (ready[n], n))[:max_trainers]
    members = sorted(senior)[:groups]
    if asking in senior and asking not in members:  # more workers than groups: it takes a place
        members = sorted([*members[:-1], asking])
    return members


@dataclass(frozen=True)
class Verdict:
    """Where a step's reports stand: the live members still to report, and the (weight hash, FP8
    weight hash) pair that more than half of the live team reported, if one has."""

    waiting: list[str]
    winner: tuple[str, str] | None


@dataclass
class StepTeam:
    """The gradient workers of one step, as the coordinator formed them (in memory: after a
    coordinator restart the step's team is formed again, and reports of the lost team are refused,
    so its workers re-sync)."""

    members: list[str]
    shards: dict[str, list[int]]  # node id -> rollout ids
    attempt: int = 0
    # node id -> ((weight hash, *store.MANIFEST: what the workers agree on), metrics)
    reports: dict[str, tuple[tuple, dict]] = field(default_factory=dict)
    winner: tuple = ("",)
    # node id -> the members of this attempt who said it was missing from their all-reduce
    claims: dict[str, set[str]] = field(default_factory=dict)

    def claim(self, accuser: str, accused: Iterable[str]) -> None:
        """Note `accuser`'s word that `accused` were missing from this attempt's all-reduce (a
        non-member's word, or one about non-members or itself, is not noted)."""
        if accuser not in self.members:
            return
        for m in accused:
            if m in self.members and m != accuser:
                self.claims.setdefault(m, set()).add(accuser)

    def droppable(self, live: set[str]) -> list[str]:
        """Named members that the coordinator no longer hears from, or that most of the team names."""
        return [
            m
            for m in self.members
            if m in self.claims and (m not in live or 2 * len(self.claims[m]) > len(self.members))
        ]

    def drop(self, dropped: Iterable[str]) -> list[int]:
        """Take `dropped` out; the next attempt starts. Returns their shards' rollout ids."""
        dropped = set(dropped)
        freed = [rid for m in self.members if m in dropped for rid in self.shards.pop(m)]
        self.members = [m for m in self.members if m not in dropped]
        self.restart()
        return freed

    def restart(self) -> None:
        """A new attempt with the same members: every report and claim of the last one is void."""
        self.attempt += 1
        self.reports.clear()
        self.claims.clear()

    def verdict(self, live: set[str]) -> Verdict:
        voters = [m for m in self.members if m in self.reports or m in live]
        waiting = [m for m in voters if m not in self.reports]
        counts: dict[tuple[str, str], int] = {}
        for m in voters:
            if m in self.reports:
                counts[self.reports[m][0]] = counts.get(self.reports[m][0], 0) + 1
        winner = next((h for h, c in counts.items() if 2 * c > len(voters)), None)
        return Verdict(waiting, winner)
