"""What a training step consumes: groups of completions with their behavior log-probs and rewards.

A `RolloutGroup` is one prompt and its G completions, as produced by any engine in any process, at
some policy version. The step never asks where it came from; the version tells it whether it still
holds the weights that sampled it (see `GRPOStep`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

# Legend: K = prompts in a micro-batch, P = padded prompt length, B = completions, T = padded completion length.


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
        if len(self.prompt_ids) < 2:
            raise ValueError("a prompt needs at least 2 tokens (the trainer caches all but the last)")
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
    """Padded tensors for K prompts and the B completions that share them.

    Each prompt is run once (left-padded to P, so its last real token sits in the last column) and
    its KV cache is shared by its completions, instead of being recomputed G times: with G = 8 and
    prompts longer than completions, that halves the step's FLOPs and activation memory.
    The cache holds the prompt's context (all tokens but its last); each completion's forward runs
    over [last prompt token] + completion_ids[:-1], so its T logits predict its T tokens.
    """

    prompt_ids_KP: torch.Tensor
    prompt_mask_KP: torch.Tensor
    prompt_len_K: torch.Tensor
    group_index_B: torch.Tensor
    """Which of the K prompts each completion continues."""
    completion_ids_BT: torch.Tensor
    completion_mask_BT: torch.Tensor
    behavior_logp_BT: torch.Tensor
    advantages_B: torch.Tensor
    versions_B: torch.Tensor

    def to(self, device: torch.device) -> MicroBatch:
        """The same batch with every tensor on `device` (itself when they are there already)."""
        if self.prompt_ids_KP.device == device:
            return self
        return MicroBatch(*(getattr(self, f.name).to(device) for f in fields(self)))


def collate(
    prompts: list[list[int]],
    group_index: list[int],
    completions: list[list[int]],
    behavior: list[list[float]],
    advantages: list[float],
    versions: list[int],
    pad_id: int,
) -> MicroBatch:
    k, b = len(prompts), len(completions)
    p = max(len(x) for x in prompts)
    t = max(1, max(len(c) for c in completions))
    prompt_KP = torch.full((k, p), pad_id, dtype=torch.long)
    pmask_KP = torch.zeros((k, p), dtype=torch.long)
    for i, pr in enumerate(prompts):
        prompt_KP[i, p - len(pr) :] = torch.tensor(pr)
        pmask_KP[i, p - len(pr) :] = 1
    comp_BT = torch.full((b, t), pad_id, dtype=torch.long)
    cmask_BT = torch.zeros((b, t))
    beh_BT = torch.zeros((b, t))
    for i, (c, lp) in enumerate(zip(completions, behavior, strict=True)):
        if c:
            comp_BT[i, : len(c)] = torch.tensor(c)
            cmask_BT[i, : len(c)] = 1.0
            beh_BT[i, : len(c)] = torch.tensor(lp)
    return MicroBatch(
        prompt_KP,
        pmask_KP,
        torch.tensor([len(x) for x in prompts]),
        torch.tensor(group_index, dtype=torch.long),
        comp_BT,
        cmask_BT,
        beh_BT,
        torch.tensor(advantages, dtype=torch.float32),
        torch.tensor(versions, dtype=torch.long),
    )
