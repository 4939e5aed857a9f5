"""What the daemon hands its role once the node has joined a run.

The daemon owns the node's lifecycle (join, heartbeats, DHT announcements, leave) and the things it
opened for it (the coordinator client, the libp2p host, the weight transport); the role object does
the work between join and leave with them. `Progress` is the one piece both write and read: the role
updates it, the daemon's heartbeat thread reports it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from swarmgrpo.core.device import resolve_device
from swarmgrpo.node.options import NodeOptions
from swarmgrpo.p2p.host import PeerHost
from swarmgrpo.p2p.weights import WeightTransport
from swarmgrpo.protocol.client import CoordinatorClient
from swarmgrpo.trainer.config import TrainConfig
from swarmgrpo.trainer.models import load_model

log = logging.getLogger("swarmgrpo.node")
# A node with nothing to do lets the coordinator hold its Lease / TrainBatch call this long: the
# answer comes the moment work or a new policy appears (no polling delay), and SIGTERM is
# honoured at the latest this long after it arrives.
LONG_POLL_S = 5.0


@dataclass
class Progress:
    """What this node reports in its heartbeats and DHT record."""

    version: int = 0
    """The policy version whose weights this node holds."""
    activity: str = "starting"
    tokens_per_s: float = 0.0


@dataclass
class Joined:
    opts: NodeOptions
    cfg: TrainConfig
    """The run's training config, as the Join reply carried it."""
    run_id: str
    client: CoordinatorClient
    host: PeerHost
    transport: WeightTransport
    stop: threading.Event
    """Set by a signal or by the daemon: finish the current call, then return."""
    policy_at_join: int = 0
    """The run's published policy version when the node joined (0: none yet)."""
    progress: Progress = field(default_factory=Progress)

    @property
    def state_dir(self) -> Path:
        return Path(self.opts.state_dir).expanduser()

    def wait(self, seconds: float) -> None:
        self.stop.wait(seconds)


def load_run_model(joined: Joined):
    """The run's model for training or the transformers engine, on this node's device."""
    device = resolve_device(joined.opts.device or joined.cfg.device)
    model, tokenizer = load_model(joined.cfg.model, seed=joined.cfg.seed)
    model = model.to(device)
    log.info("model %s on %s", joined.cfg.model, device)
    return model, tokenizer
