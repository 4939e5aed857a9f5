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

Numbers from nodes: a group whose loss is not finite (a NaN behavior log-prob, a ratio that
overflows) is masked out of its micro-batch before the backward; a gradient that turns non-finite
all the same is computed again without the groups of the micro-batch that made it so. Either way
the groups are named in `set_aside` and the rest of the step trains. A non-finite gradient is never
applied (see `apply`).

Speed: with beta = 0 a group whose rewards are all equal has zero advantage and contributes exactly
nothing, so its forward/backward is skipped (it still counts in the normaliser, as in the paper).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TypeVar

import torch

from swarmgrpo.core.device import fp8_capable
from swarmgrpo.core.errors import UserError
from swarmgrpo.trainer.config import TrainConfig
from swarmgrpo.trainer.fp8 import fp8_training_pays, use_fp8_linears
from swarmgrpo.trainer.fusedblocks import fuse_blocks
from swarmgrpo.trainer.grpo import LossNorm, compute_advantages, group_stats, grpo_loss, token_logprobs
from swarmgrpo.trainer.headgrad import aliased_leaves, head_logprobs, lookup, supports_fused_head
from swarmgrpo.trainer.heap import release_large_frees
from swarmgrpo.trainer.models import model_device
from swarmgrpo.trainer.rollouts import MicroBatch, RolloutGroup, micro_batch

Reducer = Callable[[torch.nn.Module], None]
R = TypeVar("R")


class GRPOStep:
    def __init__(
        self, model: torch.nn.Module, cfg: TrainConfig, pad_id: int, ref_model: torch.nn.Module | None = None
    ):
        if cfg.beta > 0 and ref_model is None:
            raise ValueError("beta > 0 needs a reference model")
        self.model = model
        self.device = model_device(model)  # the batches follow the model
        if cfg.fp8 == "on" and self.device.type == "cuda" and not fp8_capable(self.device):
            raise UserError(
                f'fp8 = "on", but this GPU (compute capability {torch.cuda.get_device_capability(self.device)}) '
                'has no FP8 matmul (it needs 8.9 or more); set fp8 = "auto" or "off"'
            )
        self.fp8 = cfg.fp8 == "on" or (cfg.fp8 == "auto" and fp8_training_pays(self.device))
        if self.fp8:  # before fuse_blocks, which leaves an MLP of FP8 linears to them
            use_fp8_linears(model, backend="scaled_mm")
        release_large_frees()  # freed activations leave the process (see heap)
        fuse_blocks(model)  # RMSNorm, MLP and attention that keep fewer activations (see fusedblocks)
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
        # Gradient buffers live as long as the step: allocated once (pages are touched on first use)
        # and zeroed in place, they are not re-placed among each step's activations, which keeps the
        # allocator's fragmentation, and so the peak RSS, ~80 MB lower for SmolLM2-135M.
        for p in params:
            p.grad = torch.zeros_like(p)
        self._pending = False  # whether .grad holds anything since the last apply()
        self.set_aside: list[int] = []
        """Indices (into the last compute_gradients' groups) of the groups whose loss or gradient was
        not finite: they contributed nothing to the step."""

    def train(self, groups: list[RolloutGroup], reduce: Reducer | None = None) -> dict[str, float]:
        t0 = time.perf_counter()
        metrics = self.compute_gradients(groups)
        if reduce is not None:
            self.reduce(reduce, self.model)
        metrics.update(self.apply())
        metrics["train_s"] = time.perf_counter() - t0
        return metrics

    def reduce(self, reducer: Callable[..., R], *args) -> R:
        """`reducer(*args)`: the data-parallel seam that replaces `.grad` by the group's gradient; returns
        what it returns. apply() then steps with that gradient even when this shard trained nothing
        (it held only zero-advantage groups): every replica of the group must take the same step."""
        out = reducer(*args)
        self._pending = True
        return out

    def norm_of(self, groups: list[RolloutGroup]) -> LossNorm:
        """The loss normaliser of these groups alone (all their completions, trained or not)."""
        lengths = [len(c) for g in groups for c in g.completion_ids]
        return LossNorm(len(lengths), sum(lengths), self.cfg.max_completion_length)

    def shard_weight(self, groups: list[RolloutGroup]) -> float:
        """This shard's weight when gradient workers average their own-normalised gradients."""
        return self.norm_of(groups).denominator(self.cfg.loss_type)

    def compute_gradients(self, groups: list[RolloutGroup], norm: LossNorm | None = None) -> dict[str, float]:
        """Accumulate this batch's gradient into `.grad`; `norm` defaults to this batch's own counts."""
        cfg = self.cfg
        rewards_PG = torch.tensor([g.rewards for g in groups], dtype=torch.float32)
        adv_PG = compute_advantages(rewards_PG, cfg.advantage_estimator)
        lengths = [len(c) for g in groups for c in g.completion_ids]
        if norm is None:
            norm = self.norm_of(groups)
        metrics = group_stats(rewards_PG)
        metrics["completion_len"] = sum(lengths) / len(lengths)
        metrics["completions"], metrics["completion_tokens"] = float(len(lengths)), float(sum(lengths))
        self.model.train()
        trained = [
            (g, adv_G) for g, adv_G in zip(groups, adv_PG.tolist(), strict=True) if self._trains(g, adv_G)
        ]
        totals, trained, set_aside = self._accumulate(trained, norm)
        self.set_aside = sorted(i for i, g in enumerate(groups) if id(g) in set_aside)
        # grpo_loss reports token means over the whole step; re-base them on the tokens actually trained.
        trained_tokens = sum(len(c) for g, _ in trained for c in g.completion_ids)
        for k in ("kl", "clip_frac", "tis_mean"):
            totals[k] *= norm.num_tokens / trained_tokens if trained_tokens else 0.0
        metrics.update(totals)
        metrics["trained_sequences"] = sum(sum(1 for c in g.completion_ids if c) for g, _ in trained)
        metrics["set_aside_groups"] = float(len(self.set_aside))
        return metrics

    def _accumulate(self, trained: list[tuple[RolloutGroup, list[float]]], norm: LossNorm):
        """Backward every micro-batch into `.grad`, setting aside the groups whose numbers are not finite.

        A group whose loss is not finite is masked out of its micro-batch before the backward. A
        gradient that turns non-finite all the same (every loss was finite) is found by computing the
        step again, checking after each micro-batch (a pass over `.grad`, so only then): that
        micro-batch's groups, which cannot be told apart, are set aside and the rest computed again.
        Returns the summed metrics, the groups trained and the ids of those set aside.
        """
        set_aside: set[int] = set()
        careful = False
        while True:
            totals = dict.fromkeys(("loss", "kl", "clip_frac", "tis_mean"), 0.0)
            live = [(g, a) for g, a in trained if id(g) not in set_aside]
            done: set[int] = set()
            for chunk in self._micro_batches(live):
                ids = {id(g) for g, _, _ in chunk}
                self._pending = True
                out, bad = self._micro_step(
                    micro_batch(chunk, self.pad_id).to(self.device), norm, [g for g, _, _ in chunk]
                )
                set_aside |= bad
                if careful and not self._grads_finite():
                    set_aside |= ids
                    break
                if bad & done:  # a piece of a bad group was trained already: again without it
                    break
                done |= ids
                for k, v in out.items():
                    totals[k] += v
            else:
                if careful or self._grads_finite():
                    return totals, [(g, a) for g, a in live if id(g) not in set_aside], set_aside
                careful = True
            self.discard()

    def _grads_finite(self) -> bool:
        grads = [p.grad for group in self.optimizer.param_groups for p in group["params"]]
        return bool(torch.stack(torch._foreach_norm(grads)).isfinite().all())

    def _trains(self, group: RolloutGroup, adv_G: list[float]) -> bool:
        """With beta = 0 a group whose advantages are all zero contributes exactly nothing."""
        return any(group.completion_ids) and (self.cfg.beta > 0 or any(adv_G))

    def _micro_batches(self, trained: list[tuple[RolloutGroup, list[float]]]):
        """Micro-batches of at most micro_batch_size completions.

        A group stays whole when it fits (its completions share one prompt forward); a group larger
        than micro_batch_size is split into pieces that each re-run the prompt, trading a little
        compute for activation memory. Yields lists of (group, advantages, completion indices).
        (Packing the remainders of split groups together saves passes but not memory: a pass's
        activations grow with its prompts' tokens too, so such a pass is as large as a whole group.)
        """
        size_limit = self.cfg.micro_batch_size
        pieces = []
        for g, adv_G in sorted(trained, key=lambda x: len(x[0].prompt_ids)):
            live = [i for i, c in enumerate(g.completion_ids) if c]
            pieces += [(g, adv_G, live[i : i + size_limit]) for i in range(0, len(live), size_limit)]
        chunk, size = [], 0
        for piece in pieces:
            if chunk and size + len(piece[2]) > size_limit:
                yield chunk
                chunk, size = [], 0
            chunk.append(piece)
            size += len(piece[2])
        if chunk:
            yield chunk

    def _micro_step(
        self, mb: MicroBatch, norm: LossNorm, chunk_groups: list[RolloutGroup]
    ) -> tuple[dict[str, float], set[int]]:
        """Backward one micro-batch; returns its metrics and the ids of its groups whose loss was not
        finite, which were masked out before the backward (so their gradient never reaches `.grad`)."""
        logp_BT = self._logprobs(self.model, mb)
        current_B = (mb.versions_B == self.version).unsqueeze(-1)
        prox_BT = torch.where(current_B, logp_BT.detach(), mb.behavior_logp_BT)
        ref_BT = None
        if self.ref_model is not None:
            with torch.no_grad():
                ref_BT = self._logprobs(self.ref_model, mb)

        def loss_of(mask_BT: torch.Tensor):
            return grpo_loss(
                logp_BT,
                mb.behavior_logp_BT,
                mb.advantages_B,
                mask_BT,
                norm,
                loss_type=self.cfg.loss_type,
                epsilon=self.cfg.epsilon,
                epsilon_high=self.cfg.epsilon_high,
                delta=self.cfg.delta,
                tis_cap=self.cfg.tis_cap,
                prox_logp_BT=prox_BT,
                ref_logp_BT=ref_BT,
                beta=self.cfg.beta,
            )

        mask_BT = mb.completion_mask_BT
        loss, metrics = loss_of(mask_BT)
        bad: set[int] = set()
        if not torch.isfinite(loss):
            bad_K = self._non_finite_groups(loss_of, mb)
            bad = {id(chunk_groups[k]) for k in bad_K}
            keep_B1 = ~torch.isin(mb.group_index_B, torch.tensor(bad_K, device=mask_BT.device)).unsqueeze(-1)
            loss, metrics = loss_of(mask_BT * keep_B1)
        loss.backward()
        out = {k: float(v) for k, v in metrics.items()}
        out["loss"] = float(loss.detach())
        return out, bad

    @staticmethod
    def _non_finite_groups(loss_of, mb: MicroBatch) -> list[int]:
        """The micro-batch's groups (0..K-1) that have a completion whose loss alone is not finite."""
        bad_K = set()
        with torch.no_grad():
            for b in range(mb.completion_ids_BT.shape[0]):
                only_b = torch.zeros_like(mb.completion_mask_BT)
                only_b[b] = mb.completion_mask_BT[b]
                if not torch.isfinite(loss_of(only_b)[0]):
                    bad_K.add(int(mb.group_index_B[b]))
        return sorted(bad_K)

    def _logprobs(self, model: torch.nn.Module, mb: MicroBatch) -> torch.Tensor:
        """logp_BT of the completion tokens: one forward of the K prompts, one of the B completions.

        The prompts' context (all tokens but the last) is run once through the decoder, and its KV
        cache shared by the completions; each completion's forward starts at its prompt's last token.
        The vocabulary matrix is used twice, by one lookup of all ids and one head over the
        completions; on supported models both add their gradient straight into `.grad` and the head
        works chunk by chunk (see `headgrad`), which bounds the backward peak at SmolLM2's size by a
        few hundred MB less than plain autograd.
        """
        k, p = mb.prompt_ids_KP.shape
        b, t = mb.completion_ids_BT.shape
        index_B = mb.group_index_B
        context_KC, context_mask_KC = mb.prompt_ids_KP[:, :-1], mb.prompt_mask_KP[:, :-1]
        last_B1 = mb.prompt_ids_KP[:, -1:].index_select(0, index_B)
        inputs_BT = torch.cat([last_B1, mb.completion_ids_BT[:, :-1]], 1)
        ids = torch.cat([context_KC.reshape(-1), inputs_BT.reshape(-1)])
        fused = supports_fused_head(model)
        if fused:
            embeds = lookup(ids, model.get_input_embeddings().weight)
        else:
            embeds = model.get_input_embeddings()(ids)
        context_KCH = embeds[: context_KC.numel()].view(k, p - 1, -1)
        inputs_BTH = embeds[context_KC.numel() :].view(b, t, -1)
        device = mb.prompt_ids_KP.device
        ones_B1 = torch.ones(b, 1, dtype=torch.long, device=device)
        mask_BT = torch.cat([ones_B1, mb.completion_mask_BT[:, :-1].long()], 1)
        positions_BT = (mb.prompt_len_K - 1).index_select(0, index_B)[:, None] + torch.arange(
            t, device=device
        )
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.autocast is not None):
            # RolloutGroup guarantees >= 2 prompt tokens, so every prompt has a context to cache.
            decoder = model.base_model
            context = dict(
                inputs_embeds=context_KCH,
                attention_mask=context_mask_KC,
                position_ids=(context_mask_KC.cumsum(-1) - 1).clamp(min=0),
                use_cache=True,
            )
            if torch.is_grad_enabled():  # second use of every weight: hand gradients over early
                out = torch.func.functional_call(decoder, aliased_leaves(decoder), (), context, strict=False)
            else:
                out = decoder(**context)
            cache = out.past_key_values
            cache.reorder_cache(index_B)  # K prompt caches -> one per completion
            mask_BT = torch.cat([context_mask_KC.index_select(0, index_B), mask_BT], 1)
            inputs = dict(
                inputs_embeds=inputs_BTH,
                attention_mask=mask_BT,
                position_ids=positions_BT,
                past_key_values=cache,
                use_cache=True,
            )
            if fused:
                hidden_BTH = model.base_model(**inputs).last_hidden_state
                head = model.get_output_embeddings().weight
                return head_logprobs(hidden_BTH, head, mb.completion_ids_BT, self.cfg.temperature)
            logits_BTV = model(**inputs).logits
        return token_logprobs(logits_BTV, mb.completion_ids_BT, self.cfg.temperature)

    def discard(self) -> None:
        """Forget the accumulated gradient (a gradient worker dropped from its step)."""
        self.optimizer.zero_grad(set_to_none=False)
        self._pending = False

    def apply(self) -> dict[str, float]:
        """Clip, step AdamW, zero the gradients, bump the version.

        A step that trained nothing (every group had zero advantage, and no peer's gradient arrived
        through `reduce`) leaves the weights and AdamW's moments as they are, as autograd's `None`
        gradients would: it only bumps the version. So does a gradient whose norm is not finite: it is
        never applied (`step_skipped`); replicas of a group hold the same reduced gradient and all skip.
        """
        self.version += 1
        if not self._pending:
            return {"grad_norm": 0.0}
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        max_norm = self.cfg.max_grad_norm or float("inf")  # inf: measure the norm, clip nothing
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        if not math.isfinite(grad_norm):
            self.discard()
            return {"grad_norm": 0.0, "step_skipped": 1.0}
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=False)
        self._pending = False
        return {"grad_norm": grad_norm}
