"""`swarmgrpo node`: a volunteer's daemon.

    probe hardware → load key → start libp2p host → join → join the run's hivemind DHT and announce
    → load the run's model → heartbeats + DHT announcements (thread)
    → loop { rollout: lease → generate G each → score → sign → submit
           | train:   batch → GRPO step → publish weights → report }
    → leave (open leases go back to the pool)

Ctrl-C / SIGTERM finish the current call and leave cleanly; `kill -9` loses nothing the
coordinator already accepted (its lease simply expires and the prompts go to another node).
"""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import torch
from safetensors.torch import load_file

import swarmgrpo
from swarmgrpo.core.configtree import from_dict
from swarmgrpo.core.device import probe, resolve_device
from swarmgrpo.core.errors import UserError
from swarmgrpo.node.engines.base import Engine, SamplingParams
from swarmgrpo.node.engines.choose import build_engine
from swarmgrpo.p2p import train_state
from swarmgrpo.p2p.allreduce import AllReduceError, Member
from swarmgrpo.p2p.gradients import GradientAverager
from swarmgrpo.p2p.host import PeerHost, nodes_key
from swarmgrpo.p2p.train_state import TrainStateServer
from swarmgrpo.p2p.weight_transfer import P2PWeights
from swarmgrpo.p2p.weights import (
    FP8,
    FileWeights,
    WeightError,
    WeightTransport,
    copy_weights,
    dequantized,
    encode_model,
    load_into,
    to_fp8,
    views,
)
from swarmgrpo.protocol import PROTOCOL_VERSION, swarm_pb2
from swarmgrpo.protocol.client import CoordinatorClient, CoordinatorError, CoordinatorUnreachable
from swarmgrpo.protocol.dhtrecords import sign_node_record
from swarmgrpo.protocol.signing import NodeKey
from swarmgrpo.trainer.checkpoint import (
    CheckpointError,
    TrainerState,
    latest_checkpoint,
    load_trainer_state,
    node_checkpoints,
    save_checkpoint,
)
from swarmgrpo.trainer.config import TrainConfig
from swarmgrpo.trainer.models import load_model, model_device
from swarmgrpo.trainer.rollouts import group_from_wire, submission, wire_tokens
from swarmgrpo.trainer.step import GRPOStep

log = logging.getLogger("swarmgrpo.node")
# How many a node keeps is the run's save_total_limit; where they go is the volunteer's.
NODE_CHECKPOINT_FIX = "Free space on that disk, or start the node with --state-dir on another"
ROLES = {"rollout": swarm_pb2.ROLE_ROLLOUT, "train": swarm_pb2.ROLE_TRAIN}
# A node with nothing to do lets the coordinator hold its Lease / TrainBatch call this long: the
# answer comes the moment work or a new policy appears (no polling delay), and SIGTERM is
# honoured at the latest this long after it arrives.
LONG_POLL_S = 5.0


@dataclass
class NodeOptions:
    join: str
    token: str
    roles: str = "auto"
    state_dir: str = "~/.cache/swarmgrpo/node"
    weights_dir: str = ""
    """Folder shared by all nodes for weight files (the file transport); empty = libp2p."""
    weights_dtype: str = "bfloat16"
    max_prompts: int = 2
    threads: int = 0
    engine: str = ""
    """Rollout engine of this node ("auto", "vllm", "transformers"); empty = the run config's."""
    device: str = ""
    """Where this node trains or runs the transformers engine ("auto", "cpu", "cuda"); empty = the
    run config's `device`."""
    weights_format: str = "auto"
    """What a rollout node fetches when the run ships FP8 weights (`weights_fp8`): "fp8" (~0.6x the
    bytes; rollouts from FP8-rounded weights, which the importance weight corrects), "bf16" (the
    transfer encoding), or "auto": fp8 when this node's rollouts run in FP8 anyway (vLLM on an FP8
    GPU), else bf16. Trainers always fetch the transfer encoding."""
    initial_peers: list[str] = field(default_factory=list)
    p2p_listen: list[str] = field(default_factory=lambda: ["/ip4/0.0.0.0/tcp/0"])
    """libp2p listen multiaddrs of the weight server (loopback only: /ip4/127.0.0.1/tcp/0)."""
    coordinator_patience_s: float = math.inf
    """How long the node waits for a coordinator that does not answer (restarting, or the network is
    down) before it leaves; it retries every few seconds meanwhile. Default: as long as it takes."""


class Node:
    def __init__(self, opts: NodeOptions):
        self.opts = opts
        self.state_dir = Path(opts.state_dir).expanduser()
        self.key = NodeKey.load_or_create(self.state_dir / "node.key")
        self.stop = threading.Event()
        self.client = CoordinatorClient(
            opts.join, self.key, opts.coordinator_patience_s, self.stop, busy_patience_s=math.inf
        )
        self.version = 0
        self.activity = "starting"
        self.tokens_per_s = 0.0
        self.transport: WeightTransport | None = None
        self.host: PeerHost | None = None
        self.run_id = ""
        self.role = ""
        self.resume_from: Path | None = None
        self.averager: GradientAverager | None = None
        self.attempt = 0
        self.step: GRPOStep | None = None
        self.train_lock = threading.Lock()  # held while a step is in flight: no snapshot of it
        self.snapshot_wanted = threading.Event()
        self.pending_state: dict | None = None  # a fetched training state for the step to load
        self.state_server: TrainStateServer | None = None
        self.model: torch.nn.Module | None = None  # the trainer's, or the transformers engine's
        self.engine: Engine | None = None  # rollout role only

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> None:
        caps = probe()
        if self.opts.threads:
            torch.set_num_threads(self.opts.threads)
        roles = [] if self.opts.roles == "auto" else [ROLES[r] for r in self.opts.roles.split(",")]
        self.host = PeerHost(self.opts.p2p_listen, self.opts.initial_peers)
        self.transport = self._transport()
        reply = self.client.join(
            swarm_pb2.JoinRequest(
                protocol_version=PROTOCOL_VERSION,
                join_token=self.opts.token,
                capabilities=swarm_pb2.Capabilities(**caps),
                roles=roles,
                peer_id=self.host.peer_id,
                peer_addrs=self.host.addrs,
                software_version=swarmgrpo.__version__,
            )
        )
        import tomllib

        self.cfg = from_dict(TrainConfig, tomllib.loads(reply.run_config_toml)["train"])
        role = self.role = "train" if swarm_pb2.ROLE_TRAIN in reply.roles else "rollout"
        self.run_id = reply.run_id
        reached = self.host.join_dht(list(reply.initial_peers) + list(self.opts.initial_peers))
        if isinstance(self.transport, P2PWeights):
            self.transport.run_id = reply.run_id  # announce held weights in the DHT from now on
        self._announce(reply.heartbeat_interval_s)
        log.info(
            "joined run '%s' as node %s (%s) at policy %d; DHT peer %s via %d bootstrap peers",
            reply.run_id,
            self.key.node_id[:8],
            role,
            reply.policy_version,
            self.host.peer_id[:12],
            reached,
        )
        torch.manual_seed(self.cfg.seed)
        try:
            # Inside the try: a model or engine this node cannot run (a device it lacks, say) still
            # says goodbye to the coordinator before the error reaches the volunteer.
            reason = "could not start its model or engine"
            if role == "train":
                self._load_model()
            else:  # a vLLM engine loads the model itself: no transformers copy beside it
                self.engine = build_engine(
                    self.opts.engine or self.cfg.engine, self.cfg, self._load_model, self.opts.threads
                )
            reason = "stopped"
            # Heartbeats from here: a trainer still loading its model does not count as a ready worker.
            beat = threading.Thread(target=self._heartbeats, args=(reply.heartbeat_interval_s,), daemon=True)
            beat.start()
            if role == "train":
                self.state_server = TrainStateServer(self.host, self._snapshot)
            if reply.policy_version > 0:
                policy = self.client.policy()
                if role == "train":
                    self.resume_from = self._own_checkpoint(policy)
                    if self.resume_from is None:
                        self._sync_trainer(policy)
                else:
                    self.sync(policy)
            (self.train_loop if role == "train" else self.rollout_loop)()
            reason = "finished" if not self.stop.is_set() else "stopped"
        finally:
            self.stop.set()
            try:
                returned = self.client.leave(reason).returned_prompts
                log.info("left the run (%s); %d leased prompts returned", reason, returned)
            except Exception as e:  # leaving is best effort: the leases expire anyway
                log.warning("could not say goodbye to the coordinator: %s", e)
            self.transport.close()
            if self.engine is not None:
                self.engine.close()
            if self.averager is not None:
                self.averager.close()
            if self.state_server is not None:
                self.state_server.close()
            self.host.close()
            self.client.close()

    def _device(self) -> str:
        return model_device(self.model).type

    def _load_model(self):
        """The run's model for training or the transformers engine, on this node's device."""
        device = resolve_device(self.opts.device or self.cfg.device)
        model, self.tokenizer = load_model(self.cfg.model, seed=self.cfg.seed)
        self.model = model.to(device)
        log.info("model %s on %s", self.cfg.model, device)
        return self.model, self.tokenizer

    def _transport(self) -> WeightTransport:
        if self.opts.weights_dir:
            return FileWeights(self.opts.weights_dir)
        return P2PWeights(self.host)

    def _announce(self, interval: float) -> None:
        """This node's record in the run's DHT; it expires 3 intervals after the last announcement."""
        record = {
            "peer_id": self.host.peer_id,
            "addrs": self.host.addrs,
            "role": self.role,
            "policy_version": self.version,
            "activity": self.activity,
            "tokens_per_s": round(float(self.tokens_per_s), 1),
        }
        signed = sign_node_record(self.key, self.run_id, record, ttl=3 * interval)  # readers check it
        try:
            self.host.announce(nodes_key(self.run_id), self.key.node_id, signed, ttl=3 * interval)
        except Exception as e:  # the coordinator's heartbeat is what keeps a node in the run
            log.warning("DHT announcement failed: %s", e)

    def _heartbeats(self, interval: float) -> None:
        while not self.stop.wait(interval):
            try:
                self.client.heartbeat(self.version, self.activity, self.tokens_per_s)
            except Exception as e:
                log.warning("heartbeat failed: %s", e)
            self._announce(interval)

    def _wait(self, seconds: float) -> None:
        self.stop.wait(seconds)

    # ------------------------------------------------------------------ weights

    def sync(self, policy: swarm_pb2.PolicyState, force: bool = False) -> bool:
        """Load the newest published version from a peer that holds it; False (logged) if none could
        serve it now: the caller goes on and asks again, when the coordinator may name other holders."""
        if (policy.policy_version == self.version and not force) or policy.finished:
            return True
        self.activity = "syncing"
        t0 = time.perf_counter()
        fp8 = self.role != "train" and self._wants_fp8() and bool(policy.weight_hash_fp8)
        sha = policy.weight_hash_fp8 if fp8 else policy.weight_hash
        size = policy.weight_bytes_fp8 if fp8 else policy.weight_bytes
        try:
            data = self.transport.fetch(policy.policy_version, sha, policy.holders, FP8 if fp8 else "", size)
        except WeightError as e:
            log.warning("%s; retrying", e)
            self._wait(1.0)
            return False
        # The transport checked the bytes against the published sha256.
        if self.role == "train":
            load_into(self.model, data)
        else:
            self.engine.load_weights(dequantized(views(data)))
        self.transport.publish(policy.policy_version, data, sha)  # now a holder too
        self.version = policy.policy_version
        log.info(
            "synced to policy %d (%s%.1f MB in %.2f s)",
            self.version,
            "block FP8, " if fp8 else "",
            len(data) / 1e6,
            time.perf_counter() - t0,
        )
        return True

    def _wants_fp8(self) -> bool:
        if self.opts.weights_format == "auto":
            return self.engine.quantization == FP8
        return self.opts.weights_format == FP8

    def _average(self, step: GRPOStep, reply: swarm_pb2.TrainBatchReply, groups) -> dict | None:
        """All-reduce this shard's gradient with the step's other workers; on a failure, tell the
        coordinator who was missing and go again with the workers it names. None: dropped."""
        if self.averager is None:
            self.averager = GradientAverager(
                self.host,
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
        while not self.stop.is_set():
            members = [Member(w.peer_id, tuple(w.peer_addrs)) for w in reply.workers]
            round_id = f"{self.run_id}/{self.version}/{reply.attempt}"
            try:
                stats = step.reduce(self.averager.average, round_id, members, reply.shard_index, weight)
                stats["workers"] = float(len(members))
                return stats
            except AllReduceError as e:
                missing = [reply.workers[i].node_id for i in e.missing]
                log.warning("step %d attempt %d: all-reduce failed (%s)", self.version, reply.attempt, e)
                reply = self.client.train_batch(self.version, reply.attempt, missing, device=self._device())
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
            log.warning("step %d: set aside prompts %s: loss or gradient not finite", self.version, prompts)
        return prompts

    def _await_publication(self, sha: str) -> swarm_pb2.StepReply:
        """The other workers of the step have not all reported yet: wait for the version."""
        target = self.version + 1
        deadline = time.monotonic() + 120.0
        while not self.stop.is_set() and time.monotonic() < deadline:
            policy = self.client.policy(after_version=self.version, wait_s=LONG_POLL_S)
            if policy.policy_version >= target:
                if policy.policy_version == target and policy.weight_hash == sha:
                    return swarm_pb2.StepReply(status=swarm_pb2.STEP_PUBLISHED, policy_version=target)
                return swarm_pb2.StepReply(
                    status=swarm_pb2.STEP_REJECTED,
                    message=f"version {target} was published with other weights",
                )
            self._wait(0.2)
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
            if self.step is None or self.version != version:
                return None  # the state of another version would not hash to the one agreed for this
            return train_state.pack(self._training_state(self.version))
        finally:
            self.train_lock.release()

    def _sync_trainer(self, policy: swarm_pb2.PolicyState) -> bool:
        """Take the training state the run's version was published with (its `state_hash`) from
        another worker; failing that, the weights with a fresh optimizer state (logged: this replica
        will then differ)."""
        deadline = time.monotonic() + 60.0
        while True:  # workers serve their state only between steps: ask again for a while
            if policy.finished:
                return True
            try:
                state = train_state.fetch(
                    self.host, policy.holders, policy.policy_version, policy.state_hash, policy.state_bytes
                )
                break
            except WeightError as e:
                if not policy.state_hash or time.monotonic() > deadline or self.stop.is_set():
                    log.warning(
                        "%s; taking the %s weights with a fresh optimizer state", e, self.opts.weights_dtype
                    )
                    return self._fresh_start(policy)
            self._wait(0.5)
            policy = self.client.policy()
        copy_weights(self.model, state["model"])
        data, sha = encode_model(self.model, self.opts.weights_dtype)
        if sha != policy.weight_hash:
            log.warning(
                "the agreed training state of policy %d does not encode to its weight hash: taking the "
                "weights with a fresh optimizer state",
                policy.policy_version,
            )
            return self._fresh_start(policy)
        self.transport.publish(policy.policy_version, data, sha)
        self.version = policy.policy_version
        if self.step is not None:
            self.step.optimizer.load_state_dict(state["optimizer"])
            self.step.version = self.version
            if (
                state["powersgd"] is not None
                and self.averager is not None
                and self.averager.powersgd is not None
            ):
                self.averager.powersgd.load_state(state["powersgd"])
        else:
            self.pending_state = state
        log.info(
            "took the training state of policy %d that its workers agreed on from a peer (float32 "
            "weights, AdamW, PowerSGD)",
            self.version,
        )
        return True

    def _fresh_start(self, policy: swarm_pb2.PolicyState) -> bool:
        """The run's weights with a fresh optimizer state: AdamW's moments and step counts belong to
        weights this replica no longer holds, and no agreed state replaces them."""
        if not self.sync(policy, force=True):
            return False
        self.pending_state = None
        if self.step is not None:
            self.step.optimizer.state.clear()  # AdamW starts its moments again at the next step
        return True

    def _own_checkpoint(self, policy: swarm_pb2.PolicyState) -> Path | None:
        """A restarted trainer continues exactly from its own checkpoint of the run's current version
        (float32 weights, AdamW state, RNG) when it has one whose bf16 encoding is the published
        hash; otherwise it takes the peers' bf16 weights and starts a fresh optimizer state (logged)."""
        ckpt = latest_checkpoint(node_checkpoints(self.state_dir, self.run_id))
        if ckpt is None:
            return None
        state = json.loads((ckpt / "trainer_state.json").read_text())
        if state["version"] != policy.policy_version:
            log.warning(
                "checkpoint %s is of policy %d, the run is at %d: continuing from the peers' %s weights "
                "with a fresh optimizer state",
                ckpt.name,
                state["version"],
                policy.policy_version,
                self.opts.weights_dtype,
            )
            return None
        tensors = {}
        for shard in sorted(ckpt.glob("model*.safetensors")):
            tensors.update(load_file(shard))
        loaded = self.model.load_state_dict(tensors, strict=False)
        tied = {"lm_head.weight"} if getattr(self.model.config, "tie_word_embeddings", False) else set()
        if loaded.unexpected_keys or set(loaded.missing_keys) - tied:
            log.warning("checkpoint %s does not fit the run's model: syncing from peers", ckpt)
            return None
        data, sha = encode_model(self.model, self.opts.weights_dtype)
        if sha != policy.weight_hash:
            log.warning(
                "checkpoint %s does not encode to the published policy %d: syncing from peers",
                ckpt,
                state["version"],
            )
            return None
        self.version = policy.policy_version
        self.transport.publish(self.version, data, sha)  # a holder again, even if no peer kept it
        log.info("resumed from %s: float32 weights, optimizer state and RNG of policy %d", ckpt, self.version)
        return ckpt

    # ------------------------------------------------------------------ roles

    def rollout_loop(self) -> None:
        while not self.stop.is_set():
            lease = self.client.lease(self.version, self.opts.max_prompts, wait_s=LONG_POLL_S)
            if lease.status == swarm_pb2.LEASE_FINISHED:
                return
            if lease.status == swarm_pb2.LEASE_RESYNC:
                self.sync(lease.policy)
                continue
            if lease.status == swarm_pb2.LEASE_WAIT:
                self.activity = "waiting"
                self._wait(lease.retry_after_s)
                self._catch_up()
                continue
            try:
                reply = self.client.submit(self.generate(lease))
            except CoordinatorError as e:
                if e.code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
                # scoring it took more CPU than the run allows: the prompts went to other nodes
                log.warning("submission refused: %s", e)
                continue
            if reply.status == swarm_pb2.SUBMIT_ACCEPTED:
                rewards = [r for g in reply.rewards for r in g.rewards]
                log.info(
                    "policy %d: %d groups accepted, mean reward %.3f, %.0f tok/s",
                    lease.policy_version,
                    reply.accepted_groups,
                    sum(rewards) / len(rewards),
                    self.tokens_per_s,
                )
            else:
                log.info("submission %s: %s", swarm_pb2.SubmitStatus.Name(reply.status), reply.message)
            if reply.policy.policy_version > self.version:
                self.sync(reply.policy)

    def _catch_up(self) -> None:
        policy = self.client.policy()
        if policy.policy_version > self.version and policy.weight_hash:
            self.sync(policy)

    def generate(self, lease: swarm_pb2.LeaseReply) -> swarm_pb2.SubmitRequest:
        self.activity = "generating"
        s = lease.sampling
        params = SamplingParams(s.max_tokens, s.temperature, s.top_p, s.top_k, seed=s.seed)
        prompts = [list(p.token_ids) for p in lease.prompts]
        t0 = time.perf_counter()
        outs = self.engine.generate(prompts, lease.group_size, params)
        elapsed = time.perf_counter() - t0
        req = submission(lease, outs, elapsed)
        tokens = wire_tokens(req.groups)
        self.tokens_per_s = tokens / elapsed if elapsed > 0 else 0.0
        return req

    def train_loop(self) -> None:
        step = GRPOStep(self.model, self.cfg, self.tokenizer.pad_token_id)
        step.version = self.version
        if self.resume_from is not None:
            load_trainer_state(self.resume_from, step.optimizer)
        if self.pending_state is not None:
            step.optimizer.load_state_dict(self.pending_state["optimizer"])
        self.step = step
        out_dir = node_checkpoints(self.state_dir, self.run_id)
        while not self.stop.is_set():
            self.activity = "waiting for rollouts"
            reply = self.client.train_batch(self.version, wait_s=LONG_POLL_S, device=self._device())
            if reply.status == swarm_pb2.BATCH_FINISHED:
                return
            if reply.status == swarm_pb2.BATCH_RESYNC:
                self._sync_trainer(reply.policy)
                step.version = self.version
                continue
            if reply.status == swarm_pb2.BATCH_WAIT:
                self._wait(reply.retry_after_s)
                continue
            while self.snapshot_wanted.is_set() and not self.stop.is_set():
                time.sleep(0.01)  # a joining worker is copying this one's state: let it first
            with self.train_lock:
                self._train_step(step, reply, out_dir)

    def _train_step(self, step: GRPOStep, reply: swarm_pb2.TrainBatchReply, out_dir: Path) -> None:
        """One step on this worker's shard: gradient, all-reduce with the step's other workers, AdamW,
        publish and report; on a rejection, back to the run's weights."""
        self.activity = "training"
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
        staleness = [self.version - g.policy_version for g in groups]
        metrics["staleness_mean"] = sum(staleness) / len(staleness)
        data, sha = encode_model(self.model, self.opts.weights_dtype)
        fp8 = to_fp8(data) if self.cfg.weights_fp8 else None  # for nodes that roll out in FP8
        self.transport.publish(self.version + 1, data, sha, fp8=fp8)
        state_hash, state_bytes = train_state.state_digest(self._training_state(self.version + 1))
        metrics = {k: float(v) for k, v in metrics.items()}
        result = self.client.report_step(
            self.version,
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
        if result.status != swarm_pb2.STEP_PUBLISHED:
            # The weights just stepped are not the run's: take the run's current version.
            log.warning("step %d not published: %s", self.version, result.message)
            while not self.stop.is_set() and not self._sync_trainer(self.client.policy()):
                pass
            step.version = self.version
            return
        self.version = step.version = result.policy_version
        log.info(
            "step %d → policy %d: reward %.3f±%.3f loss %+.4f staleness %.1f train %.1fs",
            self.version - 1,
            self.version,
            metrics["reward_mean"],
            metrics["reward_std"],
            metrics["loss"],
            metrics["staleness_mean"],
            metrics["train_s"],
        )
        if (
            self.cfg.save_steps and self.version % self.cfg.save_steps == 0
        ) or self.version >= self.cfg.max_steps:
            try:
                path = save_checkpoint(
                    out_dir,
                    self.model,
                    self.tokenizer,
                    step.optimizer,
                    self.cfg,
                    TrainerState(self.version, self.version, 0),
                    keep=self.cfg.save_total_limit,
                    fix=NODE_CHECKPOINT_FIX,
                )
                log.info("checkpoint %s", path)
            except CheckpointError as e:
                # The version is published and its weights held: only a fast restart is lost (a
                # restarted node syncs from its peers instead), so the node trains on.
                log.error("%s. Training goes on without it.", e)


def main(opts: NodeOptions) -> None:
    node = Node(opts)

    def _stop(signum, frame):
        log.info("signal %d: finishing the current call, then leaving", signum)
        node.stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        node.run()
    except CoordinatorUnreachable as e:
        if not e.stopped:
            raise UserError(str(e)) from None
        log.info("%s; left without a goodbye (the coordinator expires the leases)", e)
    except CoordinatorError as e:  # a refusal the node cannot act on (a full train role, a bad token)
        raise UserError(str(e)) from None
