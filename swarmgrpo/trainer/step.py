"""One GRPO optimizer step over rollout groups that may come from anywhere.

    step = GRPOStep(model, cfg, pad_id)
    metrics = step.train(groups)               # = compute_gradients + reduce + apply

`compute_gradients` accumulates the step's gradient in `.grad` (micro-batched, every micro-batch
normalised by the counts of the whole step, so the sum is the full-batch gradient); `reduce` is the
seam where a data-parallel group averages those gradients (identity when training alone); `apply`
clips, steps AdamW and bumps the policy version.

Off-policy handling: a group sampled at the trainer's current version gets prox_logp = the trainer's
own log-probs (detached, from the same forward pass), so the ratio is 1 and the TIS weight corrects
only the engine/trainer mismatch. A group sampled by an older version (bounded staleness) has its
ratio taken against the behavior log-probs that came with it.

Speed: with beta = 0 a group whose rewards are all equal has zero advantage and contributes exactly
nothing, so its forward/backward is skipped (it still counts in the normaliser, as in the paper).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from swarmgrpo.trainer.config import TrainConfig
from swarmgrpo.trainer.grpo import LossNorm, compute_advantages, group_stats, grpo_loss, token_logprobs
from swarmgrpo.trainer.rollouts import MicroBatch, RolloutGroup, collate

Reducer = Callable[[torch.nn.Module], None]


class GRPOStep:
    def __init__(
        self, model: torch.nn.Module, cfg: TrainConfig, pad_id: int, ref_model: torch.nn.Module | None = None
    ):
        if cfg.beta > 0 and ref_model is None:
            raise ValueError("beta > 0 needs a reference model")
        self.model = model
        self.cfg = cfg
        self.pad_id = pad_id
        self.ref_model = ref_model.eval().requires_grad_(False) if ref_model is not None else None
        self.version = 0
        self.autocast = torch.bfloat16 if cfg.dtype == "bfloat16" else None
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params,
            lr=cfg.learning_rate,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            weight_decay=cfg.weight_decay,
            fused=True,  # one kernel per tensor, no full-size temporaries: faster and lower peak memory
        )

    def train(self, groups: list[RolloutGroup], reduce: Reducer | None = None) -> dict[str, float]:
        t0 = time.perf_counter()
        metrics = self.compute_gradients(groups)
        if reduce is not None:
            reduce(self.model)
        metrics.update(self.apply())
        metrics["train_s"] = time.perf_counter() - t0
        return metrics

    def compute_gradients(self, groups: list[RolloutGroup], norm: LossNorm | None = None) -> dict[str, float]:
        """Accumulate this batch's gradient into `.grad`; `norm` defaults to this batch's own counts."""
        cfg = self.cfg
        rewards_PG = torch.tensor([g.rewards for g in groups], dtype=torch.float32)
        adv_PG = compute_advantages(rewards_PG, cfg.advantage_estimator)
        lengths = [len(c) for g in groups for c in g.completion_ids]
        if norm is None:
            norm = LossNorm(len(lengths), sum(lengths), cfg.max_completion_length)
        metrics = group_stats(rewards_PG)
        metrics["completion_len"] = sum(lengths) / len(lengths)
        totals: dict[str, float] = {"loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "tis_mean": 0.0}
        self.model.train()
        trained = [
            (g, adv_G) for g, adv_G in zip(groups, adv_PG.tolist(), strict=True) if self._trains(g, adv_G)
        ]
        for chunk in self._micro_batches(trained):
            for k, v in self._micro_step(self._collate(chunk), norm).items():
                totals[k] += v
        # grpo_loss reports token means over the whole step; re-base them on the tokens actually trained.
        trained_tokens = sum(len(c) for g, _ in trained for c in g.completion_ids)
        for k in ("kl", "clip_frac", "tis_mean"):
            totals[k] *= norm.num_tokens / trained_tokens if trained_tokens else 0.0
        metrics.update(totals)
        metrics["trained_sequences"] = sum(sum(1 for c in g.completion_ids if c) for g, _ in trained)
        return metrics

    def _trains(self, group: RolloutGroup, adv_G: list[float]) -> bool:
        """With beta = 0 a group whose advantages are all zero contributes exactly nothing."""
        return any(group.completion_ids) and (self.cfg.beta > 0 or any(adv_G))

    def _micro_batches(self, trained: list[tuple[RolloutGroup, list[float]]]):
        """Whole groups (they share one prompt forward), about micro_batch_size completions each."""
        chunk, size = [], 0
        for g, adv_G in sorted(trained, key=lambda x: len(x[0].prompt_ids)):
            if chunk and size + g.group_size > self.cfg.micro_batch_size:
                yield chunk
                chunk, size = [], 0
            chunk.append((g, adv_G))
            size += g.group_size
        if chunk:
            yield chunk

    def _collate(self, chunk: list[tuple[RolloutGroup, list[float]]]) -> MicroBatch:
        index, comps, behavior, advs, versions = [], [], [], [], []
        for k, (g, adv_G) in enumerate(chunk):
            for c, lp, a in zip(g.completion_ids, g.behavior_logprobs, adv_G, strict=True):
                if c:
                    index.append(k)
                    comps.append(c)
                    behavior.append(lp)
                    advs.append(a)
                    versions.append(g.policy_version)
        prompts = [g.prompt_ids for g, _ in chunk]
        return collate(prompts, index, comps, behavior, advs, versions, self.pad_id)

    def _micro_step(self, mb: MicroBatch, norm: LossNorm) -> dict[str, float]:
        cfg = self.cfg
        logp_BT = self._logprobs(self.model, mb)
        current_B = (mb.versions_B == self.version).unsqueeze(-1)
        prox_BT = torch.where(current_B, logp_BT.detach(), mb.behavior_logp_BT)
        ref_BT = None
        if self.ref_model is not None:
            with torch.no_grad():
                ref_BT = self._logprobs(self.ref_model, mb)
        loss, metrics = grpo_loss(
            logp_BT,
            mb.behavior_logp_BT,
            mb.advantages_B,
            mb.completion_mask_BT,
            norm,
            loss_type=cfg.loss_type,
            epsilon=cfg.epsilon,
            epsilon_high=cfg.epsilon_high,
            delta=cfg.delta,
            tis_cap=cfg.tis_cap,
            prox_logp_BT=prox_BT,
            ref_logp_BT=ref_BT,
            beta=cfg.beta,
        )
        loss.backward()
        out = {k: float(v) for k, v in metrics.items()}
        out["loss"] = float(loss.detach())
        return out

    def _logprobs(self, model: torch.nn.Module, mb: MicroBatch) -> torch.Tensor:
        """logp_BT of the completion tokens: one forward of the K prompts, one of the B completions."""
        t = mb.completion_ids_BT.shape[1]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast is not None):
            out = model(
                input_ids=mb.prompt_ids_KP,
                attention_mask=mb.prompt_mask_KP,
                position_ids=(mb.prompt_mask_KP.cumsum(-1) - 1).clamp(min=0),
                use_cache=True,
                logits_to_keep=1,
            )
            logits_BTV = out.logits.index_select(0, mb.group_index_B)
            if t > 1:
                cache = out.past_key_values
                cache.reorder_cache(mb.group_index_B)  # K prompt caches -> one per completion
                inputs_BT = mb.completion_ids_BT[:, :-1]
                mask_BT = mb.completion_mask_BT[:, :-1].long()
                positions_BT = mb.prompt_len_K.index_select(0, mb.group_index_B)[:, None] + torch.arange(
                    t - 1
                )
                rest = model(
                    input_ids=inputs_BT,
                    attention_mask=torch.cat(
                        [mb.prompt_mask_KP.index_select(0, mb.group_index_B), mask_BT], 1
                    ),
                    position_ids=positions_BT,
                    past_key_values=cache,
                    use_cache=True,
                ).logits
                logits_BTV = torch.cat([logits_BTV, rest], dim=1)
        return token_logprobs(logits_BTV, mb.completion_ids_BT, self.cfg.temperature)

    def apply(self) -> dict[str, float]:
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        max_norm = self.cfg.max_grad_norm or float("inf")  # inf: measure the norm, clip nothing
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.version += 1
        return {"grad_norm": grad_norm}
