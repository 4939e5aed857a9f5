"""A run's configuration, owned by the run owner and sent to every node that joins."""

from __future__ import annotations

from dataclasses import dataclass, field

from swarmgrpo.core.errors import ConfigError
from swarmgrpo.trainer.config import TrainConfig


@dataclass
class RateLimits:
    """Token buckets, in memory, that keep one node or one network address from taking the
    coordinator's time; a request over its budget is refused with RESOURCE_EXHAUSTED, saying when
    to retry. The defaults are far above what an honest node sends."""

    node_per_s: float = 20.0
    """Signed requests a joined node may send per second on average (a daemon sends about one
    heartbeat per heartbeat_interval_s and a few long polls)."""

    node_burst: int = 200
    """Signed requests a joined node may send at once before `node_per_s` applies."""

    address_per_s: float = 5.0
    """Requests per second, on average, from one network address (an IPv4 address or an IPv6 /64)
    that no joined key answers for: those refused before their signature checked out (unknown node,
    wrong token, bad signature, malformed or oversize), Joins and Status calls. Honest nodes sharing
    the address are not slowed: their signed requests are counted against their own keys."""

    address_burst: int = 100
    """Such requests one address may send at once before `address_per_s` applies."""

    hold_s: float = 1.0
    """A request refused for its rate is answered after this delay, so a client that retries in a
    loop sends at most one request per hold and connection thread."""

    def validate(self) -> None:
        for name in ("node_per_s", "node_burst", "address_per_s", "address_burst"):
            if getattr(self, name) <= 0:
                raise ConfigError(
                    f"rate_limits.{name}", "must be > 0", f"set rate_limits.{name} to a positive number"
                )
        if self.hold_s < 0:
            raise ConfigError(
                "rate_limits.hold_s", "must be >= 0", "set it to 0 (answer at once) or more seconds"
            )


@dataclass
class RunConfig:
    """`swarmgrpo coordinator --config run.toml`: the run's network settings and its [train] table."""

    run_id: str = "swarmgrpo-run"
    """Name of the run, shown to nodes and on the status page."""

    join_token: str = ""
    """Secret a node must present to join (`swarmgrpo node --token`). Empty refuses every node."""

    listen: str = "127.0.0.1:50051"
    """gRPC address (host:port) nodes join; port 0 picks a free one (written to state_dir/ports.json)."""

    http_listen: str = "127.0.0.1:8080"
    """HTTP address of /status (JSON) and /metrics (Prometheus); port 0 picks a free one; "" disables."""

    state_dir: str = "runs/coordinator"
    """Folder of the run's SQLite database; restarting with the same folder resumes the run."""

    max_staleness: int = 1
    """k: rollouts sampled by a policy at most k versions older than the one trained are used
    (0 = strictly on-policy: rollout nodes wait for each new version)."""

    prompts_per_lease: int = 2
    """Prompts handed to a rollout node at once (it samples num_generations of each)."""

    max_trainers: int = 4
    """Most live nodes that hold the train role at once. A node asking only for train when the run has
    them is refused at Join; a trainer keeps its role while it is live, so new keys can neither
    displace nor out-vote the trainers the run has (each step's gradient workers are among them)."""

    lease_timeout_s: float = 300.0
    """A lease not submitted within this time is expired and its prompts go to another node."""

    heartbeat_interval_s: float = 5.0
    """How often nodes report; a node silent for 3 intervals no longer counts as a weight holder."""

    score_cpu_budget_s: float = 2.0
    """CPU seconds the coordinator may spend scoring one submission (decoding and rewarding every
    completion); a submission over it is refused whole. Honest completions cost milliseconds; raise
    it only for a slow task.reward_fn."""

    max_clock_skew_s: float = 120.0
    """Largest difference between a node's clock and the coordinator's accepted on a request."""

    dht_listen: list[str] = field(default_factory=lambda: ["/ip4/0.0.0.0/tcp/0"])
    """libp2p multiaddrs of the coordinator's own hivemind DHT peer, the first bootstrap peer joining
    nodes are given (empty: no DHT peer here; nodes then bootstrap from `dht_initial_peers` and
    each other)."""

    dht_initial_peers: list[str] = field(default_factory=list)
    """DHT multiaddrs of an existing swarm: the coordinator's peer joins through them, and joining nodes
    are handed them too (besides the coordinator's own peer and the nodes it knows)."""

    rate_limits: RateLimits = field(default_factory=RateLimits)
    """How many requests one node or one network address may send (see RateLimits)."""

    train: TrainConfig = field(default_factory=TrainConfig)
    """The GRPO run itself: model, task, batch, optimizer (the same table as `swarmgrpo train`)."""

    def validate(self) -> None:
        self.train.validate()
        self.rate_limits.validate()
        if self.max_staleness < 0:
            raise ConfigError("max_staleness", f"must be >= 0, got {self.max_staleness}", "use 0, 1 or 2")
        for name in ("prompts_per_lease", "max_trainers"):
            if getattr(self, name) < 1:
                raise ConfigError(name, "must be at least 1", f"set {name} to 1 or more")
        for name in ("lease_timeout_s", "heartbeat_interval_s", "max_clock_skew_s", "score_cpu_budget_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(name, "must be > 0", f"set {name} to a positive number of seconds")
        for name in ("listen", "http_listen"):
            value = getattr(self, name)
            if value and (":" not in value or not value.rsplit(":", 1)[1].isdigit()):
                raise ConfigError(name, f"'{value}' is not host:port", 'write it as "127.0.0.1:50051"')
