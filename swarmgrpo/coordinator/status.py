"""What the run looks like now, from the database: the JSON of /status and `swarmgrpo status`, and
the Prometheus metrics of /metrics. Read-only; the HTTP side uses its own connection."""

from __future__ import annotations

import math
import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from swarmgrpo.coordinator.store import Store


def run_summary(cfg) -> dict:
    """What a reader of the status needs from the run config (a RunConfig): the rest stays private."""
    t = cfg.train
    return {
        "model": t.model,
        "task": t.task.name,
        "max_steps": t.max_steps,
        "num_generations": t.num_generations,
        "max_staleness": cfg.max_staleness,
    }


def snapshot(
    store: Store,
    heartbeat_interval_s: float,
    dht: dict | None = None,
    run: dict | None = None,
    since: int = 0,
) -> dict:
    """`dht`: the coordinator's DHT view ({"peer_id", "addrs", "announced": {node_id: record}}) or None;
    `run`: `run_summary` of the config; `since`: "steps" holds only the versions after it (a page
    that polls has the others: a long run's whole history every 2 s would be megabytes)."""
    now = time.time()
    v = store.policy_version
    versions = store.versions(since)
    latest = versions[-1:] or store.versions(v - 1)  # the last step's metrics, whatever `since` is
    nodes = store.nodes()
    for n in nodes:
        n["alive"] = n["left_at"] is None and now - n["last_seen"] <= 3 * heartbeat_interval_s
        n["staleness"] = v - n["policy_version"]
        n["in_dht"] = bool(dht) and n["node_id"] in dht.get("announced", {})
    last = latest[-1]["metrics"] if latest else {}
    return _finite(
        {
            "run_id": store.get_meta("run_id"),
            "run": run or {},
            "policy_version": v,
            "counts": store.counts(),
            "last_step": last,
            "steps": [{"version": x["version"], **x["metrics"]} for x in versions],
            "steps_since": since,
            "nodes": nodes,
            "dht": dht or {},
            "time": now,
        }
    )


def _finite(value):
    """`value` with every non-finite float as None: JSON has no Infinity or NaN, and a browser's
    JSON.parse refuses the whole /status over one."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


class _Collector:
    def __init__(self, store: Store, heartbeat_interval_s: float, dht: dict | None):
        self.store = store
        self.heartbeat_interval_s = heartbeat_interval_s
        self.dht = dht

    def collect(self):
        snap = snapshot(self.store, self.heartbeat_interval_s, self.dht)
        yield GaugeMetricFamily(
            "swarmgrpo_policy_version", "Newest published policy version", value=snap["policy_version"]
        )
        for name, value in snap["counts"].items():
            kind = GaugeMetricFamily if name.startswith("leases_open") else CounterMetricFamily
            yield kind(f"swarmgrpo_{name}", f"{name.replace('_', ' ')}", value=value)
        for key in ("reward_mean", "loss", "grad_norm", "accuracy"):
            if snap["last_step"].get(key) is not None:
                yield GaugeMetricFamily(
                    f"swarmgrpo_last_step_{key}", f"{key} of the last step", value=snap["last_step"][key]
                )
        alive = GaugeMetricFamily("swarmgrpo_node_alive", "1 if the node heartbeats", labels=["node_id"])
        tps = GaugeMetricFamily("swarmgrpo_node_tokens_per_s", "Generation throughput", labels=["node_id"])
        tokens = CounterMetricFamily(
            "swarmgrpo_node_tokens_generated", "Accepted completion tokens", labels=["node_id"]
        )
        for n in snap["nodes"]:
            alive.add_metric([n["node_id"]], float(n["alive"]))
            if n["tokens_per_s"] is not None:
                tps.add_metric([n["node_id"]], n["tokens_per_s"])
            tokens.add_metric([n["node_id"]], n["tokens_generated"])
        yield alive
        if snap["dht"]:
            yield GaugeMetricFamily(
                "swarmgrpo_dht_nodes_announced",
                "Nodes whose announcement the coordinator's DHT peer found",
                value=len(snap["dht"].get("announced", {})),
            )
        yield tps
        yield tokens


def metrics_text(store: Store, heartbeat_interval_s: float, dht: dict | None = None) -> bytes:
    registry = CollectorRegistry()
    registry.register(_Collector(store, heartbeat_interval_s, dht))
    return generate_latest(registry)
