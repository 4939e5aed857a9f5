"""One step's metrics from the reports of its gradient workers, each about its own shard.

A worker reports the statistics of the rollouts it trained on (reward mean and spread, loss, KL,
clip fraction, ...) with its shard's sizes (`completions`, `completion_tokens`, `shard_weight`).
The published version's metrics are those of the whole step's batch, combined from them:

- counts are summed (`completions`, `completion_tokens`, `trained_sequences`, `shard_weight`,
  `set_aside_groups`);
- seconds are the slowest worker's (the step took as long as its slowest shard);
- `reward_std` is pooled from each shard's mean and unbiased spread, so it equals the spread over
  the union of the shards' rewards;
- `loss` is averaged by `shard_weight`, the weight with which the workers averaged their gradients
  (so it is the loss of the whole batch under the run's loss normaliser);
- token means (`kl`, `clip_frac`, `tis_mean`) by `completion_tokens`;
- every other figure by `completions` (per-completion and per-group means, and figures that every
  worker shares, such as `grad_norm` after the all-reduce, which any weighting leaves as they are).

A report that lacks the sizes (one worker, or a node of an older version) counts as one completion.
"""

from __future__ import annotations

SUMMED = frozenset(
    {"completions", "completion_tokens", "trained_sequences", "shard_weight", "set_aside_groups"}
)
TOKEN_MEANS = frozenset({"kl", "clip_frac", "tis_mean"})


def combine(reports: list[dict[str, float]]) -> dict[str, float]:
    if len(reports) == 1:
        return dict(reports[0])
    keys = [k for k in reports[0] if all(k in r for r in reports)]
    out: dict[str, float] = {}
    for k in keys:
        values = [r[k] for r in reports]
        if k in SUMMED:
            out[k] = sum(values)
        elif k.endswith("_s"):
            out[k] = max(values)
        elif k == "reward_std":
            out[k] = _pooled_std(reports)
        else:
            weight = (
                "shard_weight" if k == "loss" else "completion_tokens" if k in TOKEN_MEANS else "completions"
            )
            out[k] = _weighted_mean(values, [r.get(weight, 1.0) for r in reports])
    return out


def _weighted_mean(values: list[float], weights: list[float]) -> float:
    total = sum(weights)
    if total <= 0:
        return sum(values) / len(values)
    return sum(v * w for v, w in zip(values, weights, strict=True)) / total


def _pooled_std(reports: list[dict[str, float]]) -> float:
    n = [r.get("completions", 1.0) for r in reports]
    total = sum(n)
    if total <= 1:
        return 0.0
    mean = _weighted_mean([r["reward_mean"] for r in reports], n)
    squares = sum(
        (k - 1) * r["reward_std"] ** 2 + k * (r["reward_mean"] - mean) ** 2
        for k, r in zip(n, reports, strict=True)
    )
    return (squares / (total - 1)) ** 0.5
