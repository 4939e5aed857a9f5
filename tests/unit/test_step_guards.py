"""What a node's numbers can do to the step: forged behavior log-probs stay bounded, a group whose
loss or gradient is not finite is set aside and named, a non-finite gradient is never applied, and a
reduced gradient is applied even by a worker whose own shard trained nothing."""

import copy
import math

import pytest
import torch

from swarmgrpo.trainer.grpo import clipped_surrogate
from swarmgrpo.trainer.rollouts import RolloutGroup
from swarmgrpo.trainer.step import GRPOStep
from tests.unit.test_step import REWARDS, _cfg, _groups


def _forged(group: RolloutGroup, value: float, version: int | None = None) -> RolloutGroup:
    behavior = [[value] * len(c) for c in group.completion_ids]
    version = group.policy_version if version is None else version
    return RolloutGroup(**{**group.__dict__, "behavior_logprobs": behavior, "policy_version": version})


def _weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("behavior", [-50.0, -87.3, -1e30])
def test_the_ratio_cap_keeps_forged_behavior_logprobs_finite_and_gradient_free(behavior):
    # A stale token's ratio is exp(logp - behavior): e^43 at -50, inf at -1e30 before the cap.
    logp_BT = torch.full((2, 3), -7.0, requires_grad=True)
    loss_BT, _ = clipped_surrogate(
        logp_BT, torch.full((2, 3), behavior), torch.tensor([-1.0, 1.0]), epsilon=0.2, delta=4.0
    )
    loss_BT.sum().backward()
    torch.testing.assert_close(loss_BT, torch.tensor([[4.0] * 3, [-1.2] * 3]))
    assert torch.equal(logp_BT.grad, torch.zeros(2, 3))  # capped or clipped: no pull at all


def test_stale_groups_with_forged_logprobs_pull_the_weights_nowhere(tiny):
    model, tok = tiny
    groups = _groups(model, tok, REWARDS)
    honest = RolloutGroup(**{**groups[2].__dict__, "policy_version": 1})
    forged = [_forged(groups[0], -1e30, version=0), _forged(groups[2], -50.0, version=0)]
    cfg = _cfg(model="tiny", learning_rate=1e-3)
    m, clean = copy.deepcopy(model), copy.deepcopy(model)
    step, ref = GRPOStep(m, cfg, tok.pad_token_id), GRPOStep(clean, cfg, tok.pad_token_id)
    step.version = ref.version = 1  # the forged groups were sampled one version ago: ratio vs their numbers
    metrics = step.compute_gradients([*forged, honest])
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    ref.compute_gradients([honest], norm=ref.norm_of([*forged, honest]))
    got, want = _grads(m), _grads(clean)
    assert any(g.abs().sum() > 0 for g in want.values())
    for name in want:  # the forged tokens are capped or clipped: they add exactly nothing
        torch.testing.assert_close(got[name], want[name], atol=1e-7, rtol=1e-5)
    assert math.isfinite(step.apply()["grad_norm"]) and all(torch.isfinite(p).all() for p in m.parameters())


def test_a_group_with_a_non_finite_loss_is_set_aside_and_the_rest_trains_as_without_it(tiny):
    model, tok = tiny
    groups = _groups(model, tok, REWARDS)
    poisoned = _forged(groups[2], float("nan"), version=-1)  # no validation on this path
    batch = [groups[0], groups[1], poisoned]
    for micro_batch_size in (12, 3):  # whole groups in one pass; groups split over passes
        cfg = _cfg(model="tiny", micro_batch_size=micro_batch_size)
        m = copy.deepcopy(model)
        step = GRPOStep(m, cfg, tok.pad_token_id)
        metrics = step.compute_gradients(batch)
        assert step.set_aside == [2] and metrics["set_aside_groups"] == 1.0
        assert math.isfinite(metrics["loss"]) and metrics["trained_sequences"] == 4
        clean = copy.deepcopy(model)
        ref = GRPOStep(clean, cfg, tok.pad_token_id)
        ref.compute_gradients([groups[0]], norm=ref.norm_of(batch))  # same normaliser, group 1 has no signal
        got, want = _grads(m), _grads(clean)
        for name in want:
            torch.testing.assert_close(got[name], want[name], atol=1e-7, rtol=1e-5)


def test_a_non_finite_gradient_from_a_finite_loss_sets_its_micro_batch_aside(tiny, monkeypatch):
    model, tok = tiny
    groups = _groups(model, tok, REWARDS)
    m = copy.deepcopy(model)
    step = GRPOStep(m, _cfg(model="tiny", micro_batch_size=4), tok.pad_token_id)
    real = step._micro_step

    def inf_grad_for_group_2(mb, norm, chunk_groups):
        out = real(mb, norm, chunk_groups)
        if groups[2] in chunk_groups:
            next(m.parameters()).grad[0, 0] = float("inf")
        return out

    monkeypatch.setattr(step, "_micro_step", inf_grad_for_group_2)
    metrics = step.compute_gradients(groups)
    assert step.set_aside == [2] and metrics["trained_sequences"] == 4
    assert all(torch.isfinite(g).all() for g in _grads(m).values())
    assert any(g.abs().sum() > 0 for g in _grads(m).values())  # group 0 still trained


def test_a_non_finite_gradient_is_never_applied(tiny):
    model, tok = tiny
    m = copy.deepcopy(model)
    step = GRPOStep(m, _cfg(model="tiny", learning_rate=1e-3), tok.pad_token_id)
    before = _weights(m)

    def poison(module):  # what a broken reduction could hand back
        for p in module.parameters():
            p.grad.fill_(float("nan"))

    metrics = step.train([_groups(m, tok, REWARDS)[1]], reduce=poison)
    assert metrics["step_skipped"] == 1.0 and metrics["grad_norm"] == 0.0 and step.version == 1
    assert all(torch.equal(before[n], p) for n, p in m.named_parameters())
    assert not step.optimizer.state  # AdamW's moments untouched
    assert all(g.eq(0).all() for g in _grads(m).values())


def test_a_worker_whose_shard_has_no_signal_applies_the_reduced_gradient(tiny):
    model, tok = tiny
    groups = _groups(model, tok, REWARDS)
    cfg = _cfg(model="tiny", learning_rate=1e-3)
    trains, idle = copy.deepcopy(model), copy.deepcopy(model)
    a, b = GRPOStep(trains, cfg, tok.pad_token_id), GRPOStep(idle, cfg, tok.pad_token_id)
    a.compute_gradients([groups[0]])
    b.compute_gradients([groups[1]])  # equal rewards: zero advantage, nothing trained
    mean = {n: p.grad / 2 for n, p in trains.named_parameters()}

    def average(module):
        for n, p in module.named_parameters():
            p.grad.copy_(mean[n])

    a.reduce(average, trains)
    b.reduce(average, idle)
    a.apply(), b.apply()
    assert all(torch.equal(p, idle.get_parameter(n)) for n, p in trains.named_parameters())
    assert any(not torch.equal(p, model.get_parameter(n)) for n, p in idle.named_parameters())
    assert all(g.eq(0).all() for g in _grads(idle).values())  # the mean is not carried into the next step
