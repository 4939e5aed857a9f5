"""The network tests' run: a `swarmgrpo.localnet.LocalNetwork` with a tiny model, a short run and a
coordinator on a fixed loopback port (so it comes back on the same address after a kill), and a
signed client that joins it as a node would.

Every process is a child of the test, stopped through its handle, never by name.
"""

from __future__ import annotations

from pathlib import Path

from swarmgrpo.localnet import LocalNetwork, free_port, run_config
from swarmgrpo.protocol import PROTOCOL_VERSION, swarm_pb2
from swarmgrpo.protocol.client import CoordinatorClient
from swarmgrpo.protocol.signing import NodeKey

TOKEN = "test-token"

TEST_RUN = {
    "run_id": "test-run",
    "join_token": TOKEN,
    "http_listen": "127.0.0.1:0",
    "dht_listen": ["/ip4/127.0.0.1/tcp/0"],
    "max_staleness": 1,
    "heartbeat_interval_s": 1.0,
    "prompts_per_lease": 2,
    "train": {
        "model": "tiny",
        "max_steps": 4,
        "num_generations": 4,
        "generation_batch_size": 8,
        "max_completion_length": 8,
        "learning_rate": 0.03,
        "seed": 0,
        "task": {"name": "uppercase"},
    },
}


def open_network(root: Path, **overrides) -> LocalNetwork:
    """The test run under `root`, with `overrides` (nested dicts for tables) on top of TEST_RUN."""
    listen = {"listen": f"127.0.0.1:{free_port()}"}
    return LocalNetwork(root, run_config(TEST_RUN, listen, overrides))


def join(
    net: LocalNetwork,
    key: NodeKey | None = None,
    token: str = TOKEN,
    protocol: int = PROTOCOL_VERSION,
    roles=(swarm_pb2.ROLE_ROLLOUT,),
    device: str = "cpu",
    device_name: str = "",
    patience_s: float = 20,
    busy_patience_s: float = 0.0,
    **fields,
) -> tuple[CoordinatorClient, swarm_pb2.JoinReply]:
    """A signed client that joins `net` as a node of `roles` would; `fields`: the JoinRequest's
    other fields (peer_id, peer_addrs, software_version)."""
    client = CoordinatorClient(
        net.address, key or NodeKey.generate(), patience_s, busy_patience_s=busy_patience_s
    )
    reply = client.join(
        swarm_pb2.JoinRequest(
            protocol_version=protocol,
            join_token=token,
            capabilities=swarm_pb2.Capabilities(device=device, cpu_cores=1, device_name=device_name),
            roles=list(roles),
            **fields,
        )
    )
    return client, reply
