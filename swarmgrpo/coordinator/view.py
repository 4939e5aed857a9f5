"""A run's status snapshot as text: `swarmgrpo status` and the demo's live view."""

from __future__ import annotations


def render(snap: dict) -> str:
    counts = snap.get("counts", {})
    last = snap.get("last_step", {})
    lines = [
        f"run {snap.get('run_id')}  policy version {snap.get('policy_version')}  "
        f"rollouts accepted {counts.get('rollouts_accepted', 0)} (trained {counts.get('rollouts_trained', 0)}, "
        f"dropped stale {counts.get('rollouts_dropped_stale', 0)})  leases open {counts.get('leases_open', 0)}",
    ]
    if last:
        lines.append(
            f"last step: reward {last.get('reward_mean', 0):.3f}±{last.get('reward_std', 0):.3f}  "
            f"loss {last.get('loss', 0):+.4f}  staleness {last.get('staleness_mean', 0):.1f}  "
            f"train {last.get('train_s', 0):.1f}s"
        )
    dht = snap.get("dht") or {}
    if dht:
        lines.append(
            f"DHT: coordinator peer {dht.get('peer_id', '?')[:12]}…, "
            f"{dht.get('announced_total', len(dht.get('announced', {})))} nodes announced"
        )
    lines.append(
        f"{'node':10} {'role':14} {'hardware':9} {'alive':5} {'policy':>6} {'stale':>5} {'tok/s':>7} {'tokens':>8} "
        f"{'rollouts':>8} {'steps':>5}  activity"
    )
    for n in snap.get("nodes", []):
        role = ",".join(r.removeprefix("ROLE_").lower() for r in n.get("roles", []))
        caps = n.get("capabilities", {})
        device = caps.get("device", "?") + ("+fp8" if caps.get("fp8") else "")  # what it joined with
        lines.append(
            f"{n['node_id'][:8]:10} {role:14} {device:9} {'yes' if n.get('alive') else 'no':5} {n['policy_version']:>6} "
            f"{n.get('staleness', 0):>5} {n['tokens_per_s']:>7.0f} {n['tokens_generated']:>8} "
            f"{n['rollouts_accepted']:>8} {n['steps_trained']:>5}  {n['activity']}"
        )
    shown, total = len(snap.get("nodes", [])), snap.get("nodes_total", 0)
    if total > shown:
        lines.append(f"… {total - shown} more nodes not listed (the {shown} alive or seen last are)")
    return "\n".join(lines)
