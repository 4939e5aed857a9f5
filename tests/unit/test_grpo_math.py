"""GRPO math against values derived by hand (the arithmetic is in the comments).

Legend: P prompts, G group size, B sequences, T completion tokens, V vocabulary.
"""

import math

import pytest
import torch

from swarmgrpo.core.errors import ConfigError
from swarmgrpo.trainer.grpo import (
    ADVANTAGES,
    AGGREGATORS,
    LossNorm,
    Registry,
    clipped_surrogate,
    compute_advantages,
    group_stats,
    grpo_loss,
    k3_kl,
    tis_weight,
    token_logprobs,
)

LOSS_TYPES = ["grpo", "dapo", "dr_grpo"]


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=torch.float32),
        torch.as_tensor(expected, dtype=torch.float32),
        atol=atol,
        rtol=1e-5,
    )


# --------------------------------------------------------------------------- registry


def test_registry_unknown_name_names_field_and_choices():
    reg = Registry("widget")
    reg.register("b")(lambda: 2)
    reg.register("a")(lambda: 1)
    assert reg.get("a")() == 1
    with pytest.raises(ConfigError) as err:
        reg.get("c")
    assert err.value.field == "widget"
    assert "unknown widget 'c'" in str(err.value)
    assert "choose one of: a, b" in str(err.value)


def test_registry_rejects_duplicates():
    reg = Registry("widget")
    reg.register("a")(lambda: 1)
    with pytest.raises(ValueError):
        reg.register("a")(lambda: 2)


def test_registries_hold_the_documented_names():
    assert ADVANTAGES.names() == ("dr_grpo", "grpo")
    assert AGGREGATORS.names() == ("dapo", "dr_grpo", "grpo")
    with pytest.raises(ConfigError, match="advantage_estimator"):
        compute_advantages(torch.zeros(1, 2), "ppo")


# --------------------------------------------------------------------------- advantages

# row 0: [0, 1, 2, 3]  mean 1.5, deviations [-1.5, -0.5, 0.5, 1.5],
#        sum of squares 2.25+0.25+0.25+2.25 = 5, unbiased var 5/3, std sqrt(5/3) = 1.29099
# row 1: [0, 0, 0, 4]  mean 1, deviations [-1, -1, -1, 3], sum of squares 1+1+1+9 = 12, var 12/3 = 4, std 2
REWARDS_PG = torch.tensor([[0.0, 1.0, 2.0, 3.0], [0.0, 0.0, 0.0, 4.0]])


def test_grpo_advantages_by_hand():
    s0 = math.sqrt(5 / 3) + 1e-4
    s1 = 2.0 + 1e-4
    expected = [[-1.5 / s0, -0.5 / s0, 0.5 / s0, 1.5 / s0], [-1 / s1, -1 / s1, -1 / s1, 3 / s1]]
    close(compute_advantages(REWARDS_PG, "grpo"), expected)


def test_dr_grpo_advantages_by_hand():
    close(compute_advantages(REWARDS_PG, "dr_grpo"), [[-1.5, -0.5, 0.5, 1.5], [-1.0, -1.0, -1.0, 3.0]])


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo"])
def test_equal_rewards_give_exact_zeros(estimator):
    # 0.7 is not representable; a mean over 7 copies need not round back to 0.7 exactly
    rewards_PG = torch.tensor([[0.7] * 7, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]])
    adv_PG = compute_advantages(rewards_PG, estimator)
    assert torch.equal(adv_PG[0], torch.zeros(7))
    assert (adv_PG[1] != 0).all()


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo"])
def test_group_of_one_gives_zeros(estimator):
    assert torch.equal(compute_advantages(torch.tensor([[3.0], [1.0]]), estimator), torch.zeros(2, 1))


def test_group_stats():
    stats = group_stats(torch.tensor([[0.0, 1.0, 2.0, 3.0], [4.0, 4.0, 4.0, 4.0]]))
    assert stats["frac_zero_std"] == 0.5
    close(stats["reward_mean"], (6 + 16) / 8)  # 2.75
    # within-group stds: sqrt(5/3) and 0
    close(stats["group_std_mean"], math.sqrt(5 / 3) / 2)
    values = [0, 1, 2, 3, 4, 4, 4, 4]
    var = sum((v - 2.75) ** 2 for v in values) / 7
    close(stats["reward_std"], math.sqrt(var))


# --------------------------------------------------------------------------- token log-probs

# position 0: logits [0, ln2, ln3] -> exp [1, 2, 3], sum 6; token 2 -> ln(3/6)
# position 1: logits [ln4, 0, 0]   -> exp [4, 1, 1], sum 6; token 0 -> ln(4/6)
LOGITS_BTV = torch.tensor([[[0.0, math.log(2), math.log(3)], [math.log(4), 0.0, 0.0]]])
TOKENS_BT = torch.tensor([[2, 0]])


def test_token_logprobs_by_hand():
    close(token_logprobs(LOGITS_BTV, TOKENS_BT), [[math.log(3 / 6), math.log(4 / 6)]])


def test_token_logprobs_with_temperature():
    # temperature 2 halves the logits: exp -> [1, sqrt2, sqrt3] and [2, 1, 1]
    r2, r3 = math.sqrt(2), math.sqrt(3)
    expected = [[math.log(r3 / (1 + r2 + r3)), math.log(2 / (2 + 1 + 1))]]
    close(token_logprobs(LOGITS_BTV, TOKENS_BT, temperature=2.0), expected)


def test_token_logprobs_bf16_in_float32_out():
    logp_BT = token_logprobs(LOGITS_BTV.bfloat16(), TOKENS_BT)
    assert logp_BT.dtype == torch.float32
    expected = token_logprobs(LOGITS_BTV.bfloat16().float(), TOKENS_BT)
    close(logp_BT, expected)


def test_token_logprobs_matches_log_softmax_and_backprops():
    g = torch.Generator().manual_seed(0)
    logits_BTV = torch.randn(3, 4, 11, generator=g, requires_grad=True)
    tokens_BT = torch.randint(0, 11, (3, 4), generator=g)
    logp_BT = token_logprobs(logits_BTV, tokens_BT, temperature=0.7)
    ref_BT = torch.log_softmax(logits_BTV / 0.7, -1).gather(-1, tokens_BT.unsqueeze(-1)).squeeze(-1)
    close(logp_BT, ref_BT)
    logp_BT.sum().backward()
    assert logits_BTV.grad is not None


# --------------------------------------------------------------------------- surrogate


def surrogate(ratios, advs, **kw):
    """One token per sequence: logp = ln(ratio), prox = 0."""
    logp_BT = torch.log(torch.tensor(ratios)).unsqueeze(-1)
    loss_BT, clipped_BT = clipped_surrogate(logp_BT, torch.zeros_like(logp_BT), torch.tensor(advs), **kw)
    return loss_BT.squeeze(-1), clipped_BT.squeeze(-1)


def test_surrogate_clip_cases():
    # eps = 0.2, clip range [0.8, 1.2]; loss = -min(r*A, clip(r)*A)
    #  r    A   r*A   clip*A   loss  clipped
    # 1.1  +1   1.1    1.1    -1.1    no   (inside)
    # 1.5  +1   1.5    1.2    -1.2    yes  (above, A > 0)
    # 0.5  +1   0.5    0.8    -0.5    no   (below, A > 0: unclipped is smaller)
    # 0.5  -1  -0.5   -0.8     0.8    yes  (below, A < 0)
    # 1.5  -1  -1.5   -1.2     1.5    no   (above, A < 0: unclipped is smaller)
    # 1.5  +2   3.0    2.4    -2.4    yes
    # 1.3   0   0      0       0      no
    loss, clipped = surrogate([1.1, 1.5, 0.5, 0.5, 1.5, 1.5, 1.3], [1, 1, 1, -1, -1, 2, 0.0], epsilon=0.2)
    close(loss, [-1.1, -1.2, -0.5, 0.8, 1.5, -2.4, 0.0])
    assert clipped.tolist() == [False, True, False, True, False, True, False]


def test_surrogate_epsilon_high_is_asymmetric():
    # eps = 0.2, eps_high = 0.28: range [0.8, 1.28]
    # r = 1.25, A = +1 -> inside now: loss -1.25, not clipped (symmetric eps would give -1.2, clipped)
    # r = 1.5,  A = +1 -> clip at 1.28: loss -1.28
    # r = 0.75, A = -1 -> lower bound unchanged at 0.8: min(-0.75, -0.8) = -0.8, loss 0.8, clipped
    loss, clipped = surrogate([1.25, 1.5, 0.75], [1, 1, -1.0], epsilon=0.2, epsilon_high=0.28)
    close(loss, [-1.25, -1.28, 0.8])
    assert clipped.tolist() == [False, True, True]
    loss_sym, clipped_sym = surrogate([1.25], [1.0], epsilon=0.2)
    close(loss_sym, [-1.2])
    assert clipped_sym.tolist() == [True]


def test_surrogate_delta_caps_negative_advantages():
    # delta = 4: unclipped term uses min(r, 4)
    # r = 10, A = -1: min(-4, -1.2) = -4 -> loss 4 (without delta: 10), not a clip
    # r = 10, A = +1: min(4, 1.2) = 1.2 -> loss -1.2, clipped (delta irrelevant)
    # r = 1.1, A = -1: inside the clip range, below delta -> 1.1
    loss, clipped = surrogate([10.0, 10.0, 1.1], [-1, 1, -1.0], epsilon=0.2, delta=4.0)
    close(loss, [4.0, -1.2, 1.1])
    assert clipped.tolist() == [False, True, False]
    loss_nodelta, _ = surrogate([10.0], [-1.0], epsilon=0.2)
    close(loss_nodelta, [10.0])


def test_surrogate_gradient_is_zero_where_clipped():
    logp_BT = torch.log(torch.tensor([[1.5, 0.5, 1.1]])).requires_grad_()
    loss_BT, clipped_BT = clipped_surrogate(logp_BT, torch.zeros(1, 3), torch.tensor([1.0]), epsilon=0.2)
    loss_BT.sum().backward()
    # clipped token: 0; unclipped: d(-r*A)/dlogp = -r*A
    close(logp_BT.grad, [[0.0, -0.5, -1.1]])
    assert clipped_BT.tolist() == [[True, False, False]]


def test_surrogate_rejects_bad_config():
    with pytest.raises(ConfigError, match="delta"):
        surrogate([1.0], [1.0], epsilon=0.2, delta=1.1)
    with pytest.raises(ConfigError, match="epsilon"):
        surrogate([1.0], [1.0], epsilon=0.0)


# --------------------------------------------------------------------------- TIS and KL


def test_tis_weight_caps_and_has_no_grad():
    # prox - behavior = [0, ln1.5, ln3, -ln2] -> exp [1, 1.5, 3, 0.5] -> cap 2 -> [1, 1.5, 2, 0.5]
    prox_BT = torch.tensor([[0.0, math.log(1.5), math.log(3), -math.log(2)]], requires_grad=True)
    w_BT = tis_weight(prox_BT, torch.zeros(1, 4), cap=2.0)
    close(w_BT, [[1.0, 1.5, 2.0, 0.5]])
    assert not w_BT.requires_grad
    assert torch.equal(tis_weight(prox_BT, torch.zeros(1, 4), cap=None), torch.ones(1, 4))


def test_k3_kl_by_hand():
    # d = ref - logp
    # d = 0    -> 1 - 0 - 1 = 0
    # d = ln2  -> 2 - ln2 - 1 = 1 - ln2 = 0.30685
    # d = -ln2 -> 0.5 + ln2 - 1 = ln2 - 0.5 = 0.19315
    logp_BT = torch.tensor([[-1.0, 0.0, math.log(2)]])
    ref_BT = torch.tensor([[-1.0, math.log(2), 0.0]])
    kl_BT = k3_kl(logp_BT, ref_BT)
    close(kl_BT, [[0.0, 1 - math.log(2), math.log(2) - 0.5]])
    assert kl_BT[0, 0] == 0
    g = torch.Generator().manual_seed(1)
    assert (k3_kl(torch.randn(50, 50, generator=g), torch.randn(50, 50, generator=g)) >= 0).all()


# --------------------------------------------------------------------------- aggregation

# x = [[1, 2, 3], [4, 5, 6]], mask = [[1, 1, 0], [1, 0, 0]]: real tokens 1, 2 | 4
#   grpo:    per-seq means 1.5 and 4 -> (1.5 + 4) / 2 = 2.75
#   dapo:    (1 + 2 + 4) / 3 tokens = 7/3
#   dr_grpo: (1 + 2 + 4) / (2 seqs * L=4) = 0.875
X_BT = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK_BT = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
AGG_EXPECTED = {"grpo": 2.75, "dapo": 7 / 3, "dr_grpo": 0.875}


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_aggregators_by_hand(loss_type):
    norm = LossNorm.of(MASK_BT, max_completion_length=4)
    assert norm == LossNorm(num_sequences=2, num_tokens=3, max_completion_length=4)
    close(AGGREGATORS.get(loss_type)(X_BT, MASK_BT, norm), AGG_EXPECTED[loss_type])


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_padding_does_not_change_aggregates(loss_type):
    norm = LossNorm.of(MASK_BT, max_completion_length=4)
    garbage_B2 = torch.tensor([[1e6, float("nan")], [float("inf"), -7.0]])
    x_BT = torch.cat([X_BT, garbage_B2], dim=1)
    mask_BT = torch.cat([MASK_BT, torch.zeros(2, 2)], dim=1)
    agg = AGGREGATORS.get(loss_type)
    assert torch.equal(agg(x_BT, mask_BT, norm), agg(X_BT, MASK_BT, norm))


def test_loss_norm_adds_shards():
    a = LossNorm.of(MASK_BT[:1], 4)
    b = LossNorm.of(MASK_BT[1:], 4)
    assert a + b == LossNorm.of(MASK_BT, 4)
    with pytest.raises(ValueError):
        a + LossNorm(1, 1, 5)


# --------------------------------------------------------------------------- grpo_loss


def random_batch(seed=0, B=4, T=6):
    g = torch.Generator().manual_seed(seed)
    lens_B = torch.tensor([6, 2, 4, 1])[:B]
    mask_BT = (torch.arange(T).unsqueeze(0) < lens_B.unsqueeze(1)).float()
    behavior_BT = -torch.rand(B, T, generator=g) * 2
    prox_BT = behavior_BT + 0.3 * torch.randn(B, T, generator=g)
    logp_BT = prox_BT + 0.3 * torch.randn(B, T, generator=g)
    logp_BT[1, 0] = prox_BT[1, 0] + 2.0  # ratio e^2 > delta = 4 on a negative advantage
    ref_BT = logp_BT + 0.2 * torch.randn(B, T, generator=g)
    adv_B = torch.tensor([1.0, -0.5, 2.0, -1.5])[:B]
    return logp_BT, behavior_BT, prox_BT, ref_BT, adv_B, mask_BT


FULL_KW = dict(epsilon=0.2, epsilon_high=0.28, delta=4.0, tis_cap=1.2, beta=0.05)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_micro_batches_sum_to_full_batch(loss_type):
    logp_BT, behavior_BT, prox_BT, ref_BT, adv_B, mask_BT = random_batch()
    norm = LossNorm.of(mask_BT, max_completion_length=8)

    def run(sl, logp):
        return grpo_loss(
            logp[sl],
            behavior_BT[sl],
            adv_B[sl],
            mask_BT[sl],
            norm,
            loss_type=loss_type,
            prox_logp_BT=prox_BT[sl],
            ref_logp_BT=ref_BT[sl],
            **FULL_KW,
        )

    full_logp = logp_BT.clone().requires_grad_()
    full, full_metrics = run(slice(None), full_logp)
    full.backward()

    split_logp = logp_BT.clone().requires_grad_()
    first, m1 = run(slice(0, 2), split_logp)
    second, m2 = run(slice(2, 4), split_logp)
    (first + second).backward()

    close(first + second, full)
    close(split_logp.grad, full_logp.grad)
    assert set(full_metrics) == {"clip_frac", "tis_mean", "kl"}
    for key, value in full_metrics.items():
        assert not value.requires_grad
        close(m1[key] + m2[key], value)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_gradient_unclipped_by_hand(loss_type):
    # ratios within [0.8, 1.2], no TIS, no KL: loss = agg(-A * r), so d loss / d logp_t = -A * r_t / n_t
    # where n_t is the token's normaliser:
    #   grpo:    num_sequences * len(seq)   = 2 * [3, 1]
    #   dapo:    num_tokens                 = 4
    #   dr_grpo: num_sequences * L          = 2 * 5
    ratio_BT = torch.tensor([[1.1, 0.9, 1.0, 1.0], [1.15, 1.0, 1.0, 1.0]])
    mask_BT = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    adv_B = torch.tensor([2.0, -1.0])
    behavior_BT = torch.full((2, 4), -1.0)
    logp_BT = (behavior_BT + torch.log(ratio_BT)).requires_grad_()
    norm = LossNorm.of(mask_BT, max_completion_length=5)
    loss, metrics = grpo_loss(logp_BT, behavior_BT, adv_B, mask_BT, norm, loss_type=loss_type, epsilon=0.2)
    loss.backward()
    n_BT = {
        "grpo": torch.tensor([[6.0] * 4, [2.0] * 4]),
        "dapo": torch.full((2, 4), 4.0),
        "dr_grpo": torch.full((2, 4), 10.0),
    }[loss_type]
    expected_BT = -adv_B.unsqueeze(1) * ratio_BT / n_BT * mask_BT
    close(logp_BT.grad, expected_BT)
    close(metrics["clip_frac"], 0.0)
    close(metrics["tis_mean"], 1.0)


def test_prox_none_equals_prox_behavior():
    logp_BT, behavior_BT, _, ref_BT, adv_B, mask_BT = random_batch(seed=3)
    norm = LossNorm.of(mask_BT, max_completion_length=6)
    kw = dict(loss_type="grpo", ref_logp_BT=ref_BT, **FULL_KW)
    loss_none, m_none = grpo_loss(logp_BT, behavior_BT, adv_B, mask_BT, norm, **kw)
    loss_beh, m_beh = grpo_loss(logp_BT, behavior_BT, adv_B, mask_BT, norm, prox_logp_BT=behavior_BT, **kw)
    assert torch.equal(loss_none, loss_beh)
    assert m_none.keys() == m_beh.keys()
    for key in m_none:
        assert torch.equal(m_none[key], m_beh[key])
    close(m_none["tis_mean"], 1.0)


def test_grpo_loss_composition_by_hand():
    # one sequence, two tokens, dapo (mean over 2 tokens), eps 0.2, tis_cap 2, beta 0.1
    # token 0: behavior 0, prox ln3 (w = min(3, 2) = 2), logp ln3 (r = 1), ref ln3 (kl 0)
    #          surrogate -1 * A = -1 (A = 1), x = 2 * -1 + 0 = -2
    # token 1: behavior 0, prox 0 (w = 1), logp ln1.5 (r = 1.5, clipped: surrogate -1.2),
    #          ref 0: d = -ln1.5, kl = 1/1.5 + ln1.5 - 1, x = -1.2 + 0.1 * kl
    # loss = (x0 + x1) / 2; clip_frac 1/2; tis_mean (2 + 1) / 2; kl mean kl/2
    ln3, ln15 = math.log(3), math.log(1.5)
    kl1 = 1 / 1.5 + ln15 - 1
    loss, metrics = grpo_loss(
        torch.tensor([[ln3, ln15]]),
        torch.zeros(1, 2),
        torch.tensor([1.0]),
        torch.ones(1, 2),
        LossNorm(1, 2, 2),
        loss_type="dapo",
        epsilon=0.2,
        tis_cap=2.0,
        prox_logp_BT=torch.tensor([[ln3, 0.0]]),
        ref_logp_BT=torch.tensor([[ln3, 0.0]]),
        beta=0.1,
    )
    close(loss, (-2 + -1.2 + 0.1 * kl1) / 2)
    close(metrics["clip_frac"], 0.5)
    close(metrics["tis_mean"], 1.5)
    close(metrics["kl"], kl1 / 2)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_grpo_loss_ignores_garbage_padding(loss_type):
    logp_BT, behavior_BT, prox_BT, ref_BT, adv_B, mask_BT = random_batch(seed=5)
    norm = LossNorm.of(mask_BT, max_completion_length=6)
    kw = dict(loss_type=loss_type, **FULL_KW)

    def run(logp, behavior, prox, ref):
        logp = logp.clone().requires_grad_()
        loss, metrics = grpo_loss(
            logp, behavior, adv_B, mask_BT, norm, prox_logp_BT=prox, ref_logp_BT=ref, **kw
        )
        loss.backward()
        return loss, metrics, logp.grad

    clean = run(logp_BT, behavior_BT, prox_BT, ref_BT)
    pad_BT = mask_BT == 0
    dirty = run(
        logp_BT.masked_fill(pad_BT, 50.0),
        behavior_BT.masked_fill(pad_BT, float("-inf")),
        prox_BT.masked_fill(pad_BT, float("nan")),
        ref_BT.masked_fill(pad_BT, 1e6),
    )
    assert torch.equal(clean[0], dirty[0])
    assert torch.equal(clean[2], dirty[2])
    for key in clean[1]:
        assert torch.equal(clean[1][key], dirty[1][key])


def test_grpo_loss_needs_ref_when_beta_positive():
    logp_BT, behavior_BT, _, _, adv_B, mask_BT = random_batch()
    norm = LossNorm.of(mask_BT, 6)
    with pytest.raises(ValueError, match="ref_logp_BT"):
        grpo_loss(logp_BT, behavior_BT, adv_B, mask_BT, norm, loss_type="grpo", epsilon=0.2, beta=0.1)
    with pytest.raises(ConfigError, match="loss_type"):
        grpo_loss(logp_BT, behavior_BT, adv_B, mask_BT, norm, loss_type="ppo", epsilon=0.2)
