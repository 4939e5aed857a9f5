"""The lease book: which prompts each node holds, for how long, and at which policy version.

Staleness (k = max_staleness, v = the newest published version, P = prompts per step):
- a node whose weights are older than v − k is told to re-sync before it gets work (`too_old`);
- work is handed out for the steps not yet batched up to v + k, P prompts per step, so with k = 0
  rollout nodes wait while the trainer trains, and with k ≥ 1 they sample ahead (`open_steps`);
- a submission sampled before v − k is refused (SUBMIT_STALE, `closed`), and accepted rollouts that
  fall behind v − k before a batch takes them are dropped and their prompts sampled again.

One open lease per node (`held`); a lease not submitted by its deadline expires and its prompts go
back to the pool for other nodes (`expire`). Who gets the free prompts when they are few is
leaseline.py's rule.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from swarmgrpo.coordinator.leaseline import LeaseLine, lease_size
from swarmgrpo.coordinator.store import Lease, Store
from swarmgrpo.protocol import swarm_pb2

log = logging.getLogger("swarmgrpo.coordinator")


@dataclass(frozen=True)
class Refusal:
    """Why a node gets no lease, or its submission is not taken: a swarm_pb2 status and a sentence."""

    status: int
    message: str
    retry_after_s: float = 0.0


@dataclass(frozen=True)
class Group:
    """One prompt's submitted completions, decoded from the wire."""

    prompt_index: int
    completions: list[list[int]]
    logprobs: list[list[float]]


class LeaseBook:
    """Leases over the store's prompt pool. `new_prompt(index)` gives the index-th problem of the
    run's stream as (example dict, prompt token ids); `notify()` wakes the held calls when prompts
    free up."""

    def __init__(
        self,
        store: Store,
        *,
        max_staleness: int,
        max_steps: int,
        prompts_per_step: int,
        prompts_per_lease: int,
        lease_timeout_s: float,
        line_grace_s: float,
        new_prompt: Callable[[int], tuple[dict, list[int]]],
        notify: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self.max_staleness = max_staleness
        self.max_steps = max_steps
        self.prompts_per_step = prompts_per_step
        self.prompts_per_lease = prompts_per_lease
        self.lease_timeout_s = lease_timeout_s
        self.line = LeaseLine(grace_s=line_grace_s)
        self.new_prompt = new_prompt
        self.notify = notify
        self.clock = clock

    @property
    def version(self) -> int:
        return self.store.policy_version

    def too_old(self, policy_version: int) -> str | None:
        """Why a node at `policy_version` must re-sync before it leases, or None."""
        v, k = self.version, self.max_staleness
        if policy_version >= v - k:
            return None
        return (
            f"max_staleness={k} but the node's policy is {v - policy_version} versions old; "
            f"fetch version {v} and ask again"
        )

    def open_steps(self) -> int:
        """Steps that still need rollouts: from the first step without a batch up to v + k."""
        v, k = self.version, self.max_staleness
        first_unbatched = v + 1 if self.store.has_batch(v) else v
        return max(0, min(v + k, self.max_steps - 1) - first_unbatched + 1)

    def expire(self, now: float | None = None) -> int:
        """Close the open leases past their deadline; their prompts go to other nodes."""
        expired = self.store.open_leases(expired_by=self.clock() if now is None else now)
        if expired:
            with self.store.tx():
                for lease in expired:
                    self.store.close_lease(lease, "expired", done=[])
            log.info("%d leases expired; their prompts go to other nodes", len(expired))
            self.notify()
        return len(expired)

    def give_back_all(self, node_id: str, keep: Lease | None = None) -> int:
        """Close `node_id`'s open leases but `keep` as returned, their prompts back to the pool; in a
        transaction. Returns how many prompts went back."""
        returned = 0
        for lease in self.store.open_leases(node_id=node_id):
            if keep is None or lease.lease_id != keep.lease_id:
                self.store.close_lease(lease, "returned", done=[])
                returned += len(lease.prompt_indices)
        return returned

    def held(self, node_id: str, version: int) -> Lease | None:
        """One open lease per node. A node that asks again while it holds one at the same version
        gets that lease again: the reply to its first ask was lost and the call retried (the daemon
        asks for its next lease only after submitting). Asking at another version gives the held
        one back. So a node, however often it asks, holds at most prompts_per_lease prompts: before,
        one node could lease every prompt of the step and stall the run for lease_timeout_s. In a
        transaction."""
        held = [lease for lease in self.store.open_leases(node_id=node_id) if lease.policy_version == version]
        keep = held[0] if held else None
        if self.give_back_all(node_id, keep):
            self.notify()
        return keep

    def grant(self, node_id: str, policy_version: int, max_prompts: int) -> Lease | Refusal:
        """The node's lease at `policy_version` (not too old, not newer than the run's): the one it
        holds, or a new one of its share of the free prompts; else a LEASE_WAIT refusal."""
        v, k = self.version, self.max_staleness
        self.expire()
        with self.store.tx():
            lease = self.held(node_id, policy_version)
            if lease is None:
                self.store.drop_stale(v - k)
                budget = self.prompts_per_step * self.open_steps()
                free = budget - self.store.unused_rollouts(v - k) - self.store.leased_prompt_count()
                n = min(max_prompts, self._size(node_id, free, budget))
                if n <= 0:
                    self.line.refused(node_id)
                    return Refusal(
                        swarm_pb2.LEASE_WAIT,
                        "the free prompts are kept for nodes ahead in line; stay asking, you are served as they free up"
                        if free > 0
                        else f"the batches up to step {min(v + k, self.max_steps - 1)} are covered; waiting for a new policy",
                        retry_after_s=0.5,
                    )
                self.line.served(node_id)
                lease = self._new_lease(node_id, policy_version, n)
            self.store.touch_node(node_id, activity="generating", policy_version=policy_version)
        return lease

    def _new_lease(self, node_id: str, policy_version: int, n: int) -> Lease:
        """A lease of n prompts, from the pool first, then new ones of the stream; in a transaction."""
        indices = self.store.pool_prompts(n)
        while len(indices) < n:
            indices.append(self._issue_prompt())
        lease = Lease(
            lease_id=secrets.token_hex(12),
            node_id=node_id,
            policy_version=policy_version,
            prompt_indices=indices,
            seed=secrets.randbits(63),
            deadline=self.clock() + self.lease_timeout_s,
            state="open",
        )
        self.store.add_lease(lease)
        return lease

    def _size(self, node_id: str, free: int, budget: int) -> int:
        """This node's share of the free prompts (see coordinator/leaseline.py); in a transaction."""
        return lease_size(
            node_id,
            free,
            budget,
            self.prompts_per_lease,
            holders={lease.node_id for lease in self.store.open_leases()},
            line=self.line.waiting(),
            expired=self.store.expired_lease_counts(),
            now=self.clock(),
        )

    def _issue_prompt(self) -> int:
        index = int(self.store.get_meta("next_prompt_index", "0"))
        example, token_ids = self.new_prompt(index)
        self.store.add_prompt(index, example, token_ids)
        self.store.set_meta("next_prompt_index", index + 1)
        return index

    # ------------------------------------------------------------------ submissions

    def closed(self, lease: Lease) -> Refusal | None:
        """Why a submission for `lease` is not taken (already submitted, expired, stale), closing the
        lease where that frees its prompts; None while it is open."""
        v, k = self.version, self.max_staleness
        if lease.state == "submitted":
            return Refusal(swarm_pb2.SUBMIT_DUPLICATE, "this lease was already accepted")
        if lease.state != "open" or lease.deadline < self.clock():
            if lease.state == "open":
                with self.store.tx():
                    self.store.close_lease(lease, "expired", done=[])
                self.notify()
            return Refusal(swarm_pb2.SUBMIT_EXPIRED, "the lease expired and its prompts went to other nodes")
        if lease.policy_version < v - k:
            with self.store.tx():
                self.store.close_lease(lease, "stale", done=[])
            self.notify()
            return Refusal(
                swarm_pb2.SUBMIT_STALE,
                f"max_staleness={k} but these rollouts are {v - lease.policy_version} versions old; "
                f"the node will re-sync to version {v} and lease again",
            )
        return None

    def give_back(self, lease: Lease) -> None:
        """Close the lease with nothing done: its prompts go to other nodes."""
        with self.store.tx():
            self.store.close_lease(lease, "returned", done=[])
        self.notify()

    def accept(
        self, lease: Lease, groups: list[Group], rewards: list[list[float]], generation_s: float
    ) -> None:
        """Store the lease's scored rollouts and close it as submitted."""
        node_id = lease.node_id
        tokens = sum(len(c) for g in groups for c in g.completions)
        with self.store.tx():
            for g, r in zip(groups, rewards, strict=True):
                self.store.add_rollout(
                    g.prompt_index,
                    lease.lease_id,
                    node_id,
                    lease.policy_version,
                    g.completions,
                    g.logprobs,
                    r,
                )
            self.store.close_lease(lease, "submitted", done=[g.prompt_index for g in groups])
            self.store.add_counts(node_id, tokens=tokens, rollouts=len(groups))
            gen_tps = tokens / generation_s if generation_s > 0 else 0.0
            if not math.isfinite(gen_tps):  # a generation_s of 5e-324 s: finite, and no rate
                gen_tps = 0.0
            self.store.touch_node(node_id, tokens_per_s=gen_tps)
        self.notify()
