"""What a joining node is told: owned by the coordinator's Join, kept apart so the rules are plain.

A node gets what it needs to work and nothing of the run owner's: the [train] table of the run config
(never `join_token`, `state_dir` or the coordinator's listen addresses) and a bounded list of DHT
bootstrap addresses (the coordinator's own peer, the configured swarm, and a few live nodes picked at
random: enough to join the DHT, however many nodes the run has).
"""

from __future__ import annotations

import random
import tomllib
from collections.abc import Sequence

from swarmgrpo.core.configtree import from_dict, render_toml
from swarmgrpo.trainer.config import TrainConfig

MAX_BOOTSTRAP_NODES = 4
"""Live nodes whose addresses a joiner gets besides the coordinator's own DHT peer."""
MAX_INITIAL_PEERS = 32
"""Most addresses in a JoinReply, whatever the nodes advertised."""


def node_config_toml(run_config_toml: str) -> str:
    """The [train] table of the stored run config, as TOML: what a node runs with."""
    train = from_dict(TrainConfig, tomllib.loads(run_config_toml)["train"])
    return render_toml(train, table="train")


def bootstrap_peers(own: Sequence[str], nodes: Sequence[dict], rng: random.Random | None = None) -> list[str]:
    """`own` addresses first, then those of at most MAX_BOOTSTRAP_NODES of `nodes` picked at random
    (so no node is everyone's bootstrap), MAX_INITIAL_PEERS in all."""
    rng = rng or random.SystemRandom()
    picked = rng.sample(list(nodes), min(MAX_BOOTSTRAP_NODES, len(nodes)))
    peers = list(dict.fromkeys([*own, *(a for n in picked for a in n["peer_addrs"])]))
    return peers[:MAX_INITIAL_PEERS]
