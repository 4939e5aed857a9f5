"""Does gradient compression cost learning? The same seeded GRPO run under each compression.

    python benchmarks/compression_parity.py                      # tiny model, uppercase task, 3 seeds
    python benchmarks/compression_parity.py --steps 4 --seeds 0  # smoke test

For every (compression, seed): `--workers` gradient workers, each with its own replica of the model
(same initialisation) and its own libp2p host, train `--steps` GRPO steps. Each step one engine
samples the step's groups (seeded by seed and step, so every compression sees the same prompts and
sampling seeds), the groups are split into one shard per worker as the coordinator splits them, each
worker computes its shard's gradient, the workers average through `GradientAverager` (the code
gradient workers run) in threads, and each applies AdamW. Replicas are checked identical after
every step.

The table gives each compression's reward curve (mean over seeds) and the mean reward of the last
`--window` steps per seed. Parity means: the compressed run's final reward differs from the
uncompressed one's by no more than the uncompressed runs differ among seeds (their spread,
max - min over seeds), which is printed beside it.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor

import torch
from lib.output import write_json
from lib.parity import parity_config, step_groups

from swarmgrpo.node.engines.transformers_engine import TransformersEngine
from swarmgrpo.p2p.allreduce import Member
from swarmgrpo.p2p.gradients import COMPRESSIONS, GradientAverager
from swarmgrpo.p2p.host import PeerHost
from swarmgrpo.trainer.models import load_model
from swarmgrpo.trainer.step import GRPOStep
from swarmgrpo.trainer.tasks import make_task


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--compressions", default=",".join(COMPRESSIONS))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--prompts", type=int, default=8, help="prompts per step (split over the workers)")
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--max-completion-length", type=int, default=8)
    p.add_argument("--learning-rate", type=float, default=0.01)
    p.add_argument("--rank", type=int, default=1, help="PowerSGD rank")
    p.add_argument(
        "--no-error-feedback",
        action="store_true",
        help="fp16/int8/fp8/uint8 without error feedback (the codecs as they were before error feedback)",
    )
    p.add_argument(
        "--window", type=int, default=0, help="final reward: mean of the last N steps (default: a quarter)"
    )
    p.add_argument("--json-out", default="")
    args = p.parse_args(argv)
    if args.workers > args.prompts:
        p.error("--workers must not exceed --prompts: every worker needs a shard")
    args.window = args.window or max(1, args.steps // 4)
    if args.window > args.steps:
        p.error("--window must not exceed --steps")
    return args


def _digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for t in model.state_dict().values():
        h.update(t.detach().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def run(args, compression: str, seed: int) -> list[float]:
    """One seeded run; returns the mean reward of every step."""
    torch.manual_seed(seed)
    cfg = parity_config(args, seed, compression)
    task = make_task(cfg.task)
    replicas = [load_model("tiny", seed=seed) for _ in range(args.workers)]
    tokenizer = replicas[0][1]
    models = [m for m, _ in replicas]
    steps = [GRPOStep(m, cfg, tokenizer.pad_token_id) for m in models]
    hosts = [PeerHost() for _ in models]
    averagers = [
        GradientAverager(
            h, m, compression, args.rank, timeout=120.0, error_feedback=not args.no_error_feedback
        )
        for h, m in zip(hosts, models, strict=True)
    ]
    members = [Member(h.peer_id, tuple(h.addrs)) for h in hosts]
    engine = TransformersEngine(models[0], tokenizer)
    stream = task.train_examples(seed)
    rewards = []
    try:
        with ThreadPoolExecutor(args.workers) as pool:
            for t in range(args.steps):
                groups = step_groups(
                    engine, tokenizer, task, stream, cfg, steps[0].version, args.prompts, seed, t
                )
                rewards.append(statistics.mean(r for g in groups for r in g.rewards))
                ordered = groups  # the coordinator's split: every N-th group, by prompt order
                shards = [ordered[i :: args.workers] for i in range(args.workers)]
                for step, shard in zip(steps, shards, strict=True):
                    step.compute_gradients(shard)
                futures = [
                    pool.submit(
                        s.reduce, a.average, f"{compression}/{seed}/{t}", members, i, s.shard_weight(shard)
                    )
                    for i, (a, s, shard) in enumerate(zip(averagers, steps, shards, strict=True))
                ]
                for f in futures:
                    f.result()
                for step in steps:
                    step.apply()
                if len({_digest(m) for m in models}) != 1:
                    raise SystemExit(f"{compression} seed {seed} step {t}: the replicas differ")
    finally:
        for a in averagers:
            a.close()
        for h in hosts:
            h.close()
    return rewards


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    compressions = args.compressions.split(",")
    print(
        f"tiny model, uppercase task: {args.workers} workers, {args.steps} steps of {args.prompts} prompts x "
        f"{args.num_generations}, {args.max_completion_length} tokens, lr {args.learning_rate:g}, seeds {seeds}",
        flush=True,
    )
    curves: dict[str, dict[int, list[float]]] = {}
    for comp in compressions:
        curves[comp] = {}
        for seed in seeds:
            curves[comp][seed] = run(args, comp, seed)
            last = statistics.mean(curves[comp][seed][-args.window :])
            print(
                f"{comp:10} seed {seed}: first {curves[comp][seed][0]:.3f}, last {args.window} {last:.3f}",
                flush=True,
            )
    final = {c: [statistics.mean(curves[c][s][-args.window :]) for s in seeds] for c in compressions}
    area = {c: [statistics.mean(curves[c][s]) for s in seeds] for c in compressions}
    every = max(1, args.steps // 10)
    print(f"\nmean reward over seeds, every {every} steps:")
    for comp in compressions:
        mean_curve = [statistics.mean(curves[comp][s][t] for s in seeds) for t in range(args.steps)]
        print(f"{comp:10} " + " ".join(f"{x:.2f}" for x in mean_curve[::every]))
    base = final.get("none")
    spread = max(base) - min(base) if base else float("nan")
    print(f"\nfinal reward (mean of the last {args.window} steps) per seed, and the gap to 'none':")
    print(
        f"{'compression':12} {'per seed':30} {'mean':>6} {'gap':>7}   mean over all steps (speed of learning)"
    )
    for comp in compressions:
        mean = statistics.mean(final[comp])
        gap = mean - statistics.mean(base) if base else float("nan")
        per_seed = " ".join(f"{x:.3f}" for x in final[comp])
        print(f"{comp:12} {per_seed:30} {mean:>6.3f} {gap:>+7.3f}   {statistics.mean(area[comp]):.3f}")
    if base:
        print(f"noise: 'none' varies by {spread:.3f} (max - min) across seeds; a |gap| within it is parity")
    write_json(args.json_out, {"args": vars(args), "curves": curves, "final": final, "area": area})
    return 0


if __name__ == "__main__":
    sys.exit(main())
