"""The GRPO policy loss, built from small per-token pieces and one aggregation.

Shapes: B sequences (completions), T completion tokens (right-padded), V vocabulary.
    logits_BTV           model outputs at the positions that predict each completion token
    tokens_BT            completion token ids (padding holds any valid id)
    mask_BT              1.0 for real completion tokens, 0.0 for padding
    logp_BT              log-probs of the policy being trained (carries the gradient)
    prox_logp_BT         the trainer's own log-probs under the policy version that sampled the rollout
    behavior_logp_BT     log-probs reported by the engine that sampled (vLLM, transformers, ...)
    ref_logp_BT          log-probs of the frozen reference model (for the KL penalty)
    adv_B                one advantage per sequence, shared by all its tokens

Per token, with r = exp(logp - prox_logp) and A the sequence's advantage:
    surrogate  = -min(min(r, delta) * A, clip(r, 1 - epsilon, 1 + epsilon_high) * A)
                 (PPO clip; DAPO clip-higher when epsilon_high > epsilon; INTELLECT-2's delta caps
                 the unclipped ratio so a negative advantage cannot blow the loss up)
    tis_w      = min(exp(prox_logp - behavior_logp), tis_cap), no gradient
                 (truncated importance sampling, Yao et al. 2025: the sampler's and trainer's
                 numerics differ even at the same weights)
    kl         = exp(ref - logp) - (ref - logp) - 1   (k3 estimator, DeepSeekMath eq. 4)
    x          = tis_w * surrogate + beta * kl
The loss is an aggregation of x over the real tokens (AGGREGATORS, config field `loss_type`), always
normalised by counts of the WHOLE step's batch (`LossNorm`), so the losses of disjoint micro-batches
and data-parallel shards add up to the full-batch loss, and so do their gradients.

Where we deviate from the papers:
  * One optimiser update per batch (no PPO epochs over the same rollouts). The ratio is taken against
    `prox_logp` -- the trainer's own log-probs at the rollout's policy version -- so it is 1 unless the
    rollout is stale, and the clip only bites on rollouts sampled by an older policy.
  * A rollout so stale that the trainer no longer holds its weights has no `prox_logp`; the ratio is
    then taken against the sampler's `behavior_logp` and the TIS weight is 1.
  * The KL penalty is added per token inside the aggregation, as DeepSeekMath does, not folded into
    the reward as in InstructGPT-style PPO.
"""

import math
from dataclasses import dataclass

import torch

from swarmgrpo.core.errors import ConfigError
from swarmgrpo.trainer.grpo.registry import Registry

# --------------------------------------------------------------------------- log-probs


def token_logprobs(
    logits_BTV: torch.Tensor, tokens_BT: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """float32 log softmax(logits / temperature) at `tokens_BT`.

    Computed as logit[token] - logsumexp(logits), never materialising a full [B, T, V] log-softmax.
    Low-precision logits are upcast one sequence at a time, bounding the extra float32 memory to
    [T, V] when no gradient is tracked (under autograd, logsumexp keeps each upcast chunk for
    backward whatever we do).
    """
    if temperature <= 0:
        raise ConfigError("temperature", f"must be > 0, got {temperature}", "use the sampling temperature")
    if logits_BTV.dtype == torch.float32:
        return _logprobs_f32(logits_BTV, tokens_BT, temperature)
    rows_T = [
        _logprobs_f32(logits_TV.float(), tokens_T, temperature)
        for logits_TV, tokens_T in zip(logits_BTV, tokens_BT, strict=True)
    ]
    if not rows_T:
        return torch.zeros(tokens_BT.shape, dtype=torch.float32, device=logits_BTV.device)
    return torch.stack(rows_T)


def _logprobs_f32(logits_xV: torch.Tensor, tokens_x: torch.Tensor, temperature: float) -> torch.Tensor:
    if temperature != 1.0:
        logits_xV = logits_xV / temperature
    picked_x = logits_xV.gather(-1, tokens_x.long().unsqueeze(-1)).squeeze(-1)
    return picked_x - torch.logsumexp(logits_xV, dim=-1)


# --------------------------------------------------------------------------- per-token terms


def clipped_surrogate(
    logp_BT: torch.Tensor,
    prox_logp_BT: torch.Tensor,
    adv_B: torch.Tensor,
    epsilon: float,
    epsilon_high: float | None = None,
    delta: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token clipped policy-gradient loss and where the clip was active.

    With r = exp(logp - prox_logp) (prox_logp is treated as a constant):
        unclipped_BT = min(r, delta) * A          (just r * A when delta is None)
        clipped_term = clip(r, 1 - epsilon, 1 + epsilon_high) * A
        clipped_BT   = clipped_term < unclipped_BT          (bool, strict)
        loss_BT      = -where(clipped_BT, clipped_term, unclipped_BT)  ==  -min(unclipped, clipped)

    `clipped_BT` is exactly the set of tokens where the clip changed the objective: A > 0 and
    r > 1 + epsilon_high, or A < 0 and r < 1 - epsilon. There the objective is constant in r, so
    the token gives no gradient. Tokens whose gradient is zeroed by the delta cap instead (A < 0 and
    r > delta) are not counted. At a tie the unclipped term (and its gradient) is used.
    """
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    if not 0 < epsilon < 1:
        raise ConfigError("epsilon", f"must be in (0, 1), got {epsilon}", "a usual value is 0.2")
    if epsilon_high <= 0:
        raise ConfigError("epsilon_high", f"must be > 0, got {epsilon_high}", "DAPO uses 0.28")
    if delta is not None and delta <= 1 + epsilon_high:
        raise ConfigError(
            "delta",
            f"must exceed 1 + epsilon_high = {1 + epsilon_high}, got {delta}",
            "INTELLECT-2 uses 4.0, or unset it",
        )
    log_ratio_BT = logp_BT - prox_logp_BT.detach()
    if delta is not None:
        # Above delta both terms are constant in r; capping before exp keeps their zero gradient exact
        # (after exp, 0 * inf is nan) and r finite whatever log-probs a node claimed.
        log_ratio_BT = log_ratio_BT.clamp(max=math.log(delta))
    ratio_BT = torch.exp(log_ratio_BT)
    adv_B1 = adv_B.detach().unsqueeze(-1)
    capped_BT = ratio_BT if delta is None else ratio_BT.clamp(max=delta)
    unclipped_BT = capped_BT * adv_B1
    clipped_term_BT = ratio_BT.clamp(1 - epsilon, 1 + epsilon_high) * adv_B1
    clipped_BT = clipped_term_BT < unclipped_BT
    loss_BT = -torch.where(clipped_BT, clipped_term_BT, unclipped_BT)
    return loss_BT, clipped_BT


def tis_weight(prox_logp_BT: torch.Tensor, behavior_logp_BT: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Truncated importance weight min(exp(prox - behavior), cap), without gradient; ones if cap is None."""
    if cap is None:
        return torch.ones_like(prox_logp_BT).detach()
    if cap <= 0:
        raise ConfigError("tis_cap", f"must be > 0, got {cap}", "Yao et al. use 2.0, or unset it")
    with torch.no_grad():
        return torch.exp(prox_logp_BT - behavior_logp_BT).clamp(max=cap)


def k3_kl(logp_BT: torch.Tensor, ref_logp_BT: torch.Tensor) -> torch.Tensor:
    """k3 estimate of KL(policy || ref): exp(d) - d - 1 with d = ref - logp; >= 0, zero iff equal.

    expm1 keeps it accurate (and non-negative) for small d; `ref_logp_BT` is treated as a constant.
    """
    d_BT = ref_logp_BT.detach() - logp_BT
    return (torch.expm1(d_BT) - d_BT).clamp(min=0.0)


# --------------------------------------------------------------------------- aggregation


@dataclass(frozen=True)
class LossNorm:
    """Counts of the whole step's batch (all micro-batches, all workers) that every loss divides by.

    Build it once per step from the full batch's mask (`LossNorm.of`), or add the norms of shards
    (`a + b`), and hand the same one to every micro-batch: the micro-batch losses then sum exactly to
    the full-batch loss.
    """

    num_sequences: int
    num_tokens: int
    max_completion_length: int

    def __post_init__(self) -> None:
        if self.num_sequences < 1 or self.num_tokens < 0 or self.max_completion_length < 1:
            raise ValueError(f"LossNorm needs >= 1 sequence, >= 0 tokens and a positive length, got {self}")

    @classmethod
    def of(cls, mask_BT: torch.Tensor, max_completion_length: int) -> "LossNorm":
        return cls(
            num_sequences=int(mask_BT.shape[0]),
            num_tokens=int((mask_BT != 0).sum().item()),
            max_completion_length=int(max_completion_length),
        )

    def denominator(self, loss_type: str) -> float:
        """What the `loss_type` aggregation divides by. The gradient of a batch made of shards is the
        mean of the shards' own-normalised gradients weighted by this (what gradient workers use)."""
        if loss_type == "grpo":
            return float(self.num_sequences)
        if loss_type == "dapo":
            return float(max(self.num_tokens, 1))
        if loss_type == "dr_grpo":
            return float(self.num_sequences * self.max_completion_length)
        raise ValueError(
            f"no shard weight is known for loss_type '{loss_type}': add it to LossNorm.denominator"
        )

    def __add__(self, other: "LossNorm") -> "LossNorm":
        if self.max_completion_length != other.max_completion_length:
            raise ValueError(
                f"cannot add LossNorms with max_completion_length {self.max_completion_length} "
                f"and {other.max_completion_length}"
            )
        return LossNorm(
            self.num_sequences + other.num_sequences,
            self.num_tokens + other.num_tokens,
            self.max_completion_length,
        )


AGGREGATORS: Registry = Registry("loss_type")


def _masked_sum_B(x_BT: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    # where, not x * mask: padding may hold inf/nan, and 0 * inf is nan
    return torch.where(mask_BT != 0, x_BT, torch.zeros_like(x_BT)).sum(dim=-1)


@AGGREGATORS.register("grpo")
def grpo_aggregate(x_BT: torch.Tensor, mask_BT: torch.Tensor, norm: LossNorm) -> torch.Tensor:
    """Mean over each sequence's tokens, then sum / num_sequences (DeepSeekMath's 1/G sum 1/|o_i|)."""
    len_B = (mask_BT != 0).sum(dim=-1).clamp(min=1)
    return (_masked_sum_B(x_BT, mask_BT) / len_B).sum() / norm.num_sequences


@AGGREGATORS.register("dapo")
def dapo_aggregate(x_BT: torch.Tensor, mask_BT: torch.Tensor, norm: LossNorm) -> torch.Tensor:
    """Token-level mean over the whole batch (DAPO): long sequences weigh in proportion to length."""
    return _masked_sum_B(x_BT, mask_BT).sum() / max(norm.num_tokens, 1)


@AGGREGATORS.register("dr_grpo")
def dr_grpo_aggregate(x_BT: torch.Tensor, mask_BT: torch.Tensor, norm: LossNorm) -> torch.Tensor:
    """Sum / (num_sequences * max_completion_length): a constant normaliser (Dr. GRPO, no length bias)."""
    return _masked_sum_B(x_BT, mask_BT).sum() / (norm.num_sequences * norm.max_completion_length)


# --------------------------------------------------------------------------- composition


def grpo_loss(
    logp_BT: torch.Tensor,
    behavior_logp_BT: torch.Tensor,
    adv_B: torch.Tensor,
    mask_BT: torch.Tensor,
    norm: LossNorm,
    *,
    loss_type: str,
    epsilon: float,
    epsilon_high: float | None = None,
    delta: float | None = None,
    tis_cap: float | None = None,
    prox_logp_BT: torch.Tensor | None = None,
    ref_logp_BT: torch.Tensor | None = None,
    beta: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """This micro-batch's share of the step's loss, and its share of the logging metrics.

    `prox_logp_BT` defaults to `behavior_logp_BT` (a stale rollout whose policy the trainer no longer
    holds). Padding positions are zeroed before any arithmetic, so whatever they hold (even inf or
    nan) changes neither the loss nor its gradient.

    Metrics are detached scalars, token means over the step's `norm.num_tokens` whatever the
    loss_type, so like the loss they are micro-batch contributions that sum to the full-batch value:
        clip_frac   fraction of tokens where the clip was active (see `clipped_surrogate`)
        tis_mean    mean truncated-IS weight
        kl          mean k3 KL to the reference (only when `ref_logp_BT` is given, even with beta = 0)
    """
    if logp_BT.dim() != 2 or adv_B.shape != logp_BT.shape[:1] or mask_BT.shape != logp_BT.shape:
        raise ValueError(
            f"shape mismatch: logp {tuple(logp_BT.shape)}, adv {tuple(adv_B.shape)}, mask {tuple(mask_BT.shape)}; "
            "want [B, T], [B], [B, T]"
        )
    if beta < 0:
        raise ConfigError("beta", f"must be >= 0, got {beta}", "use 0 to disable the KL penalty")
    if beta > 0 and ref_logp_BT is None:
        raise ValueError(
            f"beta={beta} needs ref_logp_BT (reference-model log-probs); pass them or set beta=0"
        )
    aggregate = AGGREGATORS.get(loss_type)

    pad_BT = mask_BT == 0
    logp_BT = logp_BT.masked_fill(pad_BT, 0.0)
    behavior_logp_BT = behavior_logp_BT.detach().masked_fill(pad_BT, 0.0)
    prox_logp_BT = (
        behavior_logp_BT if prox_logp_BT is None else prox_logp_BT.detach().masked_fill(pad_BT, 0.0)
    )

    surrogate_BT, clipped_BT = clipped_surrogate(logp_BT, prox_logp_BT, adv_B, epsilon, epsilon_high, delta)
    tis_BT = tis_weight(prox_logp_BT, behavior_logp_BT, tis_cap)
    x_BT = tis_BT * surrogate_BT
    kl_BT = None
    if ref_logp_BT is not None:
        kl_BT = k3_kl(logp_BT, ref_logp_BT.detach().masked_fill(pad_BT, 0.0))
        if beta > 0:
            x_BT = x_BT + beta * kl_BT
    loss = aggregate(x_BT, mask_BT, norm)

    with torch.no_grad():
        metrics = {
            "clip_frac": dapo_aggregate(clipped_BT.to(x_BT.dtype), mask_BT, norm),
            "tis_mean": dapo_aggregate(tis_BT, mask_BT, norm),
        }
        if kl_BT is not None:
            metrics["kl"] = dapo_aggregate(kl_BT.detach(), mask_BT, norm)
    return loss, metrics
