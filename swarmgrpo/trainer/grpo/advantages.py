"""Group-relative advantages: one scalar per completion, from the rewards of its prompt's group.

Shapes: P prompts, G completions per prompt (the group).
    rewards_PG  float [P, G]  one reward per completion
    adv_PG      float [P, G]  the advantage every token of that completion gets

Estimators, picked by the config field `advantage_estimator`:
    "grpo"     (r - mean_g) / (std_g + 1e-4)   DeepSeekMath (Shao et al. 2024); std is the unbiased
                                               sample std (Bessel's correction), as TRL computes it
    "dr_grpo"  r - mean_g                      Dr. GRPO (Liu et al. 2025): no std scaling, which
                                               otherwise up-weights near-unanimous groups

A group whose rewards are all equal carries no learning signal; both estimators give it exactly zero
advantages (tested with max == min, not left to float cancellation), and so does a group of one.
"""

import torch

from swarmgrpo.trainer.grpo.registry import Registry

ADVANTAGES: Registry = Registry("advantage_estimator")

STD_EPS = 1e-4


def _check(rewards_PG: torch.Tensor) -> torch.Tensor:
    if rewards_PG.dim() != 2:
        raise ValueError(f"rewards must be [num_prompts, group_size], got shape {tuple(rewards_PG.shape)}")
    return rewards_PG if rewards_PG.is_floating_point() else rewards_PG.float()


def _constant_groups_P1(rewards_PG: torch.Tensor) -> torch.Tensor:
    """True for groups whose rewards are all equal (includes groups of one)."""
    return (rewards_PG.amax(dim=1) == rewards_PG.amin(dim=1)).unsqueeze(1)


@ADVANTAGES.register("dr_grpo")
def dr_grpo_advantages(rewards_PG: torch.Tensor) -> torch.Tensor:
    rewards_PG = _check(rewards_PG)
    centred_PG = rewards_PG - rewards_PG.mean(dim=1, keepdim=True)
    return centred_PG.masked_fill(_constant_groups_P1(rewards_PG), 0.0)


@ADVANTAGES.register("grpo")
def grpo_advantages(rewards_PG: torch.Tensor) -> torch.Tensor:
    rewards_PG = _check(rewards_PG)
    if rewards_PG.shape[1] < 2:  # the unbiased std of one sample is undefined (NaN)
        return torch.zeros_like(rewards_PG)
    centred_PG = rewards_PG - rewards_PG.mean(dim=1, keepdim=True)
    std_P1 = rewards_PG.std(dim=1, keepdim=True)
    return (centred_PG / (std_P1 + STD_EPS)).masked_fill(_constant_groups_P1(rewards_PG), 0.0)


def compute_advantages(rewards_PG: torch.Tensor, estimator: str) -> torch.Tensor:
    """`adv_PG` from the estimator named by the config (raises ConfigError for an unknown name)."""
    return ADVANTAGES.get(estimator)(rewards_PG)


def group_stats(rewards_PG: torch.Tensor) -> dict[str, float]:
    """Reward statistics for logging.

    frac_zero_std   fraction of groups whose rewards are all equal (they contribute no gradient)
    reward_mean     mean over every completion
    reward_std      unbiased std over every completion (0 for a single one)
    group_std_mean  mean over groups of the within-group unbiased std (0 for groups of one)
    """
    rewards_PG = _check(rewards_PG).detach()
    n = rewards_PG.numel()
    if n == 0:
        return {"frac_zero_std": 0.0, "reward_mean": 0.0, "reward_std": 0.0, "group_std_mean": 0.0}
    group_std_P = rewards_PG.std(dim=1) if rewards_PG.shape[1] > 1 else torch.zeros(rewards_PG.shape[0])
    return {
        "frac_zero_std": _constant_groups_P1(rewards_PG).float().mean().item(),
        "reward_mean": rewards_PG.mean().item(),
        "reward_std": rewards_PG.std().item() if n > 1 else 0.0,
        "group_std_mean": group_std_P.mean().item(),
    }
