"""The Coordinator gRPC service: the adapter between the wire and the coordinator's parts.

Every request goes: its size and parse (gate.py) → who it claims to be, its clock, its signature →
the node's rate → every field → its nonce (admission.py) → one call into a part → reply. Nothing
from a request that fails a check is stored. The rules live in the parts, which know nothing of gRPC:

- admission.py: the request's identity, signature, rate, fields and nonce;
- membership.py: joins, leaves, liveness (the one live-nodes rule), roles, trainers' devices;
- leases.py: the lease book (one lease per node, the staleness bound, expiry and re-issue);
- steps.py: step teams, claims and drops, hash agreement and publishing;
- polls.py: long polls, woken when work or the policy moves.
"""

from __future__ import annotations

import itertools
import json
import logging

import grpc

from swarmgrpo.coordinator import joining
from swarmgrpo.coordinator.admission import Admission
from swarmgrpo.coordinator.config import RunConfig
from swarmgrpo.coordinator.leases import Group, LeaseBook, Refusal
from swarmgrpo.coordinator.membership import Membership
from swarmgrpo.coordinator.polls import Polls
from swarmgrpo.coordinator.scoring import OverBudget, Scorer
from swarmgrpo.coordinator.steps import Answer, Steps
from swarmgrpo.coordinator.store import MANIFEST, Store
from swarmgrpo.coordinator.teams import NoTrainSlot
from swarmgrpo.core.configtree import render_toml
from swarmgrpo.protocol import PROTOCOL_VERSION, swarm_pb2, swarm_pb2_grpc, validate
from swarmgrpo.trainer.rollouts import add_train_group, behavior_logprobs, completion_ids

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
        t = cfg.train
        self.prompts_per_step = t.generation_batch_size // t.num_generations
        self.polls = Polls()
        self.members = Membership(store, cfg.heartbeat_interval_s, cfg.max_trainers)
        self.leases = LeaseBook(
            store,
            max_staleness=cfg.max_staleness,
            max_steps=t.max_steps,
            prompts_per_step=self.prompts_per_step,
            prompts_per_lease=cfg.prompts_per_lease,
            lease_timeout_s=cfg.lease_timeout_s,
            line_grace_s=max(2.0, cfg.heartbeat_interval_s),
            new_prompt=self._new_prompt,
            notify=self.polls.notify,
        )
        self.steps = Steps(
            store,
            self.members,
            max_staleness=cfg.max_staleness,
            max_steps=t.max_steps,
            prompts_per_step=self.prompts_per_step,
            max_trainers=cfg.max_trainers,
            heartbeat_interval_s=cfg.heartbeat_interval_s,
            notify=self.polls.notify,
        )
        self.limits = validate.Limits(run.vocab_size, t.num_generations, t.max_completion_length)
        self.admission = Admission(
            store, cfg.join_token, self.limits, cfg.max_clock_skew_s, cfg.rate_limits, cfg.prompts_per_lease
        )
        self.gate, self.replay = self.admission.gate, self.admission.replay  # the server drives them
        if store.get_meta("run_id") is None:
            with store.tx():
                store.set_meta("run_id", cfg.run_id)
                store.set_meta("config_toml", render_toml(cfg))
                store.set_meta("policy_version", 0)
                store.set_meta("next_prompt_index", 0)

    def _new_prompt(self, index: int) -> tuple[dict, list[int]]:
        ex = self.run.example(index)
        return ex.as_row(), self.run.encode(ex)

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
            for n in self.members.weight_holders(v)
        ]
        return swarm_pb2.PolicyState(
            policy_version=v,
            **self.store.version_manifest(v),
            holders=holders,
            max_staleness=self.cfg.max_staleness,
            finished=self.finished,
        )

    def expire_leases(self, now: float | None = None) -> int:
        return self.leases.expire(now)

    def publish_if_complete(self) -> None:
        self.steps.publish_if_complete()

    # ------------------------------------------------------------------ joining and liveness

    async def Join(self, request, context):
        await self.admission.checked("Join", request, context, validate.join)  # the token first
        node_id = request.auth.node_id
        try:
            roles = self.members.grant_roles(node_id, request.roles)
        except NoTrainSlot as e:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        with self.store.tx():
            # A node that joins again was restarted: the leases its earlier process held are lost.
            returned = self.leases.give_back_all(node_id)
            self.members.join(request, roles)
        if returned:
            self.polls.notify()
        log.info(
            "node %s joined as %s%s",
            node_id[:8],
            [swarm_pb2.Role.Name(r) for r in roles],
            f" again; {returned} prompts it held back to the pool" if returned else "",
        )
        others = [n for n in self.members.live_nodes() if n["node_id"] != node_id]  # a joiner dials them
        peers = joining.bootstrap_peers(self.dht_addrs + list(self.cfg.dht_initial_peers), others)
        return swarm_pb2.JoinReply(
            node_id=node_id,
            protocol_version=PROTOCOL_VERSION,
            run_id=self.cfg.run_id,
            run_config_toml=joining.node_config_toml(self.store.get_meta("config_toml")),
            policy_version=self.version,
            roles=roles,
            initial_peers=peers,
            heartbeat_interval_s=self.cfg.heartbeat_interval_s,
        )

    async def Heartbeat(self, request, context):
        await self.admission.checked("Heartbeat", request, context, validate.heartbeat)
        if request.policy_version > self.version:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"policy_version {request.policy_version} is newer than the run's {self.version}; report what you hold",
            )
        self.members.heartbeat(
            request.auth.node_id, request.policy_version, request.activity, request.tokens_per_s
        )
        return self.policy_state()

    async def GetPolicy(self, request, context):
        await self.admission.checked("GetPolicy", request, context, validate.policy)

        async def answer():
            return self.policy_state()

        return await self.polls.hold(
            request.wait_s, answer, lambda r: r.policy_version <= request.after_version and not self.finished
        )

    async def Leave(self, request, context):
        await self.admission.checked("Leave", request, context, validate.signed_only)
        with self.store.tx():
            returned = self.leases.give_back_all(request.auth.node_id)
            self.members.leave(request.auth.node_id)
        if returned:
            self.polls.notify()
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

    async def Lease(self, request, context):
        await self.admission.checked("Lease", request, context, validate.lease)
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
        with self.leases.line.asking(request.auth.node_id):
            return await self.polls.hold_wait_reply(
                request.wait_s, answer, lambda r: r.status == swarm_pb2.LEASE_WAIT and self.version == first
            )

    async def _lease(self, request, context):
        v = self.version
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
        too_old = self.leases.too_old(request.policy_version)
        if too_old:
            reply.status, reply.retry_after_s, reply.message = swarm_pb2.LEASE_RESYNC, 0.0, too_old
            reply.policy.CopyFrom(self.policy_state())
            return reply
        lease = self.leases.grant(request.auth.node_id, request.policy_version, request.max_prompts)
        if isinstance(lease, Refusal):
            reply.status, reply.retry_after_s, reply.message = (
                lease.status,
                lease.retry_after_s,
                lease.message,
            )
            return reply
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

    def _refused_submit(self, refusal: Refusal) -> swarm_pb2.SubmitReply:
        reply = swarm_pb2.SubmitReply(status=refusal.status, message=refusal.message)
        if refusal.status == swarm_pb2.SUBMIT_STALE:
            reply.policy.CopyFrom(self.policy_state())
        return reply

    async def Submit(self, request, context):
        lease = self.store.lease(request.lease_id)
        mine = lease is not None and lease.node_id == request.auth.node_id
        leased = set(lease.prompt_indices) if mine else set()
        check = (lambda r, lim: validate.submit(r, lim, leased)) if mine else validate.signed_only
        await self.admission.checked("Submit", request, context, check)
        if not mine:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"lease {request.lease_id[:24]} is not yours: ask for a new lease"
            )
        if request.policy_version != lease.policy_version:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"policy_version {request.policy_version} differs from the lease's {lease.policy_version}; sample with the leased version",
            )
        refused = self.leases.closed(lease)
        if refused is not None:
            return self._refused_submit(refused)
        groups = [Group(g.prompt_index, completion_ids(g), behavior_logprobs(g)) for g in request.groups]
        try:  # off the event loop: other RPCs go on meanwhile
            rewards = await self.scorer.score(
                [(self.store.prompt(g.prompt_index)[0], g.completions) for g in groups]
            )
        except OverBudget as e:
            if self.store.lease(request.lease_id).state == "open":  # not expired and leased out meanwhile
                self.leases.give_back(lease)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        lease = self.store.lease(request.lease_id)  # it may have expired, or been submitted, meanwhile
        refused = self.leases.closed(lease)
        if refused is not None:
            return self._refused_submit(refused)
        self.leases.accept(lease, groups, rewards, request.generation_s)
        reply = swarm_pb2.SubmitReply(status=swarm_pb2.SUBMIT_ACCEPTED, accepted_groups=len(groups))
        for r in rewards:
            reply.rewards.add(rewards=r)
        reply.policy.CopyFrom(self.policy_state())
        return reply

    # ------------------------------------------------------------------ training

    async def TrainBatch(self, request, context):
        await self.admission.checked("TrainBatch", request, context, validate.train_batch)
        if not self.members.is_trainer(request.auth.node_id):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "this node was not granted the train role (the coordinator grants it at Join while the run "
                f"has fewer than max_trainers={self.cfg.max_trainers} live trainers); it may roll out",
            )

        async def answer():
            return self._train_batch_reply(
                request.auth.node_id,
                self.steps.train_batch(
                    request.auth.node_id,
                    request.step,
                    request.device,
                    list(request.missing_node_ids),
                    request.failed_attempt,
                ),
            )

        return await self.polls.hold_wait_reply(
            request.wait_s, answer, lambda r: r.status == swarm_pb2.BATCH_WAIT
        )

    def _train_batch_reply(self, node_id: str, a: Answer) -> swarm_pb2.TrainBatchReply:
        reply = swarm_pb2.TrainBatchReply(step=a.version, status=a.status, message=a.message)
        reply.retry_after_s = a.retry_after_s
        if a.status == swarm_pb2.BATCH_RESYNC:
            reply.policy.CopyFrom(self.policy_state())
        if a.status != swarm_pb2.BATCH_READY:
            return reply
        team = a.team
        reply.attempt, reply.shard_index = team.attempt, team.members.index(node_id)
        nodes = {n["node_id"]: n for n in self.store.nodes()}
        for m in team.members:
            reply.workers.add(node_id=m, peer_id=nodes[m]["peer_id"], peer_addrs=nodes[m]["peer_addrs"])
        by_id = {r.id: r for r in a.batch}
        for rid in team.shards[node_id]:
            r = by_id[rid]
            add_train_group(reply, r, self.store.prompt(r.prompt_index)[1])
        return reply

    async def ReportStep(self, request, context):
        await self.admission.checked("ReportStep", request, context, validate.step_report)
        # Workers' weights and training states are bitwise equal, so are their files: they agree on
        # the hashes and sizes of all three.
        agreed_on = (request.weight_hash, *(getattr(request, f) for f in MANIFEST))
        a = self.steps.report(
            request.auth.node_id,
            request.step,
            request.attempt,
            agreed_on,
            dict(request.metrics),
            set_aside=list(request.set_aside_prompts),
        )
        return swarm_pb2.StepReply(status=a.status, policy_version=a.version, message=a.message)
