"""`swarmgrpo demo` (what `make demo` runs): a whole network on one machine.

    eval the start model → coordinator + 1 trainer + N rollout nodes, each its own process on
    loopback → live view until max_steps → eval the trainer's final checkpoint → summary

It sits on top of coordinator and node (like the CLI) and talks to them only as a user would:
by starting processes and reading the coordinator's status.
"""

from __future__ import annotations

import json
import secrets
import shutil
import time
import urllib.request
from pathlib import Path

from swarmgrpo.coordinator.config import RunConfig
from swarmgrpo.coordinator.view import render
from swarmgrpo.core.errors import UserError
from swarmgrpo.localnet import LocalNetwork
from swarmgrpo.trainer.checkpoint import node_checkpoints


def _eval(model_path: str, cfg: RunConfig, label: str) -> dict:
    import torch

    from swarmgrpo.node.engines.transformers_engine import TransformersEngine
    from swarmgrpo.node.evaluate import evaluate
    from swarmgrpo.trainer.models import load_model
    from swarmgrpo.trainer.tasks import make_task

    t = cfg.train
    model, tok = load_model(model_path, seed=t.seed)
    autocast = torch.bfloat16 if t.dtype == "bfloat16" else None
    result = evaluate(
        TransformersEngine(model, tok, autocast_dtype=autocast),
        tok,
        make_task(t.task),
        t.eval_n,
        t.max_completion_length,
        t.max_prompt_length,
    )
    print(f"held-out accuracy {label}: {result.accuracy:.1%} ({result.correct}/{result.n})", flush=True)
    return {"accuracy": result.accuracy, "n": result.n}


def run(cfg: RunConfig, out: Path, rollout_nodes: int = 2, weights: str = "p2p") -> dict:
    if out.exists():
        shutil.rmtree(out)
    cfg.join_token = cfg.join_token or secrets.token_hex(8)
    net = LocalNetwork(out, cfg)
    summary: dict = {"processes": 2 + rollout_nodes}
    t0 = time.time()
    if cfg.train.eval_n:
        summary["eval_before"] = _eval(cfg.train.model, cfg, "before")
    with net:
        addr = net.start_coordinator()
        print(f"coordinator: gRPC {addr['grpc']}, status http://{addr['http']}/status", flush=True)
        net.start_node("trainer", "train", weights=weights)
        for i in range(rollout_nodes):
            net.start_node(f"rollout{i}", "rollout", weights=weights)
        snap = _watch(addr["http"], cfg, net)
        summary["train_wall_s"] = time.time() - t0
    checkpoint = node_checkpoints(out / "trainer", cfg.run_id) / f"checkpoint-{cfg.train.max_steps}"
    summary["checkpoint"] = str(checkpoint)
    summary["steps"] = snap["steps"]
    if cfg.train.eval_n:
        summary["eval_after"] = _eval(str(checkpoint), cfg, "after")
    summary["wall_s"] = time.time() - t0
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"checkpoint: {checkpoint}\nsummary: {out / 'summary.json'}", flush=True)
    return summary


def _watch(http: str, cfg: RunConfig, net: LocalNetwork) -> dict:
    """Print a line per published version and the node table every 15 s, until max_steps."""
    shown, last_table = 0, 0.0
    while True:
        if msg := net.failed():
            raise UserError(msg)
        try:
            snap = json.loads(urllib.request.urlopen(f"http://{http}/status", timeout=10).read())
        except OSError:
            time.sleep(1)
            continue
        for s in snap["steps"][shown:]:
            print(
                f"step {s['version']:>3}/{cfg.train.max_steps}  reward {s.get('reward_mean', 0):.3f}"
                f"±{s.get('reward_std', 0):.3f}  loss {s.get('loss', 0):+.4f}  staleness {s.get('staleness_mean', 0):.1f}"
                f"  train {s.get('train_s', 0):.1f}s",
                flush=True,
            )
        shown = len(snap["steps"])
        if time.time() - last_table > 15 or snap["policy_version"] >= cfg.train.max_steps:
            print(render(snap), flush=True)
            last_table = time.time()
        if snap["policy_version"] >= cfg.train.max_steps:
            return snap
        time.sleep(1)
