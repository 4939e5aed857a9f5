"""What a training step consumes: groups of completions with their behavior log-probs and rewards.

A `RolloutGroup` is one prompt and its G completions, as produced by any engine in any process, at
some policy version. The step never asks where it came from; the version tells it whether it still
holds the weights that sampled it (see `GRPOStep`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Legend: B = completions in a micro-batch, S = padded prompt length + T − 1, T = padded completion length.


@dataclass(frozen=True)
class RolloutGroup:
    prompt_ids: list[int]
    completion_ids: list[list[int]]
    """G completions; each may end with the end-of-sequence token."""
    behavior_logprobs: list[list[float]]
    """Log-prob the sampling policy gave each completion token (same shapes as completion_ids)."""
    rewards: list[float]
    policy_version: int
    """The policy version that sampled these completions."""

    def __post_init__(self):
        g = len(self.completion_ids)
        if g == 0 or len(self.behavior_logprobs) != g or len(self.rewards) != g:
            raise ValueError("a rollout group needs G completions, G log-prob lists and G rewards")
        for toks, lps in zip(self.completion_ids, self.behavior_logprobs, strict=True):
            if len(toks) != len(lps):
                raise ValueError("each completion needs one behavior log-prob per token")
        if not all(math.isfinite(r) for r in self.rewards):
            raise ValueError("rewards must be finite")

    @property
    def group_size(self) -> int:
        return len(self.completion_ids)


@dataclass
class MicroBatch:
    """Padded tensors for B completions: prompt left-padded, completion right-padded.

    With that layout the logits that predict completion token t sit at column P − 1 + t for every
    row, so `logits_to_keep=T` returns exactly the T positions we need.
    """

    input_ids_BS: torch.Tensor
    attention_mask_BS: torch.Tensor
    position_ids_BS: torch.Tensor
    completion_ids_BT: torch.Tensor
    completion_mask_BT: torch.Tensor
    behavior_logp_BT: torch.Tensor
    advantages_B: torch.Tensor
    versions_B: torch.Tensor


def collate(
    prompts: list[list[int]],
    completions: list[list[int]],
    behavior: list[list[float]],
    advantages: list[float],
    versions: list[int],
    pad_id: int,
) -> MicroBatch:
    b = len(completions)
    p = max(len(x) for x in prompts)
    t = max(1, max(len(c) for c in completions))
    # The model reads prompt + completion[:-1]; its last T positions predict completion[0..T-1].
    ids_BS = torch.full((b, p + t - 1), pad_id, dtype=torch.long)
    mask_BS = torch.zeros((b, p + t - 1), dtype=torch.long)
    comp_BT = torch.full((b, t), pad_id, dtype=torch.long)
    cmask_BT = torch.zeros((b, t))
    beh_BT = torch.zeros((b, t))
    for i, (pr, c, lp) in enumerate(zip(prompts, completions, behavior, strict=True)):
        ids_BS[i, p - len(pr) : p] = torch.tensor(pr)
        mask_BS[i, p - len(pr) : p] = 1
        if len(c) > 1:
            ids_BS[i, p : p + len(c) - 1] = torch.tensor(c[:-1])
            mask_BS[i, p : p + len(c) - 1] = 1
        if c:
            comp_BT[i, : len(c)] = torch.tensor(c)
            cmask_BT[i, : len(c)] = 1.0
            beh_BT[i, : len(c)] = torch.tensor(lp)
    pos_BS = (mask_BS.cumsum(-1) - 1).clamp(min=0)
    return MicroBatch(
        ids_BS,
        mask_BS,
        pos_BS,
        comp_BT,
        cmask_BT,
        beh_BT,
        torch.tensor(advantages, dtype=torch.float32),
        torch.tensor(versions, dtype=torch.long),
    )
