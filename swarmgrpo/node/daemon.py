"""`swarmgrpo node`: a volunteer's daemon.

    probe hardware → load key → start libp2p host → join → join the run's hivemind DHT and announce
    → start the role the run gave it (load its model or engine) → heartbeats + DHT announcements (thread)
    → role.run(): rollout (`rollout_role`): lease → generate G each → submit
                | train (`train_role`): batch → gradient → all-reduce → step → publish → report
    → leave (open leases go back to the pool)

The daemon owns the lifecycle and what it opened (client, libp2p host, weight transport); the role
object does the work in between, and `weight_sync` keeps its weights at the run's.

Ctrl-C / SIGTERM finish the current call and leave cleanly; `kill -9` loses nothing the
coordinator already accepted (its lease simply expires and the prompts go to another node).
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import tomllib
from pathlib import Path

import torch

import swarmgrpo
from swarmgrpo.core.configtree import from_dict
from swarmgrpo.core.device import probe
from swarmgrpo.core.errors import UserError
from swarmgrpo.node.joined import Joined, Progress
from swarmgrpo.node.options import NodeOptions
from swarmgrpo.node.rollout_role import RolloutRole
from swarmgrpo.node.train_role import TrainRole
from swarmgrpo.p2p.host import PeerHost, nodes_key
from swarmgrpo.p2p.weight_transfer import P2PWeights
from swarmgrpo.p2p.weights import FileWeights, WeightTransport
from swarmgrpo.protocol import PROTOCOL_VERSION, swarm_pb2
from swarmgrpo.protocol.client import CoordinatorClient, CoordinatorError, CoordinatorUnreachable
from swarmgrpo.protocol.dhtrecords import sign_node_record
from swarmgrpo.protocol.signing import NodeKey
from swarmgrpo.trainer.config import TrainConfig

log = logging.getLogger("swarmgrpo.node")
ROLES = {"rollout": swarm_pb2.ROLE_ROLLOUT, "train": swarm_pb2.ROLE_TRAIN}


def role_for(granted) -> type[RolloutRole] | type[TrainRole]:
    """The role object for the roles the Join reply granted: a trainer trains, anyone else rolls out."""
    return TrainRole if swarm_pb2.ROLE_TRAIN in granted else RolloutRole


class Node:
    def __init__(self, opts: NodeOptions):
        self.opts = opts
        self.key = NodeKey.load_or_create(Path(opts.state_dir).expanduser() / "node.key")
        self.stop = threading.Event()
        self.client = CoordinatorClient(
            opts.join, self.key, opts.coordinator_patience_s, self.stop, busy_patience_s=math.inf
        )
        self.progress = Progress()
        self.host: PeerHost | None = None
        self.run_id = ""
        self.role_name = ""

    def run(self) -> None:
        caps = probe()
        if self.opts.threads:
            torch.set_num_threads(self.opts.threads)
        roles = [] if self.opts.roles == "auto" else [ROLES[r] for r in self.opts.roles.split(",")]
        self.host = PeerHost(self.opts.p2p_listen, self.opts.initial_peers)
        transport = self._transport()
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
        cfg = from_dict(TrainConfig, tomllib.loads(reply.run_config_toml)["train"])
        kind = role_for(reply.roles)
        self.role_name, self.run_id = kind.name, reply.run_id
        reached = self.host.join_dht(list(reply.initial_peers) + list(self.opts.initial_peers))
        if isinstance(transport, P2PWeights):
            transport.run_id = reply.run_id  # announce held weights in the DHT from now on
        self._announce(reply.heartbeat_interval_s)
        log.info(
            "joined run '%s' as node %s (%s) at policy %d; DHT peer %s via %d bootstrap peers",
            reply.run_id,
            self.key.node_id[:8],
            kind.name,
            reply.policy_version,
            self.host.peer_id[:12],
            reached,
        )
        torch.manual_seed(cfg.seed)
        joined = Joined(
            opts=self.opts,
            cfg=cfg,
            run_id=reply.run_id,
            client=self.client,
            host=self.host,
            transport=transport,
            stop=self.stop,
            policy_at_join=reply.policy_version,
            progress=self.progress,
        )
        role = None
        try:
            # Inside the try: a model or engine this node cannot run (a device it lacks, say) still
            # says goodbye to the coordinator before the error reaches the volunteer.
            reason = "could not start its model or engine"
            role = kind.start(joined)
            reason = "stopped"
            # Heartbeats from here: a trainer still loading its model does not count as a ready worker.
            beat = threading.Thread(target=self._heartbeats, args=(reply.heartbeat_interval_s,), daemon=True)
            beat.start()
            role.run()
            reason = "finished" if not self.stop.is_set() else "stopped"
        finally:
            self.stop.set()
            self._leave(reason)
            transport.close()
            if role is not None:
                role.close()
            self.host.close()
            self.client.close()

    def _transport(self) -> WeightTransport:
        if self.opts.weights_dir:
            return FileWeights(self.opts.weights_dir)
        return P2PWeights(self.host)

    def _leave(self, reason: str) -> None:
        try:
            returned = self.client.leave(reason).returned_prompts
            log.info("left the run (%s); %d leased prompts returned", reason, returned)
        except Exception as e:  # leaving is best effort: the leases expire anyway
            log.warning("could not say goodbye to the coordinator: %s", e)

    def _announce(self, interval: float) -> None:
        """This node's record in the run's DHT; it expires 3 intervals after the last announcement."""
        record = {
            "peer_id": self.host.peer_id,
            "addrs": self.host.addrs,
            "role": self.role_name,
            "policy_version": self.progress.version,
            "activity": self.progress.activity,
            "tokens_per_s": round(float(self.progress.tokens_per_s), 1),
        }
        signed = sign_node_record(self.key, self.run_id, record, ttl=3 * interval)  # readers check it
        try:
            self.host.announce(nodes_key(self.run_id), self.key.node_id, signed, ttl=3 * interval)
        except Exception as e:  # the coordinator's heartbeat is what keeps a node in the run
            log.warning("DHT announcement failed: %s", e)

    def _heartbeats(self, interval: float) -> None:
        while not self.stop.wait(interval):
            p = self.progress
            try:
                self.client.heartbeat(p.version, p.activity, p.tokens_per_s)
            except Exception as e:
                log.warning("heartbeat failed: %s", e)
            self._announce(interval)


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
