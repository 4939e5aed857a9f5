"""The Coordinator gRPC service: joins, leases, submissions, training batches, policy versions.

Every request goes: its size and parse (gate.py) → who it claims to be, its clock, its signature →
the node's rate → every field → its nonce → one SQLite transaction → reply. Nothing from a request
that fails a check is stored.

Staleness (k = max_staleness, v = the newest published version, P = prompts per step):
- a node whose weights are older than v − k is told to re-sync before it gets work;
- work is handed out for the steps not yet batched up to v + k, P prompts per step, so with k = 0
  rollout nodes wait while the trainer trains, and with k ≥ 1 they sample ahead;
- a submission sampled before v − k is refused (SUBMIT_STALE), and accepted rollouts that fall
  behind v − k before a batch takes them are dropped and their prompts sampled again.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import secrets
import time

import grpc

from swarmgrpo.coordinator import joining, stepmetrics
from swarmgrpo.coordinator.config import RunConfig
from swarmgrpo.coordinator.gate import Gate
from swarmgrpo.coordinator.leaseline import LeaseLine, lease_size
from swarmgrpo.coordinator.scoring import OverBudget, Scorer
from swarmgrpo.coordinator.store import MANIFEST, Lease, Store
from swarmgrpo.coordinator.teams import TRAIN, NoTrainSlot, StepTeam, grant_roles, pick_members
from swarmgrpo.core.configtree import render_toml
from swarmgrpo.protocol import PROTOCOL_VERSION, sizes, swarm_pb2, swarm_pb2_grpc, validate
from swarmgrpo.protocol.signing import AuthError, ReplayGuard, verify
from swarmgrpo.trainer.rollouts import add_train_group, behavior_logprobs, completion_ids, wire_tokens

log = logging.getLogger("swarmgrpo.coordinator")


class Run:
    """The run's task, tokenizer and prompt stream: the parts that need the model's tokenizer."""

    def __init__(self, cfg: RunConfig):
        from swarmgrpo.trainer.models import load_tokenizer
        from swarmgrpo.trainer.tasks import make_task

        self.cfg = cfg
        self.task = make_task(cfg.train.task)
        self.tokenizer = load_tokenizer(cfg.train.model)
        self.vocab_size = len(self.tokenizer)
        self._stream = None
        self._stream_pos = 0

    def example(self, index: int):
        """The index-th problem of the run's seeded stream (the stream only moves forward)."""
        if self._stream is None or index < self._stream_pos:
            self._stream = self.task.train_examples(self.cfg.train.seed)
            self._stream_pos = 0
        ex = next(itertools.islice(self._stream, index - self._stream_pos, None))
        self._stream_pos = index + 1
        return ex

    def encode(self, example) -> list[int]:
        from swarmgrpo.trainer.prompts import encode_chat

        return encode_chat(self.tokenizer, example.messages, self.cfg.train.max_prompt_length)

    def reward(self, example: dict, token_ids: list[int]) -> float:
        from swarmgrpo.trainer.completions import score_completion
        from swarmgrpo.trainer.tasks import Example

        ex, max_tokens = Example.from_row(example), self.cfg.train.max_completion_length
        return score_completion(self.tokenizer, self.task, ex, token_ids, max_tokens).reward


class StrangerRefused(Exception):
    """A request refused before its signature was checked, with the gRPC status to answer."""

    def __init__(self, code: grpc.StatusCode, message: str):
        self.code = code
        super().__init__(message)


class CoordinatorService(swarm_pb2_grpc.CoordinatorServicer):
    def __init__(
        self,
        cfg: RunConfig,
        store: Store,
        run: Run,
        scorer: Scorer,
        status_fn=None,
        dht_addrs: list[str] | None = None,
    ):
        self.cfg = cfg
        self.store = store
        self.run = run
        self.scorer = scorer
        self.status_fn = status_fn
        self.dht_addrs = list(dht_addrs or [])
        self.teams: dict[int, StepTeam] = {}
        self._team_wait: dict[int, float] = {}  # step -> when its first worker asked (see _syncing_trainers)
        self.train_devices: dict[str, str] = {}  # node id -> the device its TrainBatch calls named
        self.line = LeaseLine(grace_s=max(2.0, cfg.heartbeat_interval_s))
        self._changed = asyncio.Event()  # set (and replaced) whenever work or the policy moves
        t = cfg.train
        self.prompts_per_step = t.generation_batch_size // t.num_generations
        self.limits = validate.Limits(run.vocab_size, t.num_generations, t.max_completion_length)
        horizon = time.time() - 2 * cfg.max_clock_skew_s
        self.replay = ReplayGuard(
            cfg.max_clock_skew_s,
            store.remember_nonce,
            store.recent_nonces(horizon),
            forget=store.forget_nonces,
        )
        self.gate = Gate(cfg.rate_limits, sizes.request_caps(self.limits, cfg.prompts_per_lease))
        if store.get_meta("run_id") is None:
            with store.tx():
                store.set_meta("run_id", cfg.run_id)
                store.set_meta("config_toml", render_toml(cfg))
                store.set_meta("policy_version", 0)
                store.set_meta("next_prompt_index", 0)

    # ------------------------------------------------------------------ checks shared by every method

    async def _checked(self, method: str, request, context, check):
        """Cheap checks first, so a stranger costs little and learns nothing: who the request claims
        to be (a joined node, or Join's token), the Auth's lengths and clock, the signature; then the
        node's rate, every field and the nonce. Aborts the RPC with a status a volunteer can act on."""
        try:
            key = self._claimed_key(method, request)
            validate.auth_fields(request.auth, join=method == "Join")
            self.replay.check_clock(request.auth)
            verify(method, request, key)
        except StrangerRefused as e:
            await self.gate.refuse_stranger(context, method, e.code, str(e))
        except validate.InvalidRequest as e:
            await self.gate.refuse_stranger(context, method, grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except AuthError as e:
            await self.gate.refuse_stranger(context, method, grpc.StatusCode.UNAUTHENTICATED, str(e))
        await self.gate.charge_node(context, request.auth.node_id)
        try:
            check(request, self.limits)
            with self.store.tx():
                self.replay.check(request.auth)
        except validate.IncompatibleProtocol as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        except validate.InvalidRequest as e:
            log.warning("%s from node %s refused: %s", method, request.auth.node_id[:32], e)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except AuthError as e:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(e))

    def _claimed_key(self, method: str, request) -> bytes:
        """The key the request must be signed with: Join's own (after its token), else the node's."""
        if method != "Join":
            key = self.store.node_key(request.auth.node_id)
            if key is None:
                raise AuthError("unknown node: join first (swarmgrpo node --join HOST:PORT --token T)")
            return key
        token = self.cfg.join_token.encode()
        if not token or not secrets.compare_digest(request.join_token.encode(), token):
            raise StrangerRefused(
                grpc.StatusCode.PERMISSION_DENIED, "wrong join token: ask the run owner for the run's --token"
            )
        return request.auth.public_key

    def _notify(self) -> None:
        """Wake the held Lease and TrainBatch calls: they look again."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def _hold(self, wait_s: float, answer, waiting) -> object:
        """`answer()`, asked again each time something changes while `waiting(reply)` holds, for
        at most `wait_s` seconds (a node's long poll)."""
        deadline = time.monotonic() + wait_s
        while True:
            changed = self._changed  # taken before answering: a change during it is not missed
            reply = await answer()
            remaining = deadline - time.monotonic()
            if not waiting(reply) or remaining <= 0:
                return reply
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                return reply

    async def _hold_wait_reply(self, wait_s: float, answer, waiting) -> object:
        """`_hold` for replies that tell the node when to ask again (`retry_after_s`): one that was
        held and ran out asks for no delay, since the node has already waited."""
        reply = await self._hold(wait_s, answer, waiting)
        if wait_s > 0 and waiting(reply):
            reply.retry_after_s = 0.0
        return reply

    @property
    def version(self) -> int:
        return self.store.policy_version

    @property
    def finished(self) -> bool:
        return self.version >= self.cfg.train.max_steps

    def policy_state(self) -> swarm_pb2.PolicyState:
        v = self.version
        holders = [
            swarm_pb2.WeightHolder(
                node_id=n["node_id"],
                peer_id=n["peer_id"],
                peer_addrs=n["peer_addrs"],
                policy_version=n["policy_version"],
            )
            for n in sorted(self._live_nodes(), key=lambda n: -n["last_seen"])
            if n["policy_version"] == v and n["peer_id"]
        ]
        return swarm_pb2.PolicyState(
            policy_version=v,
            **self.store.version_manifest(v),
            holders=holders,
            max_staleness=self.cfg.max_staleness,
            finished=self.finished,
        )

    # ------------------------------------------------------------------ joining and liveness

    async def Join(self, request, context):
        await self._checked("Join", request, context, validate.join)  # the token first
        try:
            roles = self._grant_roles(request)
        except NoTrainSlot as e:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        caps = {f.name: getattr(request.capabilities, f.name) for f in request.capabilities.DESCRIPTOR.fields}
        caps["engines"] = list(caps["engines"])
        self.train_devices.pop(request.auth.node_id, None)  # a node joining again says it again
        with self.store.tx():
            # A node that joins again was restarted: the leases its earlier process held are lost.
            returned = self._return_leases(request.auth.node_id)
            self.store.upsert_node(
                request.auth.node_id,
                request.auth.public_key,
                caps,
                [swarm_pb2.Role.Name(r) for r in roles],
                request.peer_id,
                list(request.peer_addrs),
                request.software_version,
            )
        if returned:
            self._notify()
        log.info(
            "node %s joined as %s%s",
            request.auth.node_id[:8],
            [swarm_pb2.Role.Name(r) for r in roles],
            f" again; {returned} prompts it held back to the pool" if returned else "",
        )
        others = [
            n for n in self._live_nodes() if n["node_id"] != request.auth.node_id
        ]  # a joiner dials them
        peers = joining.bootstrap_peers(self.dht_addrs + list(self.cfg.dht_initial_peers), others)
        return swarm_pb2.JoinReply(
            node_id=request.auth.node_id,
            protocol_version=PROTOCOL_VERSION,
            run_id=self.cfg.run_id,
            run_config_toml=joining.node_config_toml(self.store.get_meta("config_toml")),
            policy_version=self.version,
            roles=roles,
            initial_peers=peers,
            heartbeat_interval_s=self.cfg.heartbeat_interval_s,
        )

    def _return_leases(self, node_id: str, keep: Lease | None = None) -> int:
        """Close `node_id`'s open leases but `keep` as returned, their prompts back to the pool; in a
        transaction. Returns how many prompts went back."""
        returned = 0
        for lease in self.store.open_leases(node_id=node_id):
            if keep is None or lease.lease_id != keep.lease_id:
                self.store.close_lease(lease, "returned", done=[])
                returned += len(lease.prompt_indices)
        return returned

    def _held_lease(self, node_id: str, version: int) -> Lease | None:
        """One open lease per node. A node that asks again while it holds one at the same version
        gets that lease again: the reply to its first ask was lost and the call retried (the daemon
        asks for its next lease only after submitting). Asking at another version gives the held
        one back. So a node, however often it asks, holds at most prompts_per_lease prompts: before,
        one node could lease every prompt of the step and stall the run for lease_timeout_s."""
        held = [lease for lease in self.store.open_leases(node_id=node_id) if lease.policy_version == version]
        keep = held[0] if held else None
        if self._return_leases(node_id, keep):
            self._notify()
        return keep

    def _grant_roles(self, request) -> list[int]:
        """The coordinator's choice (see coordinator/teams.py): train only while the run has fewer
        than max_trainers live trainers besides this node."""
        trainers = sum(
            TRAIN in n["roles"] and n["node_id"] != request.auth.node_id for n in self._live_nodes()
        )
        return grant_roles(request.roles, trainers, self.cfg.max_trainers)

    async def Heartbeat(self, request, context):
        await self._checked("Heartbeat", request, context, validate.heartbeat)
        if request.policy_version > self.version:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"policy_version {request.policy_version} is newer than the run's {self.version}; report what you hold",
            )
        with self.store.tx():
            self.store.touch_node(
                request.auth.node_id,
                policy_version=request.policy_version,
                activity=request.activity,
                tokens_per_s=request.tokens_per_s,
            )
        return self.policy_state()

    async def GetPolicy(self, request, context):
        await self._checked("GetPolicy", request, context, validate.policy)

        async def answer():
            return self.policy_state()

        return await self._hold(
            request.wait_s, answer, lambda r: r.policy_version <= request.after_version and not self.finished
        )

    async def Leave(self, request, context):
        await self._checked("Leave", request, context, validate.signed_only)
        with self.store.tx():
            returned = self._return_leases(request.auth.node_id)
            self.store.touch_node(request.auth.node_id, left_at=time.time(), activity="left")
        if returned:
            self._notify()
        log.info(
            "node %s left (%s); %d prompts back to the pool",
            request.auth.node_id[:8],
            request.reason,
            returned,
        )
        return swarm_pb2.LeaveReply(returned_prompts=returned)

    async def Status(self, request, context):
        return swarm_pb2.StatusReply(status_json=json.dumps(self.status_fn() if self.status_fn else {}))

    # ------------------------------------------------------------------ rollouts

    def _open_steps(self) -> int:
        """Steps that still need rollouts: from the first step without a batch up to v + k."""
        v, k = self.version, self.cfg.max_staleness
        first_unbatched = v + 1 if self.store.has_batch(v) else v
        return max(0, min(v + k, self.cfg.train.max_steps - 1) - first_unbatched + 1)

    def publish_if_complete(self) -> None:
        """Publish a step once every worker that is still alive has reported, if a majority agrees
        (called every second by the server: the last report may have come before a worker died)."""
        v = self.version
        team = self.teams.get(v)
        if team is None or not team.reports or team.winner[0]:
            return
        verdict = team.verdict(self._live_ids())
        if verdict.waiting:
            return
        if verdict.winner is None:
            self._void(v, team)
        else:
            self._publish(v, team, verdict.winner)

    def expire_leases(self, now: float | None = None) -> int:
        expired = self.store.open_leases(expired_by=time.time() if now is None else now)
        if expired:
            with self.store.tx():
                for lease in expired:
                    self.store.close_lease(lease, "expired", done=[])
            log.info("%d leases expired; their prompts go to other nodes", len(expired))
            self._notify()
        return len(expired)

    async def Lease(self, request, context):
        await self._checked("Lease", request, context, validate.lease)
        first = self.version

        async def answer():
            moved = self.version != first and not self.finished
            if moved and request.policy_version >= self.version - self.cfg.max_staleness:
                # Still allowed to lease at its version, but a newer one exists: sync first.
                return swarm_pb2.LeaseReply(
                    status=swarm_pb2.LEASE_WAIT,
                    group_size=self.cfg.train.num_generations,
                    message=f"version {self.version} is published: fetch it, then ask again",
                )
            return await self._lease(request, context)

        # Held while no prompt is free, until a new policy is published.
        with self.line.asking(request.auth.node_id):
            return await self._hold_wait_reply(
                request.wait_s, answer, lambda r: r.status == swarm_pb2.LEASE_WAIT and self.version == first
            )

    async def _lease(self, request, context):
        node_id = request.auth.node_id
        v, k = self.version, self.cfg.max_staleness
        reply = swarm_pb2.LeaseReply(group_size=self.cfg.train.num_generations)
        if self.finished:
            reply.status, reply.message = (
                swarm_pb2.LEASE_FINISHED,
                f"the run reached max_steps={self.cfg.train.max_steps}",
            )
            return reply
        if request.policy_version > v:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"policy_version {request.policy_version} > the run's {v}"
            )
        if request.policy_version < v - k:
            reply.status, reply.retry_after_s = swarm_pb2.LEASE_RESYNC, 0.0
            reply.message = (
                f"max_staleness={k} but the node's policy is {v - request.policy_version} versions old; "
                f"fetch version {v} and ask again"
            )
            reply.policy.CopyFrom(self.policy_state())
            return reply
        self.expire_leases()
        with self.store.tx():
            lease = self._held_lease(node_id, request.policy_version)
            if lease is None:
                self.store.drop_stale(v - k)
                budget = self.prompts_per_step * self._open_steps()
                free = budget - self.store.unused_rollouts(v - k) - self.store.leased_prompt_count()
                n = min(request.max_prompts, self._lease_size(node_id, free, budget))
                if n <= 0:
                    self.line.refused(node_id)
                    reply.status, reply.retry_after_s = swarm_pb2.LEASE_WAIT, 0.5
                    reply.message = (
                        "the free prompts are kept for nodes ahead in line; stay asking, you are served as they free up"
                        if free > 0
                        else f"the batches up to step {min(v + k, self.cfg.train.max_steps - 1)} are covered; waiting for a new policy"
                    )
                    return reply
                self.line.served(node_id)
                indices = self.store.pool_prompts(n)
                while len(indices) < n:
                    indices.append(self._issue_prompt())
                lease = Lease(
                    lease_id=secrets.token_hex(12),
                    node_id=node_id,
                    policy_version=request.policy_version,
                    prompt_indices=indices,
                    seed=secrets.randbits(63),
                    deadline=time.time() + self.cfg.lease_timeout_s,
                    state="open",
                )
                self.store.add_lease(lease)
            self.store.touch_node(node_id, activity="generating", policy_version=request.policy_version)
        t = self.cfg.train
        reply.status = swarm_pb2.LEASE_GRANTED
        reply.lease_id = lease.lease_id
        reply.policy_version = lease.policy_version
        reply.deadline_ms = int(lease.deadline * 1000)
        reply.sampling.CopyFrom(
            swarm_pb2.Sampling(
                temperature=t.temperature,
                top_p=t.top_p,
                top_k=t.top_k,
                max_tokens=t.max_completion_length,
                seed=lease.seed,
            )
        )
        for i in lease.prompt_indices:
            reply.prompts.add(prompt_index=i, token_ids=self.store.prompt(i)[1])
        return reply

    def _lease_size(self, node_id: str, free: int, budget: int) -> int:
        """This node's share of the free prompts (see coordinator/leaseline.py); in a transaction."""
        return lease_size(
            node_id,
            free,
            budget,
            self.cfg.prompts_per_lease,
            holders={lease.node_id for lease in self.store.open_leases()},
            line=self.line.waiting(),
            expired=self.store.expired_lease_counts(),
            now=time.time(),
        )

    def _issue_prompt(self) -> int:
        index = int(self.store.get_meta("next_prompt_index", "0"))
        ex = self.run.example(index)
        self.store.add_prompt(index, ex.as_row(), self.run.encode(ex))
        self.store.set_meta("next_prompt_index", index + 1)
        return index

    def _closed_lease_reply(self, lease: Lease) -> swarm_pb2.SubmitReply | None:
        """The reply to a submission for a lease that no longer takes one; None while it is open."""
        reply = swarm_pb2.SubmitReply()
        v, k = self.version, self.cfg.max_staleness
        if lease.state == "submitted":
            reply.status, reply.message = swarm_pb2.SUBMIT_DUPLICATE, "this lease was already accepted"
            return reply
        if lease.state != "open" or lease.deadline < time.time():
            if lease.state == "open":
                with self.store.tx():
                    self.store.close_lease(lease, "expired", done=[])
                self._notify()
            reply.status, reply.message = (
                swarm_pb2.SUBMIT_EXPIRED,
                "the lease expired and its prompts went to other nodes",
            )
            return reply
        if lease.policy_version < v - k:
            with self.store.tx():
                self.store.close_lease(lease, "stale", done=[])
            self._notify()
            reply.status = swarm_pb2.SUBMIT_STALE
            reply.message = (
                f"max_staleness={k} but these rollouts are {v - lease.policy_version} versions old; "
                f"the node will re-sync to version {v} and lease again"
            )
            reply.policy.CopyFrom(self.policy_state())
            return reply
        return None

    def _give_back(self, lease: Lease) -> None:
        """Close the lease with nothing done: its prompts go to other nodes."""
        with self.store.tx():
            self.store.close_lease(lease, "returned", done=[])
        self._notify()

    async def Submit(self, request, context):
        lease = self.store.lease(request.lease_id)
        node_id = request.auth.node_id
        mine = lease is not None and lease.node_id == node_id
        leased = set(lease.prompt_indices) if mine else set()
        check = (lambda r, lim: validate.submit(r, lim, leased)) if mine else validate.signed_only
        await self._checked("Submit", request, context, check)
        reply = swarm_pb2.SubmitReply()
        if not mine:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"lease {request.lease_id[:24]} is not yours: ask for a new lease"
            )
        if request.policy_version != lease.policy_version:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"policy_version {request.policy_version} differs from the lease's {lease.policy_version}; sample with the leased version",
            )
        refused = self._closed_lease_reply(lease)
        if refused is not None:
            return refused
        groups = [(self.store.prompt(g.prompt_index)[0], completion_ids(g)) for g in request.groups]
        try:
            rewards = await self.scorer.score(groups)  # off the event loop: other RPCs go on meanwhile
        except OverBudget as e:
            if self.store.lease(request.lease_id).state == "open":  # not expired and leased out meanwhile
                self._give_back(lease)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        lease = self.store.lease(request.lease_id)  # it may have expired, or been submitted, meanwhile
        refused = self._closed_lease_reply(lease)
        if refused is not None:
            return refused
        tokens = wire_tokens(request.groups)
        with self.store.tx():
            for g, r in zip(request.groups, rewards, strict=True):
                self.store.add_rollout(
                    g.prompt_index,
                    lease.lease_id,
                    node_id,
                    lease.policy_version,
                    completion_ids(g),
                    behavior_logprobs(g),
                    r,
                )
            self.store.close_lease(lease, "submitted", done=[g.prompt_index for g in request.groups])
            self.store.add_counts(node_id, tokens=tokens, rollouts=len(request.groups))
            gen_tps = tokens / request.generation_s if request.generation_s > 0 else 0.0
            if not math.isfinite(gen_tps):  # a generation_s of 5e-324 s: finite, and no rate
                gen_tps = 0.0
            self.store.touch_node(node_id, tokens_per_s=gen_tps)
        self._notify()
        reply.status = swarm_pb2.SUBMIT_ACCEPTED
        reply.accepted_groups = len(request.groups)
        for r in rewards:
            reply.rewards.add(rewards=r)
        reply.policy.CopyFrom(self.policy_state())
        return reply

    # ------------------------------------------------------------------ training

    async def TrainBatch(self, request, context):
        await self._checked("TrainBatch", request, context, validate.train_batch)
        if TRAIN not in self.store.node_roles(request.auth.node_id):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "this node was not granted the train role (the coordinator grants it at Join while the run "
                f"has fewer than max_trainers={self.cfg.max_trainers} live trainers); it may roll out",
            )
        return await self._hold_wait_reply(
            request.wait_s,
            lambda: self._train_batch(request),
            lambda r: r.status == swarm_pb2.BATCH_WAIT,
        )

    async def _train_batch(self, request):
        v, k = self.version, self.cfg.max_staleness
        node_id = request.auth.node_id
        reply = swarm_pb2.TrainBatchReply(step=v)
        if request.device:
            self.train_devices[node_id] = request.device
        if self.finished:
            reply.status, reply.message = (
                swarm_pb2.BATCH_FINISHED,
                f"the run reached max_steps={self.cfg.train.max_steps}",
            )
            return reply
        devices = self._trainer_devices(node_id)
        gpus = [m for m, d in devices.items() if d == "cuda" and m != node_id]
        if devices.get(node_id) != "cuda" and gpus:
            # Standing by rather than re-syncing after every step: that would copy a GPU worker's
            # whole training state each time for nothing.
            reply.status, reply.retry_after_s = swarm_pb2.BATCH_WAIT, 2.0
            reply.message = (
                f"standing by: {len(gpus)} GPU trainer{'s' * (len(gpus) != 1)} train this run, and a "
                "step's workers share a device type; this trainer takes over when none is live"
            )
            return reply
        if request.step != v:
            reply.status = swarm_pb2.BATCH_RESYNC
            reply.message = (
                f"the trainer holds version {request.step}, the run is at {v}: fetch version {v} first"
            )
            reply.policy.CopyFrom(self.policy_state())
            return reply
        with self.store.tx():
            batch = self.store.batch(v)
            if not batch:
                self.store.drop_stale(v - k)
                if self.store.unused_rollouts(v - k) >= self.prompts_per_step:
                    self.store.assign_batch(v, self.prompts_per_step, v - k)
                    batch = self.store.batch(v)
        if not batch:
            have = self.store.unused_rollouts(v - k)
            reply.status, reply.retry_after_s = swarm_pb2.BATCH_WAIT, 0.25
            reply.message = f"step {v} has {have}/{self.prompts_per_step} groups"
            return reply
        team = self.teams.get(v)
        lost = team is not None and not team.reports and not self._any_alive(team.members)
        if team is None:
            syncing = self._syncing_trainers(v, node_id, devices)
            if syncing:
                reply.status, reply.retry_after_s = swarm_pb2.BATCH_WAIT, 0.25
                reply.message = f"step {v} waits for {len(syncing)} trainers copying version {v}'s state"
                return reply
        if team is None or (lost and not request.missing_node_ids):
            # none yet, or every worker of it died before reporting: the ones here form it again (not
            # from a call retrying an all-reduce, whose worker still holds its old shard's gradient)
            team = self._form_team(v, batch, node_id, devices, attempt=team.attempt + 1 if team else 0)
        if request.missing_node_ids and request.failed_attempt == team.attempt:
            reply.message = self._weigh_claim(v, team, node_id, request.missing_node_ids)
        if node_id not in team.members:
            reply.status, reply.retry_after_s = swarm_pb2.BATCH_WAIT, 0.5
            reply.message = f"step {v} is trained by {len(team.members)} other workers; join the next step"
            return reply
        with self.store.tx():
            self.store.touch_node(node_id, activity="training")
        reply.status, reply.attempt = swarm_pb2.BATCH_READY, team.attempt
        reply.shard_index = team.members.index(node_id)
        nodes = {n["node_id"]: n for n in self.store.nodes()}
        for m in team.members:
            reply.workers.add(node_id=m, peer_id=nodes[m]["peer_id"], peer_addrs=nodes[m]["peer_addrs"])
        by_id = {r.id: r for r in batch}
        for rid in team.shards[node_id]:
            r = by_id[rid]
            add_train_group(reply, r, self.store.prompt(r.prompt_index)[1])
        return reply

    def _live_nodes(self, asking: str = "") -> list[dict]:
        """Nodes heard from within 3 heartbeats that have not left (and the asking one)."""
        alive = time.time() - 3 * self.cfg.heartbeat_interval_s
        return [
            n
            for n in self.store.nodes()
            if n["node_id"] == asking or (n["left_at"] is None and n["last_seen"] >= alive)
        ]

    def _live_ids(self) -> set[str]:
        return {n["node_id"] for n in self._live_nodes()}

    def _any_alive(self, node_ids: list[str]) -> bool:
        return any(n["node_id"] in node_ids for n in self._live_nodes())  # node_ids empty: False

    def _trainer_devices(self, asking: str) -> dict[str, str]:
        """Live train-role nodes (and the asking one) -> the device they train on: what their
        TrainBatch calls said, else what they joined with."""
        return {
            n["node_id"]: self.train_devices.get(n["node_id"]) or n["capabilities"].get("device", "cpu")
            for n in self._live_nodes(asking)
            if "ROLE_TRAIN" in n["roles"] or n["node_id"] == asking
        }

    def _syncing_trainers(self, step: int, asking: str, devices: dict[str, str]) -> list[str]:
        """Live trainers of the asking one's device type still copying an older state, while the step's
        team waits for them: at most 2 heartbeat intervals from the step's first ask. Without the wait a
        worker that re-syncs (a late joiner, one left out of a step) finds the others already training
        the next step whenever its batch was sampled ahead, and chases them step after step."""
        first = self._team_wait.setdefault(step, time.monotonic())
        self._team_wait = {s: t for s, t in self._team_wait.items() if s >= step}
        if time.monotonic() - first > 2 * self.cfg.heartbeat_interval_s:
            return []
        kind = devices[asking]
        return [
            n["node_id"]
            for n in self._live_nodes()
            if n["node_id"] != asking
            and devices.get(n["node_id"]) == kind
            and n["peer_id"]
            and n["policy_version"] < step
        ]

    def _form_team(
        self, step: int, batch, asking: str, devices: dict[str, str], attempt: int = 0
    ) -> StepTeam:
        """The step's gradient workers: the live train-role nodes that hold version `step` now (the
        asking one included), chosen by `pick_members`, each with every N-th group of the batch (by
        prompt index). They share the asking node's device type: GPU workers whenever any is live (the others
        stand by, see `_train_batch`). A CPU worker would hold a GPU team back, and the two may not
        agree to the last bit on the same update."""
        kind = devices[asking]
        ready = {  # a train node still copying the state of this version waits
            n["node_id"]: n["joined_at"]
            for n in self._live_nodes(asking)
            if n["node_id"] in devices
            and devices[n["node_id"]] == kind
            and (n["node_id"] == asking or (n["peer_id"] and n["policy_version"] == step))
        }
        members = pick_members(ready, asking, self.cfg.max_trainers, len(batch))
        ordered = [r.id for r in sorted(batch, key=lambda r: r.prompt_index)]
        shards = {m: ordered[i :: len(members)] for i, m in enumerate(members)}
        self.teams = {s: t for s, t in self.teams.items() if s >= step}  # older steps are done
        self.teams[step] = team = StepTeam(members, shards, attempt=attempt)
        if len(members) > 1:
            log.info(
                "step %d: %d gradient workers on %s %s", step, len(members), kind, [m[:8] for m in members]
            )
        return team

    def _weigh_claim(self, step: int, team: StepTeam, node_id: str, missing) -> str:
        """`node_id` says `missing` did not take part in its all-reduce: drop those the evidence
        backs (see StepTeam.droppable); the rest stay, and the claimant trains the attempt again."""
        team.claim(node_id, missing)
        dropped = team.droppable(self._live_ids())
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
        self._notify()
        log.warning(
            "step %d: workers %s dropped (all-reduce failed); their shards go back to the pool; attempt %d",
            step,
            [m[:8] for m in dropped],
            team.attempt,
        )

    async def ReportStep(self, request, context):
        await self._checked("ReportStep", request, context, validate.step_report)
        v, node_id = self.version, request.auth.node_id
        team = self.teams.get(v)
        if request.step != v or not self.store.has_batch(v) or team is None or node_id not in team.members:
            return swarm_pb2.StepReply(
                status=swarm_pb2.STEP_REJECTED,
                policy_version=v,
                message=f"step {request.step} is not the run's open step {v} with a batch you train; re-sync to version {v}",
            )
        if request.attempt != team.attempt:
            return swarm_pb2.StepReply(
                status=swarm_pb2.STEP_REJECTED,
                policy_version=v,
                message=f"attempt {request.attempt} of step {v} was replaced by attempt {team.attempt}; re-sync",
            )
        if request.set_aside_prompts:
            self._set_aside(v, node_id, sorted(set(request.set_aside_prompts)))
        # Workers' weights and training states are bitwise equal, so are their files: they agree on
        # the hashes and sizes of all three.
        agreed_on = (request.weight_hash, *(getattr(request, f) for f in MANIFEST))
        team.reports[node_id] = (agreed_on, dict(request.metrics))
        verdict = team.verdict(self._live_ids())
        if verdict.waiting:
            return swarm_pb2.StepReply(
                status=swarm_pb2.STEP_PENDING,
                policy_version=v,
                message=f"waiting for {len(verdict.waiting)} other workers of step {v}",
            )
        if verdict.winner is None:
            self._void(v, team)
            return swarm_pb2.StepReply(
                status=swarm_pb2.STEP_REJECTED,
                policy_version=v,
                message=f"no weights have a majority of step {v}'s live workers; the attempt is void: "
                f"re-sync to version {v} and train it again",
            )
        self._publish(v, team, verdict.winner)
        return self._step_reply(v, team, node_id)

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
        self._notify()
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
        self._notify()
        diverged = [m[:8] for m in team.members if m in team.reports and team.reports[m][0] != winner]
        if diverged:
            log.warning(
                "step %d: workers %s reported other weights than the %d that agree; they re-sync",
                v,
                diverged,
                len(agreed),
            )
        log.info("version %d published by %d worker(s) (hash %s)", v + 1, len(agreed), winner[0][:12])

    def _step_reply(self, v: int, team: StepTeam, node_id: str) -> swarm_pb2.StepReply:
        if team.reports[node_id][0] == team.winner:
            return swarm_pb2.StepReply(status=swarm_pb2.STEP_PUBLISHED, policy_version=v + 1)
        return swarm_pb2.StepReply(
            status=swarm_pb2.STEP_REJECTED,
            policy_version=v + 1,
            message=f"your weights differ from the {v + 1} the other workers agreed on; re-sync from them",
        )
