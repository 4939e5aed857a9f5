"""Bounded staleness pays: steps/s of a real network for max_staleness k = 0, 1, 2, reward curves beside.

    python benchmarks/async_vs_sync.py                                  # smollm2-135m, 8 steps per k
    python benchmarks/async_vs_sync.py --model tiny --steps 4 --ks 0 1  # smoke test

For each k, a fresh network on loopback: a coordinator, one rollout node pinned to core 0 and one
trainer pinned to core 1 (`taskset`, one torch thread each), the same seed, prompts and settings.
With k = 0 the two take turns (generate step t's rollouts, then train on them); with k >= 1 the
rollout node samples step t+1's prompts while step t trains, so both cores work at once and the
physical limit is 2x the k = 0 rate (it is reached only when generation and training take equally long).

Steps/s is measured between the publication of version 1 and of the last version (the first step
carries model loading and warm-up), from the coordinator's own publication times.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sqlite3
import statistics
import subprocess
import time
from pathlib import Path

from swarmgrpo.localnet import Processes

TARGET_SPEEDUP_K1 = 1.8


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--ks", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--prompts", type=int, default=4, help="prompts per step")
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--max-completion-length", type=int, default=32)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype of both nodes"
    )
    p.add_argument(
        "--weights",
        choices=("p2p", "file"),
        default="p2p",
        help="how new versions travel: libp2p streams between the nodes (a network's default) or a shared folder",
    )
    p.add_argument("--out", default="runs/bench-async", help="working folder (wiped per k)")
    p.add_argument("--json-out", default="")
    return p.parse_args(argv)


def run_config(args, k: int, state_dir: Path) -> str:
    task = (
        'name = "uppercase"'
        if args.model == "tiny"
        else 'name = "arithmetic"\nlevel = 1\noperations = "+"\nreward_weights = { correctness = 1.0, brevity = 0.1 }'
    )
    return f"""run_id = "bench-k{k}"
join_token = "bench"
listen = "127.0.0.1:0"
http_listen = ""
state_dir = "{state_dir}"
max_staleness = {k}
prompts_per_lease = {args.prompts}
heartbeat_interval_s = 2.0
[train]
model = "{args.model}"
max_steps = {args.steps}
num_generations = {args.num_generations}
generation_batch_size = {args.prompts * args.num_generations}
micro_batch_size = {args.micro_batch}
dtype = "{args.dtype}"
max_completion_length = {args.max_completion_length}
learning_rate = {3e-2 if args.model == "tiny" else 1e-5}
advantage_estimator = "dr_grpo"
[train.task]
{task}
"""


def run_one(args, k: int) -> dict:
    root = Path(args.out) / f"k{k}"
    subprocess.run(["rm", "-rf", str(root)], check=True)
    root.mkdir(parents=True)
    cfg = root / "run.toml"
    cfg.write_text(run_config(args, k, root / "coordinator"))
    procs = Processes(root)
    try:
        coordinator = procs.start("coordinator", ["coordinator", "--config", str(cfg)])
        ports = root / "coordinator" / "ports.json"
        while not ports.exists():
            if coordinator.poll() is not None:
                raise SystemExit(procs.log("coordinator"))
            time.sleep(0.2)
        grpc_addr = json.loads(ports.read_text())["grpc"]
        common = [
            "--join",
            grpc_addr,
            "--token",
            "bench",
            "--threads",
            "1",
        ]
        if args.weights == "file":
            common += ["--weights-dir", str(root / "weights")]
        trainer = procs.start(
            "trainer", ["node", *common, "--roles", "train", "--state-dir", str(root / "trainer")], cpu=1
        )
        rollout_args = [
            "--roles",
            "rollout",
            "--state-dir",
            str(root / "rollout"),
            "--max-prompts",
            str(args.prompts),
        ]
        rollout = procs.start("rollout", ["node", *common, *rollout_args], cpu=0)
        for p, name in ((trainer, "trainer"), (rollout, "rollout")):
            if p.wait(3600) != 0:
                raise SystemExit(f"{name} failed:\n" + procs.log(name)[-3000:])
    finally:
        procs.stop()
    db = sqlite3.connect(root / "coordinator" / "run.sqlite")
    rows = db.execute("SELECT version, published_at, metrics FROM versions ORDER BY version").fetchall()
    times = [t for _, t, _ in rows]
    metrics = [json.loads(m) for _, _, m in rows]
    steps_per_s = (len(times) - 1) / (times[-1] - times[0])
    return {
        "k": k,
        "steps_per_s": steps_per_s,
        "s_per_step": 1 / steps_per_s,
        "step_intervals_s": [b - a for a, b in itertools.pairwise(times)],
        "reward": [m["reward_mean"] for m in metrics],
        "staleness": [m.get("staleness_mean", 0.0) for m in metrics],
        "train_s": statistics.median(m["train_s"] for m in metrics),
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    print(
        f"model={args.model} steps={args.steps} prompts/step={args.prompts} G={args.num_generations} "
        f"tokens={args.max_completion_length} dtype={args.dtype} weights={args.weights}; "
        "rollout node on core 0, trainer on core 1, 1 thread each",
        flush=True,
    )
    results = []
    for k in args.ks:
        print(f"k={k} ...", flush=True)
        results.append(run_one(args, k))
    base = next((r for r in results if r["k"] == 0), None)
    print(
        f"\n{'k':>2} {'s/step':>7} {'steps/s':>8} {'speed-up':>8} {'train s':>7}  reward per step (mean)             last-half mean"
    )
    for r in results:
        speedup = r["steps_per_s"] / base["steps_per_s"] if base else float("nan")
        r["speedup_vs_k0"] = speedup
        half = r["reward"][len(r["reward"]) // 2 :]
        curve = " ".join(f"{x:.2f}" for x in r["reward"])
        print(
            f"{r['k']:>2} {r['s_per_step']:>7.1f} {r['steps_per_s']:>8.4f} {speedup:>8.2f} {r['train_s']:>7.1f}  {curve}  {statistics.mean(half):.3f}"
        )
    k1 = next((r for r in results if r["k"] == 1), None)
    if base and k1:
        print(
            f"\nk=1 speed-up over k=0: {k1['speedup_vs_k0']:.2f}x (target >= {TARGET_SPEEDUP_K1}, physical limit 2.0)"
        )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
