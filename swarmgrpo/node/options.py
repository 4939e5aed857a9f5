"""`swarmgrpo node`'s options: the one place their defaults live.

The command line (`cli.py`) takes its defaults from `NodeOptions.defaults()` and hands the parsed
values back field by field, so a default changed here is the command's default too. Light on
purpose: the command line imports it to build its parser, before any torch.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields


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

    @classmethod
    def defaults(cls) -> dict:
        """Every field that has a default, with it (a fresh list for each list field)."""
        found = {}
        for f in fields(cls):
            if f.default is not MISSING:
                found[f.name] = f.default
            elif f.default_factory is not MISSING:
                found[f.name] = f.default_factory()
        return found

    @classmethod
    def from_namespace(cls, args) -> NodeOptions:
        """The options from a parsed command line whose destinations are this class's field names."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})
