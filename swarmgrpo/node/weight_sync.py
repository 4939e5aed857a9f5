"""Taking the run's published state: the policy weights every node loads, and the exact training state
a trainer needs beside them.

`WeightSync` fetches a published version from a peer that holds it (or the shared folder), checks it
against the published hash, hands it to the role's loader (the engine, or the trainer's model) and
makes this node a holder of it too. `TrainStateSync` is a trainer's: its own checkpoint of the run's
version, else the training state the version's workers agreed on (float32 weights, AdamW, PowerSGD)
from one of them, else the run's weights with a fresh optimizer state. What the optimizer does with
a state (load it now, or keep it for the step not built yet) is the train role's: it passes `adopt`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from safetensors.torch import load_file

from swarmgrpo.node.joined import Joined
from swarmgrpo.p2p import train_state
from swarmgrpo.p2p.weights import FP8, WeightError, copy_weights, encode_model
from swarmgrpo.protocol import swarm_pb2
from swarmgrpo.trainer.checkpoint import latest_checkpoint, node_checkpoints

log = logging.getLogger("swarmgrpo.node")


class WeightSync:
    def __init__(self, joined: Joined, load: Callable[[bytes], None], fp8: bool = False):
        """`load` takes the fetched encoding into the engine or model; `fp8`: fetch the run's FP8
        weights where it ships them (a rollout node whose engine runs in FP8 anyway)."""
        self.joined = joined
        self.load = load
        self.fp8 = fp8

    def sync(self, policy: swarm_pb2.PolicyState, force: bool = False) -> bool:
        """Load the newest published version from a peer that holds it; False (logged) if none could
        serve it now: the caller goes on and asks again, when the coordinator may name other holders."""
        progress = self.joined.progress
        if (policy.policy_version == progress.version and not force) or policy.finished:
            return True
        progress.activity = "syncing"
        t0 = time.perf_counter()
        fp8 = self.fp8 and bool(policy.weight_hash_fp8)
        sha = policy.weight_hash_fp8 if fp8 else policy.weight_hash
        size = policy.weight_bytes_fp8 if fp8 else policy.weight_bytes
        transport = self.joined.transport
        try:
            data = transport.fetch(policy.policy_version, sha, policy.holders, FP8 if fp8 else "", size)
        except WeightError as e:
            log.warning("%s; retrying", e)
            self.joined.wait(1.0)
            return False
        # The transport checked the bytes against the published sha256.
        self.load(data)
        transport.publish(policy.policy_version, data, sha)  # now a holder too
        progress.version = policy.policy_version
        log.info(
            "synced to policy %d (%s%.1f MB in %.2f s)",
            progress.version,
            "block FP8, " if fp8 else "",
            len(data) / 1e6,
            time.perf_counter() - t0,
        )
        return True

    def catch_up(self) -> None:
        """Sync to the run's newest published version if it is newer than this node's."""
        policy = self.joined.client.policy()
        if policy.policy_version > self.joined.progress.version and policy.weight_hash:
            self.sync(policy)


class TrainStateSync:
    def __init__(self, joined: Joined, model, weights: WeightSync, adopt: Callable[[dict | None], None]):
        """`adopt(state)` takes the optimizer and PowerSGD state that goes with the weights just
        loaded into `model`; `adopt(None)`: a fresh optimizer state."""
        self.joined = joined
        self.model = model
        self.weights = weights
        self.adopt = adopt

    def sync(self, policy: swarm_pb2.PolicyState) -> bool:
        """Take the training state the run's version was published with (its `state_hash`) from
        another worker; failing that, the weights with a fresh optimizer state (logged: this replica
        will then differ)."""
        joined = self.joined
        deadline = time.monotonic() + 60.0
        while True:  # workers serve their state only between steps: ask again for a while
            if policy.finished:
                return True
            try:
                state = train_state.fetch(
                    joined.host, policy.holders, policy.policy_version, policy.state_hash, policy.state_bytes
                )
                break
            except WeightError as e:
                if not policy.state_hash or time.monotonic() > deadline or joined.stop.is_set():
                    log.warning(
                        "%s; taking the %s weights with a fresh optimizer state", e, joined.opts.weights_dtype
                    )
                    return self.fresh_start(policy)
            joined.wait(0.5)
            policy = joined.client.policy()
        copy_weights(self.model, state["model"])
        data, sha = encode_model(self.model, joined.opts.weights_dtype)
        if sha != policy.weight_hash:
            log.warning(
                "the agreed training state of policy %d does not encode to its weight hash: taking the "
                "weights with a fresh optimizer state",
                policy.policy_version,
            )
            return self.fresh_start(policy)
        joined.transport.publish(policy.policy_version, data, sha)
        joined.progress.version = policy.policy_version
        self.adopt(state)
        log.info(
            "took the training state of policy %d that its workers agreed on from a peer (float32 "
            "weights, AdamW, PowerSGD)",
            joined.progress.version,
        )
        return True

    def fresh_start(self, policy: swarm_pb2.PolicyState) -> bool:
        """The run's weights with a fresh optimizer state: AdamW's moments and step counts belong to
        weights this replica no longer holds, and no agreed state replaces them."""
        if not self.weights.sync(policy, force=True):
            return False
        self.adopt(None)
        return True

    def own_checkpoint(self, policy: swarm_pb2.PolicyState) -> Path | None:
        """A restarted trainer continues exactly from its own checkpoint of the run's current version
        (float32 weights, AdamW state, RNG) when it has one whose bf16 encoding is the published
        hash; otherwise it takes the peers' bf16 weights and starts a fresh optimizer state (logged)."""
        joined = self.joined
        ckpt = latest_checkpoint(node_checkpoints(joined.state_dir, joined.run_id))
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
                joined.opts.weights_dtype,
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
        data, sha = encode_model(self.model, joined.opts.weights_dtype)
        if sha != policy.weight_hash:
            log.warning(
                "checkpoint %s does not encode to the published policy %d: syncing from peers",
                ckpt,
                state["version"],
            )
            return None
        joined.progress.version = policy.policy_version
        joined.transport.publish(
            joined.progress.version, data, sha
        )  # a holder again, even if no peer kept it
        log.info(
            "resumed from %s: float32 weights, optimizer state and RNG of policy %d",
            ckpt,
            joined.progress.version,
        )
        return ckpt
