"""GRPO math: group-relative advantages and the clipped, importance-weighted policy loss.

Pure torch, no model or I/O: the trainer computes log-probs, picks variants by config name from
`ADVANTAGES` / `AGGREGATORS`, and calls `grpo_loss` once per micro-batch with the step's `LossNorm`.
"""

from swarmgrpo.trainer.grpo.advantages import ADVANTAGES, compute_advantages, group_stats
from swarmgrpo.trainer.grpo.loss import (
    AGGREGATORS,
    LossNorm,
    clipped_surrogate,
    grpo_loss,
    k3_kl,
    tis_weight,
    token_logprobs,
)
from swarmgrpo.trainer.grpo.registry import Registry

__all__ = [
    "ADVANTAGES",
    "AGGREGATORS",
    "LossNorm",
    "Registry",
    "clipped_surrogate",
    "compute_advantages",
    "group_stats",
    "grpo_loss",
    "k3_kl",
    "tis_weight",
    "token_logprobs",
]
