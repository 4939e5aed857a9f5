"""The seeded GRPO run that `compression_parity.py` trains under each compression and
`ef_under_adam.py` replays: tiny model, uppercase task, the same prompts and sampling seeds step by
step, so the two benchmarks see the same gradients."""

from __future__ import annotations

import itertools

from swarmgrpo.node.solo import rollout
from swarmgrpo.trainer.config import TrainConfig
from swarmgrpo.trainer.tasks.config import TaskConfig


def parity_config(args, seed: int, compression: str = "none") -> TrainConfig:
    """The run's config, from `args.prompts`, `num_generations`, `max_completion_length`,
    `learning_rate` and (PowerSGD) `rank`."""
    return TrainConfig(
        model="tiny",
        task=TaskConfig(name="uppercase", reward_weights={"correctness": 1.0}),
        seed=seed,
        num_generations=args.num_generations,
        generation_batch_size=args.prompts * args.num_generations,
        max_completion_length=args.max_completion_length,
        learning_rate=args.learning_rate,
        grad_compression=compression,
        powersgd_rank=getattr(args, "rank", 1),
    )


def step_groups(
    engine, tokenizer, task, stream, cfg: TrainConfig, version: int, prompts: int, seed: int, t: int
):
    """Step `t`'s groups: the next `prompts` examples of `stream`, sampled with step t's seed."""
    examples = list(itertools.islice(stream, prompts))
    groups, _, _ = rollout(engine, tokenizer, task, examples, cfg, version, seed=seed * 100_000 + t)
    return groups
