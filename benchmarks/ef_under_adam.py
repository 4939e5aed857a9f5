"""Why int8 + error feedback learns worse than fp8 at the same bytes: its updates under AdamW.

    python benchmarks/ef_under_adam.py                  # tiny model, uppercase task, 20 steps
    python benchmarks/ef_under_adam.py --steps 4        # smoke test

The parity benchmark (compression_parity.py) found int8 + error feedback far below float32 while fp8
keeps up, and that int8 sends ~21% of the values as 0 where fp8 sends ~5%. The suspected mechanism:
error feedback delays a small value until its residual has grown past half an int8 step, then sends
it at once; AdamW divides each element by the root of its running mean square, so a value sent as a
rare spike moves its weight by up to ~1/sqrt(1 - beta2) learning rates in all, where the same value
sent every step moves it by one per step. Small, noisy elements then get large, lumpy updates.

This replays real GRPO gradients to test that, without the feedback loop of training:
1. one seeded run (tiny model, uppercase task, the parity benchmark's settings) records the clipped
   gradient of every step;
2. the gradient sequence goes through each codec with error feedback (one worker: encode g + e,
   e <- what the encoding lost), and through the same codec-free optimizer, AdamW (the run's betas)
   and, as the control, plain SGD;
3. for each (codec, optimizer), the weights' total displacement after the steps is compared with
   float32's: the relative error of the sum of updates, over all elements and over the elements the
   codec sent as 0 at least once while float32 had a nonzero value, and how far those moved against
   how far they moved in float32 (norm ratio).

Under SGD error feedback is exact up to the last residual, so every codec's displacement error is
small; if the mechanism holds, under AdamW int8's is large and fp8's small.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
from lib.parity import parity_config, step_groups

from swarmgrpo.node.engines.transformers_engine import TransformersEngine
from swarmgrpo.p2p import compression
from swarmgrpo.trainer.config import TrainConfig
from swarmgrpo.trainer.models import load_model
from swarmgrpo.trainer.step import GRPOStep
from swarmgrpo.trainer.tasks import make_task


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--codecs", default="fp16,int8,fp8")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--max-completion-length", type=int, default=8)
    p.add_argument("--learning-rate", type=float, default=0.01)
    return p.parse_args(argv)


def record_gradients(args, seed: int) -> tuple[list[torch.Tensor], TrainConfig]:
    """The clipped gradient (flat, float32) of every step of one seeded float32 run."""
    torch.manual_seed(seed)
    cfg = parity_config(args, seed)
    model, tokenizer = load_model("tiny", seed=seed)
    task = make_task(cfg.task)
    step = GRPOStep(model, cfg, tokenizer.pad_token_id)
    engine = TransformersEngine(model, tokenizer)
    stream = task.train_examples(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = []
    for t in range(args.steps):
        groups = step_groups(engine, tokenizer, task, stream, cfg, step.version, args.prompts, seed, t)
        step.compute_gradients(groups)
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)  # apply() clips again: a no-op now
        grads.append(torch.cat([p.grad.reshape(-1).float() for p in params]))
        step.apply()
    return grads, cfg


def displacement(grads, codec: str | None, optimizer: str, cfg: TrainConfig):
    """Sum of the updates the optimizer makes from `grads` sent through `codec` with error feedback;
    per element, how many steps it was sent as 0 while its gradient was not 0, and how many steps
    its gradient was not 0."""
    w = torch.nn.Parameter(torch.zeros_like(grads[0]))
    if optimizer == "adamw":
        opt = torch.optim.AdamW(
            [w], lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=0.0
        )
    else:
        opt = torch.optim.SGD([w], lr=cfg.learning_rate)
    residual = torch.zeros_like(w)
    zeroed = torch.zeros_like(w, dtype=torch.int32)
    nonzero = torch.zeros_like(w, dtype=torch.int32)
    for g in grads:
        sent = g
        if codec is not None:
            target = g + residual
            sent = torch.empty_like(g)
            compression.decode_part_into(compression.encode_part(codec, target), sent)
            residual = target - sent
        zeroed += (sent == 0) & (g != 0)
        nonzero += g != 0
        w.grad = sent.clone()
        opt.step()
    return w.detach().clone(), zeroed, nonzero


def main(argv=None) -> int:
    args = parse_args(argv)
    codecs = args.codecs.split(",")
    rows: dict[tuple[str, str], list[tuple[float, ...]]] = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        grads, cfg = record_gradients(args, seed)
        for optimizer in ("sgd", "adamw"):
            exact, _, _ = displacement(grads, None, optimizer, cfg)
            for codec in codecs:
                got, zeroed, nonzero = displacement(grads, codec, optimizer, cfg)
                share = float(zeroed.sum() / nonzero.sum())  # of the nonzero values sent, those sent as 0
                often = 2 * zeroed > nonzero  # sent as 0 in more than half the steps they were not 0
                err = float((got - exact).norm() / exact.norm())
                err_often = moved = float("nan")
                if often.any():
                    err_often = float((got - exact)[often].norm() / exact[often].norm())
                    moved = float(got[often].norm() / exact[often].norm())
                row = (err, share, float(often.float().mean()), err_often, moved)
                rows.setdefault((optimizer, codec), []).append(row)
                print(f"seed {seed} {optimizer:5} {codec:5} " + " ".join(f"{v:.3f}" for v in row), flush=True)
    print(
        f"\ntiny model, uppercase task, {args.steps} steps of {args.prompts} prompts x "
        f"{args.num_generations}, lr {args.learning_rate:g}, AdamW betas ({cfg.adam_beta1}, "
        f"{cfg.adam_beta2}); error feedback; means over seeds. 'Often 0': elements sent as 0 in more "
        "than half the steps their gradient was not 0."
    )
    heads = ["sum-of-updates error", "values sent as 0", "often 0", "error on them", "their movement / fp32"]
    print(f"{'optimizer':9} {'codec':6} " + " ".join(f"{h:>22}" for h in heads))
    for (optimizer, codec), values in rows.items():
        means = [statistics.mean(v[i] for v in values) for i in range(len(heads))]
        cells = [
            f"{means[0]:.3f}",
            f"{means[1]:.1%}",
            f"{means[2]:.1%}",
            f"{means[3]:.3f}",
            f"{means[4]:.2f}",
        ]
        print(f"{optimizer:9} {codec:6} " + " ".join(f"{c:>22}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
