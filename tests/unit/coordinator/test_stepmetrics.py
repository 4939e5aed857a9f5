"""A step's published metrics combine its gradient workers' shard reports as if computed on the union."""

import pytest
import torch

from swarmgrpo.coordinator.stepmetrics import combine
from swarmgrpo.trainer.grpo import group_stats


def shard_report(
    rewards: torch.Tensor, tokens: list[int], loss: float, weight: float, seconds: float
) -> dict:
    report = group_stats(rewards)
    report.update(
        completions=float(rewards.numel()),
        completion_tokens=float(sum(tokens)),
        trained_sequences=float(rewards.numel()),
        completion_len=sum(tokens) / len(tokens),
        loss=loss,
        kl=0.01 * len(tokens),
        shard_weight=weight,
        train_s=seconds,
        grad_norm=0.7,
    )
    return report


def test_two_shards_combine_into_the_union_s_statistics():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 4, generator=g), torch.rand(1, 4, generator=g) + 2.0
    tokens_a, tokens_b = [5] * 12, [9] * 4
    ra = shard_report(a, tokens_a, loss=0.3, weight=12.0, seconds=4.0)
    rb = shard_report(b, tokens_b, loss=-0.1, weight=4.0, seconds=6.0)
    union = group_stats(torch.cat([a, b]))
    out = combine([ra, rb])
    assert out["reward_mean"] == pytest.approx(union["reward_mean"])
    assert out["reward_std"] == pytest.approx(union["reward_std"])
    assert out["frac_zero_std"] == pytest.approx(union["frac_zero_std"])
    assert out["group_std_mean"] == pytest.approx(union["group_std_mean"])
    assert out["completion_len"] == pytest.approx((60 + 36) / 16)
    assert out["completions"] == 16 and out["completion_tokens"] == 96 and out["trained_sequences"] == 16
    assert out["loss"] == pytest.approx((0.3 * 12 - 0.1 * 4) / 16)
    assert out["kl"] == pytest.approx((0.12 * 60 + 0.04 * 36) / 96)
    assert out["train_s"] == 6.0 and out["grad_norm"] == pytest.approx(0.7)


def test_one_report_is_published_as_it_is_and_a_key_missing_from_one_shard_is_left_out():
    r = shard_report(torch.ones(1, 4), [3] * 4, 0.0, 4.0, 1.0)
    assert combine([r]) == r
    partial = dict(r)
    del partial["kl"]
    assert "kl" not in combine([r, partial])
