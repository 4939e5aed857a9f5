"""The train role, a gradient worker: TrainBatch → gradient on this worker's shard → all-reduce with the
step's other workers → AdamW → publish the weights and report their hash → await publication.

It owns the trainer's model, its `GRPOStep` (optimizer) and `GradientAverager` (PowerSGD state), and
serves its exact training state to joining workers between steps (`TrainStateServer`); how it takes
the run's state when it starts or falls behind is `weight_sync.TrainStateSync`'s.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from swarmgrpo.node.joined import LONG_POLL_S, Joined, load_run_model
from swarmgrpo.node.weight_sync import TrainStateSync, WeightSync
from swarmgrpo.p2p import train_state
from swarmgrpo.p2p.allreduce import AllReduceError, Member
from swarmgrpo.p2p.gradients import GradientAverager
from swarmgrpo.p2p.train_state import TrainStateServer
from swarmgrpo.p2p.weights import encode_model, load_into, to_fp8
from swarmgrpo.protocol import swarm_pb2
from swarmgrpo.trainer.checkpoint import (
    CheckpointError,
    TrainerState,
    load_trainer_state,
    node_checkpoints,
    save_checkpoint,
)
from swarmgrpo.trainer.models import model_device
from swarmgrpo.trainer.rollouts import group_from_wire
from swarmgrpo.trainer.step import GRPOStep

log = logging.getLogger("swarmgrpo.node")
# How many a node keeps is the run's save_total_limit; where they go is the volunteer's.
NODE_CHECKPOINT_FIX = "Free space on that disk, or start the node with --state-dir on another"
PUBLICATION_PATIENCE_S = 120.0


class TrainRole:
    name = "train"

    def __init__(self, joined: Joined, model, tokenizer):
        self.joined = joined
        self.client = joined.client
        self.progress = joined.progress
        self.cfg = joined.cfg
        self.model = model
        self.tokenizer = tokenizer
        self.step: GRPOStep | None = None
        self.averager: GradientAverager | None = None
        self.attempt = 0
        self.resume_from: Path | None = None
        self.pending_state: dict | None = None  # a fetched training state for the step to load
        self.train_lock = threading.Lock()  # held while a step is in flight: no snapshot of it
        self.snapshot_wanted = threading.Event()
        self.state_server: TrainStateServer | None = None
        self.weights = WeightSync(joined, lambda data: load_into(self.model, data))
        self.state = TrainStateSync(joined, model, self.weights, self._adopt)

    @classmethod
    def start(cls, joined: Joined) -> TrainRole:
        return cls(joined, *load_run_model(joined))

    def close(self) -> None:
        if self.averager is not None:
            self.averager.close()
        if self.state_server is not None:
            self.state_server.close()

    def run(self) -> None:
        """Serve this worker's state, take the run's (if it has published any), then train."""
        self.state_server = TrainStateServer(self.joined.host, self._snapshot)
        if self.joined.policy_at_join > 0:
            policy = self.client.policy()
            self.resume_from = self.state.own_checkpoint(policy)
            if self.resume_from is None:
                self.state.sync(policy)
        self._train_loop()

    def _adopt(self, state: dict | None) -> None:
        """The optimizer (and PowerSGD) state of the weights just taken; None: a fresh one."""
        if state is None:
            self.pending_state = None
            if self.step is not None:
                self.step.optimizer.state.clear()  # AdamW starts its moments again at the next step
            return
        if self.step is None:
            self.pending_state = state
            return
        self.step.optimizer.load_state_dict(state["optimizer"])
        self.step.version = self.progress.version
        if state["powersgd"] is not None and self.averager is not None and self.averager.powersgd is not None:
            self.averager.powersgd.load_state(state["powersgd"])

    def _device(self) -> str:
        return model_device(self.model).type

    def _train_loop(self) -> None:
        step = GRPOStep(self.model, self.cfg, self.tokenizer.pad_token_id)
        step.version = self.progress.version
        if self.resume_from is not None:
            load_trainer_state(self.resume_from, step.optimizer)
        if self.pending_state is not None:
            step.optimizer.load_state_dict(self.pending_state["optimizer"])
        self.step = step
        out_dir = node_checkpoints(self.joined.state_dir, self.joined.run_id)
        stop = self.joined.stop
        while not stop.is_set():
            self.progress.activity = "waiting for rollouts"
            reply = self.client.train_batch(self.progress.version, wait_s=LONG_POLL_S, device=self._device())
            if reply.status == swarm_pb2.BATCH_FINISHED:
                return
            if reply.status == swarm_pb2.BATCH_RESYNC:
                self.state.sync(reply.policy)
                step.version = self.progress.version
                continue
            if reply.status == swarm_pb2.BATCH_WAIT:
                self.joined.wait(reply.retry_after_s)
                continue
            while self.snapshot_wanted.is_set() and not stop.is_set():
                time.sleep(0.01)  # a joining worker is copying this one's state: let it first
            with self.train_lock:
                self._train_step(step, reply, out_dir)

    def _train_step(self, step: GRPOStep, reply: swarm_pb2.TrainBatchReply, out_dir: Path) -> None:
        """One step on this worker's shard: gradient, all-reduce with the step's other workers, AdamW,
        publish and report; on a rejection, back to the run's weights."""
        self.progress.activity = "training"
        t0 = time.perf_counter()
        self.attempt = reply.attempt
        groups = [group_from_wire(g) for g in reply.groups]
        metrics = step.compute_gradients(groups)
        set_aside = self._set_aside(step, reply)
        metrics["shard_weight"] = step.shard_weight(groups)  # how the coordinator combines the shards' loss
        if len(reply.workers) > 1:
            stats = self._average(step, reply, groups)
            if stats is None:  # dropped from the step: its gradient is not wanted any more
                step.discard()
                return
            metrics.update(stats)
        metrics.update(step.apply())
        metrics["train_s"] = time.perf_counter() - t0
        staleness = [self.progress.version - g.policy_version for g in groups]
        metrics["staleness_mean"] = sum(staleness) / len(staleness)
        metrics = {k: float(v) for k, v in metrics.items()}
        result = self._publish_and_report(metrics, set_aside)
        if result.status != swarm_pb2.STEP_PUBLISHED:
            # The weights just stepped are not the run's: take the run's current version.
            log.warning("step %d not published: %s", self.progress.version, result.message)
            while not self.joined.stop.is_set() and not self.state.sync(self.client.policy()):
                pass
            step.version = self.progress.version
            return
        self.progress.version = step.version = result.policy_version
        self._log_step(metrics)
        self._checkpoint(step, out_dir)

    def _publish_and_report(self, metrics: dict, set_aside: list[int]) -> swarm_pb2.StepReply:
        """Serve the stepped weights (and their FP8 encoding) as the next version, report their hash
        and that of the training state, and wait for the step's other workers if they have not all
        reported."""
        version = self.progress.version
        data, sha = encode_model(self.model, self.joined.opts.weights_dtype)
        fp8 = to_fp8(data) if self.cfg.weights_fp8 else None  # for nodes that roll out in FP8
        self.joined.transport.publish(version + 1, data, sha, fp8=fp8)
        state_hash, state_bytes = train_state.state_digest(self._training_state(version + 1))
        result = self.client.report_step(
            version,
            sha,
            metrics,
            attempt=self.attempt,
            weight_hash_fp8=fp8[1] if fp8 else "",
            set_aside_prompts=set_aside,
            weight_bytes=len(data),
            weight_bytes_fp8=len(fp8[0]) if fp8 else 0,
            state_hash=state_hash,
            state_bytes=state_bytes,
        )
        if result.status == swarm_pb2.STEP_PENDING:
            result = self._await_publication(sha)
        return result

    def _log_step(self, metrics: dict) -> None:
        log.info(
            "step %d → policy %d: reward %.3f±%.3f loss %+.4f staleness %.1f train %.1fs",
            self.progress.version - 1,
            self.progress.version,
            metrics["reward_mean"],
            metrics["reward_std"],
            metrics["loss"],
            metrics["staleness_mean"],
            metrics["train_s"],
        )

    def _checkpoint(self, step: GRPOStep, out_dir: Path) -> None:
        version = self.progress.version
        if not (
            (self.cfg.save_steps and version % self.cfg.save_steps == 0) or version >= self.cfg.max_steps
        ):
            return
        try:
            path = save_checkpoint(
                out_dir,
                self.model,
                self.tokenizer,
                step.optimizer,
                self.cfg,
                TrainerState(version, version, 0),
                keep=self.cfg.save_total_limit,
                fix=NODE_CHECKPOINT_FIX,
            )
            log.info("checkpoint %s", path)
        except CheckpointError as e:
            # The version is published and its weights held: only a fast restart is lost (a
            # restarted node syncs from its peers instead), so the node trains on.
            log.error("%s. Training goes on without it.", e)

    def _average(self, step: GRPOStep, reply: swarm_pb2.TrainBatchReply, groups) -> dict | None:
        """All-reduce this shard's gradient with the step's other workers; on a failure, tell the
        coordinator who was missing and go again with the workers it names. None: dropped."""
        if self.averager is None:
            self.averager = GradientAverager(
                self.joined.host,
                self.model,
                self.cfg.grad_compression,
                self.cfg.powersgd_rank,
                timeout=self.cfg.allreduce_timeout_s,
                error_feedback=self.cfg.grad_error_feedback,
            )
            psgd_state = (self.pending_state or {}).get("powersgd")
            if psgd_state is not None and self.averager.powersgd is not None:
                self.averager.powersgd.load_state(psgd_state)
        weight = step.shard_weight(groups)
        version = self.progress.version
        while not self.joined.stop.is_set():
            members = [Member(w.peer_id, tuple(w.peer_addrs)) for w in reply.workers]
            round_id = f"{self.joined.run_id}/{version}/{reply.attempt}"
            try:
                stats = step.reduce(self.averager.average, round_id, members, reply.shard_index, weight)
                stats["workers"] = float(len(members))
                return stats
            except AllReduceError as e:
                missing = [reply.workers[i].node_id for i in e.missing]
                log.warning("step %d attempt %d: all-reduce failed (%s)", version, reply.attempt, e)
                reply = self.client.train_batch(version, reply.attempt, missing, device=self._device())
                if reply.status != swarm_pb2.BATCH_READY:
                    return None
                self.attempt = reply.attempt
                if len(reply.workers) == 1:
                    return {"workers": 1.0}
        return None

    def _set_aside(self, step: GRPOStep, reply: swarm_pb2.TrainBatchReply) -> list[int]:
        """The prompts of the groups the step set aside (the coordinator names who sent them)."""
        prompts = [reply.groups[i].prompt_index for i in step.set_aside]
        if prompts:
            log.warning(
                "step %d: set aside prompts %s: loss or gradient not finite", self.progress.version, prompts
            )
        return prompts

    def _await_publication(self, sha: str) -> swarm_pb2.StepReply:
        """The other workers of the step have not all reported yet: wait for the version."""
        version = self.progress.version
        target = version + 1
        deadline = time.monotonic() + PUBLICATION_PATIENCE_S
        while not self.joined.stop.is_set() and time.monotonic() < deadline:
            policy = self.client.policy(after_version=version, wait_s=LONG_POLL_S)
            if policy.policy_version >= target:
                if policy.policy_version == target and policy.weight_hash == sha:
                    return swarm_pb2.StepReply(status=swarm_pb2.STEP_PUBLISHED, policy_version=target)
                return swarm_pb2.StepReply(
                    status=swarm_pb2.STEP_REJECTED,
                    message=f"version {target} was published with other weights",
                )
            self.joined.wait(0.2)
        return swarm_pb2.StepReply(
            status=swarm_pb2.STEP_REJECTED, message="the step was not published in time"
        )

    def _training_state(self, version: int) -> dict:
        """This worker's state as `train_state.pack` takes it (call with train_lock held)."""
        psgd = self.averager.powersgd if self.averager is not None else None
        return {
            "version": version,
            "model": self.model.state_dict(),
            "optimizer": self.step.optimizer.state_dict(),
            "powersgd": psgd.state() if psgd is not None else None,
        }

    def _snapshot(self, version: int) -> bytes | None:
        """This worker's exact training state, if it is between steps at `version` (else None)."""
        self.snapshot_wanted.set()  # the train loop waits before its next step
        try:
            if not self.train_lock.acquire(timeout=30.0):
                return None
        finally:
            self.snapshot_wanted.clear()
        try:
            if self.step is None or self.progress.version != version:
                return None  # the state of another version would not hash to the one agreed for this
            return train_state.pack(self._training_state(self.progress.version))
        finally:
            self.train_lock.release()
