"""The rollout role: lease → generate G each → submit, until the run finishes or the node stops.

It owns the node's rollout engine and keeps it at the run's newest policy (`WeightSync`); the
client signs each submission, and the coordinator scores the completions itself.
"""

from __future__ import annotations

import logging
import time

import grpc

from swarmgrpo.node.engines.base import Engine, SamplingParams
from swarmgrpo.node.engines.choose import build_engine
from swarmgrpo.node.joined import LONG_POLL_S, Joined, load_run_model
from swarmgrpo.node.weight_sync import WeightSync
from swarmgrpo.p2p.weights import FP8, dequantized, views
from swarmgrpo.protocol import swarm_pb2
from swarmgrpo.protocol.client import CoordinatorError
from swarmgrpo.trainer.rollouts import submission, wire_tokens

log = logging.getLogger("swarmgrpo.node")


class RolloutRole:
    name = "rollout"

    def __init__(self, joined: Joined, engine: Engine):
        self.joined = joined
        self.client = joined.client
        self.progress = joined.progress
        self.engine = engine
        self.weights = WeightSync(joined, self._load_weights, fp8=self._wants_fp8())

    @classmethod
    def start(cls, joined: Joined) -> RolloutRole:
        """The node's engine for the run's model (a vLLM engine loads the model itself: no
        transformers copy beside it)."""
        engine = build_engine(
            joined.opts.engine or joined.cfg.engine,
            joined.cfg,
            lambda: load_run_model(joined),
            joined.opts.threads,
        )
        return cls(joined, engine)

    def close(self) -> None:
        self.engine.close()

    def _wants_fp8(self) -> bool:
        fmt = self.joined.opts.weights_format
        if fmt == "auto":
            return self.engine.quantization == FP8
        return fmt == FP8

    def _load_weights(self, data: bytes) -> None:
        self.engine.load_weights(dequantized(views(data)))

    def run(self) -> None:
        """Take the run's published weights (if it has published any), then lease and roll out."""
        if self.joined.policy_at_join > 0:
            self.weights.sync(self.client.policy())
        stop = self.joined.stop
        while not stop.is_set():
            lease = self.client.lease(self.progress.version, self.joined.opts.max_prompts, wait_s=LONG_POLL_S)
            if lease.status == swarm_pb2.LEASE_FINISHED:
                return
            if lease.status == swarm_pb2.LEASE_RESYNC:
                self.weights.sync(lease.policy)
                continue
            if lease.status == swarm_pb2.LEASE_WAIT:
                self.progress.activity = "waiting"
                self.joined.wait(lease.retry_after_s)
                self.weights.catch_up()
                continue
            try:
                reply = self.client.submit(self.generate(lease))
            except CoordinatorError as e:
                if e.code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
                # scoring it took more CPU than the run allows: the prompts went to other nodes
                log.warning("submission refused: %s", e)
                continue
            self._log_submission(lease, reply)
            if reply.policy.policy_version > self.progress.version:
                self.weights.sync(reply.policy)

    def _log_submission(self, lease: swarm_pb2.LeaseReply, reply: swarm_pb2.SubmitReply) -> None:
        if reply.status == swarm_pb2.SUBMIT_ACCEPTED:
            rewards = [r for g in reply.rewards for r in g.rewards]
            log.info(
                "policy %d: %d groups accepted, mean reward %.3f, %.0f tok/s",
                lease.policy_version,
                reply.accepted_groups,
                sum(rewards) / len(rewards),
                self.progress.tokens_per_s,
            )
        else:
            log.info("submission %s: %s", swarm_pb2.SubmitStatus.Name(reply.status), reply.message)

    def generate(self, lease: swarm_pb2.LeaseReply) -> swarm_pb2.SubmitRequest:
        self.progress.activity = "generating"
        s = lease.sampling
        params = SamplingParams(s.max_tokens, s.temperature, s.top_p, s.top_k, seed=s.seed)
        prompts = [list(p.token_ids) for p in lease.prompts]
        t0 = time.perf_counter()
        outs = self.engine.generate(prompts, lease.group_size, params)
        elapsed = time.perf_counter() - t0
        req = submission(lease, outs, elapsed)
        tokens = wire_tokens(req.groups)
        self.progress.tokens_per_s = tokens / elapsed if elapsed > 0 else 0.0
        return req
