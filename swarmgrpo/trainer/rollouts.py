"""A rollout's shapes, and the one place it changes shape on its way from an engine to a train step.

    engine Completions ─submission─► SubmitRequest groups ─completion_ids, behavior_logprobs─►
    rollouts row (completions_column; StoredRollout) ─add_train_group─► TrainGroup ─group_from_wire─►
    RolloutGroup ─micro_batch─► MicroBatch

Solo training skips the wire: `group_from_completions`. On the wire log-probs and rewards are
float32, so a value that crossed it once is kept exactly by every later shape.

A `RolloutGroup` is one prompt and its G completions, as produced by any engine in any process, at
some policy version. The step never asks where it came from; the version tells it whether it still
holds the weights that sampled it (see `GRPOStep`). torch is imported only to build a batch, so the
coordinator reads and writes rollouts without it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Protocol

from swarmgrpo.protocol import swarm_pb2

if TYPE_CHECKING:
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
    import torch

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


# ---------------------------------------------------------------- engine → wire (the rollout node)


class SampledCompletion(Protocol):
    """What an engine returns for one sample (node/engines/base.py's Completion)."""

    token_ids: list[int]
    logprobs: list[float]


def submission(
    lease: swarm_pb2.LeaseReply, outs: Sequence[Sequence[SampledCompletion]], generation_s: float
) -> swarm_pb2.SubmitRequest:
    """The unsigned SubmitRequest for a lease: each leased prompt's completions, in lease order."""
    req = swarm_pb2.SubmitRequest(
        lease_id=lease.lease_id, policy_version=lease.policy_version, generation_s=generation_s
    )
    for prompt, completions in zip(lease.prompts, outs, strict=True):
        g = req.groups.add(prompt_index=prompt.prompt_index)
        for c in completions:
            g.completions.add(token_ids=c.token_ids, logprobs=c.logprobs)
    return req


def wire_tokens(groups: Iterable[swarm_pb2.Group]) -> int:
    """Completion tokens in these groups."""
    return sum(len(c.token_ids) for g in groups for c in g.completions)


# ---------------------------------------------------------------- wire ⇄ stored row (the coordinator)


def completion_ids(group: swarm_pb2.Group) -> list[list[int]]:
    return [list(c.token_ids) for c in group.completions]


def behavior_logprobs(group: swarm_pb2.Group) -> list[list[float]]:
    return [list(c.logprobs) for c in group.completions]


def completions_column(ids: list[list[int]], logprobs: list[list[float]]) -> str:
    """The rollouts table's `completions` text: token ids and behavior log-probs of each completion."""
    return json.dumps([ids, logprobs])


@dataclass(frozen=True)
class StoredRollout:
    """A row of the coordinator's rollouts table, as a step's batch reads it."""

    id: int
    prompt_index: int
    policy_version: int
    completions: list[list[int]]
    logprobs: list[list[float]]
    rewards: list[float]

    @classmethod
    def from_columns(
        cls, rollout_id: int, prompt_index: int, policy_version: int, completions: str, rewards: str
    ) -> StoredRollout:
        ids, logprobs = json.loads(completions)
        return cls(rollout_id, prompt_index, policy_version, ids, logprobs, json.loads(rewards))


def add_train_group(reply: swarm_pb2.TrainBatchReply, rollout: StoredRollout, prompt_ids: list[int]) -> None:
    """Append a stored rollout, with its prompt's token ids, to a gradient worker's shard."""
    g = reply.groups.add(
        prompt_index=rollout.prompt_index,
        prompt_token_ids=prompt_ids,
        rewards=rollout.rewards,
        policy_version=rollout.policy_version,
    )
    for ids, lps in zip(rollout.completions, rollout.logprobs, strict=True):
        g.completions.add(token_ids=ids, logprobs=lps)


# ---------------------------------------------------------------- wire or engine → trainer groups


def group_from_wire(g: swarm_pb2.TrainGroup) -> RolloutGroup:
    """A gradient worker's group, from its TrainBatch shard."""
    return RolloutGroup(
        prompt_ids=list(g.prompt_token_ids),
        completion_ids=completion_ids(g),
        behavior_logprobs=behavior_logprobs(g),
        rewards=list(g.rewards),
        policy_version=g.policy_version,
    )


def group_from_completions(
    prompt_ids: list[int], completions: Sequence[SampledCompletion], rewards: list[float], version: int
) -> RolloutGroup:
    """Solo training's group: the engine's completions, scored in the same process."""
    return RolloutGroup(
        prompt_ids=prompt_ids,
        completion_ids=[c.token_ids for c in completions],
        behavior_logprobs=[c.logprobs for c in completions],
        rewards=rewards,
        policy_version=version,
    )


# ---------------------------------------------------------------- trainer groups → batch

Piece = tuple[RolloutGroup, list[float], list[int]]
"""A group, the advantage of each of its completions, and which of its completions to batch."""


def micro_batch(pieces: Sequence[Piece], pad_id: int) -> MicroBatch:
    """One micro-batch of these pieces: prompt k is pieces[k]'s, its chosen completions follow it."""
    index, comps, behavior, advs, versions = [], [], [], [], []
    for k, (g, adv_G, rows) in enumerate(pieces):
        for i in rows:
            index.append(k)
            comps.append(g.completion_ids[i])
            behavior.append(g.behavior_logprobs[i])
            advs.append(adv_G[i])
            versions.append(g.policy_version)
    prompts = [g.prompt_ids for g, _, _ in pieces]
    return collate(prompts, index, comps, behavior, advs, versions, pad_id)
