"""What the run looks like now, from the database: the JSON of /status and `swarmgrpo status`, and
the Prometheus metrics of /metrics. Read-only; the HTTP side uses its own connection.

A snapshot holds: the run's summary, policy_version, counts (prompts, rollouts accepted / trained /
dropped stale / set aside, leases open / expired / submitted, versions published, tokens), the last
step's metrics and the steps' (after `since`), the nodes (roles, activity, counts, alive), the
replay guard's nonces (how many it holds, and by node) and the DHT view. What the run did row by row
(versions with their hashes, leases, rollouts) is the business of `runlog` (/runlog/<table>).

Whatever many keys join and put in their fields, a snapshot stays bounded: it lists at most
MAX_NODES_SHOWN nodes, DHT records and nodes holding nonces (alive and recent first, or those with
most nonces; the totals are counted), and every string and list that came from a node is cut to
MAX_TEXT characters / MAX_ITEMS entries.
"""

from __future__ import annotations

import math
import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from swarmgrpo.coordinator.store import Store

MAX_NODES_SHOWN = 100
MAX_TEXT = 128
MAX_ITEMS = 8


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
    # alive and recent first when there are too many to show, listed in the order they joined
    shown = sorted(nodes, key=lambda n: (n["alive"], n["last_seen"]), reverse=True)[:MAX_NODES_SHOWN]
    shown.sort(key=lambda n: n["joined_at"])
    last = latest[-1]["metrics"] if latest else {}
    nonces_held, nonces_by_node = store.nonce_counts(MAX_NODES_SHOWN)
    return finite(
        {
            "run_id": store.get_meta("run_id"),
            "run": run or {},
            "policy_version": v,
            "counts": store.counts(),
            "last_step": last,
            "steps": [{"version": x["version"], **x["metrics"]} for x in versions],
            "steps_since": since,
            "nodes": [bounded(n) for n in shown],
            "nodes_total": len(nodes),
            "nodes_alive": sum(n["alive"] for n in nodes),
            "nonces": {"held": nonces_held, "by_node": bounded(nonces_by_node, MAX_NODES_SHOWN)},
            "dht": _bounded_dht(dht or {}),
            "time": now,
        }
    )


def _bounded_dht(dht: dict) -> dict:
    announced = dht.get("announced")
    if announced is None:
        return bounded(dht)
    shown = dict(list(announced.items())[:MAX_NODES_SHOWN])
    return {
        **bounded({k: v for k, v in dht.items() if k != "announced"}),
        "announced": bounded(shown, MAX_NODES_SHOWN),
        "announced_total": len(announced),
    }


def bounded(value, max_keys: int = 32):
    """`value` with every string cut to MAX_TEXT characters, every list inside to MAX_ITEMS entries
    and every mapping to `max_keys` (a node's row has ~20 fields, so 32 keeps them all)."""
    if isinstance(value, str):
        return value if len(value) <= MAX_TEXT else value[: MAX_TEXT - 1] + "…"
    if isinstance(value, dict):
        return {bounded(str(k)): bounded(v) for k, v in list(value.items())[:max_keys]}
    if isinstance(value, list | tuple):
        return [bounded(v) for v in value[:MAX_ITEMS]]
    return value


def finite(value):
    """`value` with every non-finite float as None: JSON has no Infinity or NaN, and a browser's
    JSON.parse refuses the whole /status over one."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
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
                value=snap["dht"].get("announced_total", 0),
            )
        yield tps
        yield tokens


def metrics_text(store: Store, heartbeat_interval_s: float, dht: dict | None = None) -> bytes:
    registry = CollectorRegistry()
    registry.register(_Collector(store, heartbeat_interval_s, dht))
    return generate_latest(registry)
