"""The GRPO step on the tiny model: layout, engine/trainer agreement, accumulation, staleness."""

import copy

import pytest
import torch

from swarmgrpo.core.configtree import load_config
from swarmgrpo.node.engines.base import SamplingParams
from swarmgrpo.node.engines.transformers_engine import TransformersEngine
from swarmgrpo.trainer.config import TrainConfig
from swarmgrpo.trainer.rollouts import RolloutGroup, micro_batch
from swarmgrpo.trainer.step import GRPOStep

PROMPTS = [[1, 500, 42, 7], [9, 9, 13], [300, 301, 302, 303, 304, 305]]


def _cfg(**kw):
    return load_config(TrainConfig, None, [f"{k}={v!r}".replace("'", '"') for k, v in kw.items()])


def _groups(model, tokenizer, rewards, version=0, max_tokens=6):
    engine = TransformersEngine(model, tokenizer)
    outs = engine.generate(PROMPTS, 4, SamplingParams(max_tokens=max_tokens, seed=3))
    return [
        RolloutGroup(p, [c.token_ids for c in cs], [c.logprobs for c in cs], r, version)
        for p, cs, r in zip(PROMPTS, outs, rewards, strict=True)
    ]


REWARDS = [[1.0, 0.0, 0.5, 0.0], [0.2, 0.2, 0.2, 0.2], [0.0, 1.0, 1.0, 0.0]]


def _reference_logprobs(model, prompt, completion):
    """log p(completion | prompt), one unpadded sequence at a time: the plain way, for comparison."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1]
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion)[:, None])[:, 0]


def _step_logprobs(step, groups):
    """The step's own logp_BT for all groups in one micro-batch (shared prompt forwards, padding)."""
    pieces = [(g, [0.0] * g.group_size, list(range(g.group_size))) for g in groups]
    mb = micro_batch(pieces, step.pad_id).to(step.device)
    with torch.no_grad():
        return mb, step._logprobs(step.model, mb)


def test_shared_prompt_logprobs_match_plain_forwards(tiny):
    model, tok = tiny
    groups = [
        RolloutGroup(PROMPTS[0], [[5, 6, 7], [8]], [[0.0] * 3, [0.0]], [0.0, 1.0], 0),
        RolloutGroup(PROMPTS[2], [[9, 10], [11, 12, 13, 14]], [[0.0] * 2, [0.0] * 4], [0.0, 1.0], 0),
    ]
    step = GRPOStep(model, _cfg(model="tiny"), tok.pad_token_id)
    mb, logp_BT = _step_logprobs(step, groups)
    row = 0
    for g in groups:
        for c in g.completion_ids:
            torch.testing.assert_close(
                logp_BT[row, : len(c)], _reference_logprobs(model, g.prompt_ids, c), atol=1e-5, rtol=1e-5
            )
            assert mb.completion_mask_BT[row].sum() == len(c)
            row += 1


def test_engine_logprobs_match_the_trainers(tiny):
    model, tok = tiny
    groups = _groups(model, tok, REWARDS)
    step = GRPOStep(model, _cfg(model="tiny"), tok.pad_token_id)
    mb, logp_BT = _step_logprobs(step, groups)
    diff = ((logp_BT - mb.behavior_logp_BT) * mb.completion_mask_BT).abs().max()
    assert diff < 1e-4, f"engine and trainer disagree by {diff}"


def _grads(model, cfg, groups):
    m = copy.deepcopy(model)
    step = GRPOStep(m, cfg, 0)
    metrics = step.compute_gradients(groups)
    return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}, metrics


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("micro_batch_size", [1, 3])  # 1: a completion per pass; 3: groups of 4 split 3 + 1
def test_micro_batches_sum_to_the_full_batch_gradient(tiny, loss_type, micro_batch_size):
    model, tok = tiny
    groups = _groups(model, tok, REWARDS)
    full, _ = _grads(model, _cfg(model="tiny", loss_type=loss_type, micro_batch_size=12), groups)
    split, _ = _grads(
        model, _cfg(model="tiny", loss_type=loss_type, micro_batch_size=micro_batch_size), groups
    )
    assert full.keys() == split.keys() and full
    for name in full:
        torch.testing.assert_close(split[name], full[name], atol=1e-6, rtol=1e-4)


def test_micro_batches_never_exceed_their_size_and_cover_every_completion(tiny):
    model, tok = tiny
    groups = _groups(model, tok, REWARDS)
    step = GRPOStep(model, _cfg(model="tiny", micro_batch_size=3), tok.pad_token_id)
    chunks = list(step._micro_batches([(g, [1.0] * g.group_size) for g in groups]))
    assert all(sum(len(rows) for _, _, rows in chunk) <= 3 for chunk in chunks)
    seen = sorted((id(g), i) for chunk in chunks for g, _, rows in chunk for i in rows)
    assert seen == sorted((id(g), i) for g in groups for i in range(g.group_size))


def test_equal_reward_groups_are_skipped_and_change_nothing(tiny):
    model, tok = tiny
    groups = _groups(model, tok, REWARDS)
    with_flat, m1 = _grads(model, _cfg(model="tiny"), groups)
    assert m1["trained_sequences"] == 8  # group 2 has equal rewards
    assert m1["frac_zero_std"] == pytest.approx(1 / 3)
    # Changing the rewards of the skipped group to other equal values must not change the gradient.
    other = [*groups[:1], RolloutGroup(**{**groups[1].__dict__, "rewards": [0.9] * 4}), groups[2]]
    g2, _ = _grads(model, _cfg(model="tiny"), other)
    for name in with_flat:
        assert torch.equal(with_flat[name], g2[name])


def test_stale_groups_take_the_ratio_against_behavior_logprobs(tiny):
    model, tok = tiny
    groups = _groups(model, tok, REWARDS)
    # Pretend the sampler's log-probs were much higher than the trainer's: ratio = exp(-1) < 1 - eps.
    shifted = [
        RolloutGroup(
            **{**g.__dict__, "behavior_logprobs": [[x + 1.0 for x in lp] for lp in g.behavior_logprobs]}
        )
        for g in groups
    ]
    _, current = _grads(model, _cfg(model="tiny"), shifted)
    _, stale = _grads(
        model, _cfg(model="tiny"), [RolloutGroup(**{**g.__dict__, "policy_version": -1}) for g in shifted]
    )
    # Current version: ratio vs own log-probs is 1 (never clipped); TIS weight exp(-1) < 1 corrects the gap.
    assert current["clip_frac"] == 0.0
    assert current["tis_mean"] == pytest.approx(float(torch.exp(torch.tensor(-1.0))), rel=1e-3)
    # Stale: ratio exp(-1) is outside [0.8, 1.2]; tokens with negative advantage are clipped.
    assert stale["clip_frac"] > 0.0
    assert stale["tis_mean"] == pytest.approx(1.0)


def test_apply_moves_weights_and_bumps_the_version(tiny):
    model, tok = tiny
    m = copy.deepcopy(model)
    groups = _groups(m, tok, REWARDS)
    step = GRPOStep(m, _cfg(model="tiny", learning_rate=1e-3), tok.pad_token_id)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    metrics = step.train(groups)
    assert step.version == 1 and metrics["grad_norm"] > 0
    moved = sum(not torch.equal(before[n], p) for n, p in m.named_parameters())
    assert moved == len(before)


def test_reducer_sees_the_accumulated_gradient(tiny):
    model, tok = tiny
    m = copy.deepcopy(model)
    groups = _groups(m, tok, REWARDS)
    step = GRPOStep(m, _cfg(model="tiny"), tok.pad_token_id)
    seen = []

    def reduce(module):  # a data-parallel group would average here; this one halves
        for p in module.parameters():
            seen.append(p.grad.norm().item())
            p.grad.mul_(0.5)

    metrics = step.train(groups, reduce=reduce)
    assert seen and all(x >= 0 for x in seen) and metrics["grad_norm"] > 0


def test_a_step_with_no_signal_changes_nothing_but_the_version(tiny):
    model, tok = tiny
    m = copy.deepcopy(model)
    groups = _groups(m, tok, [[0.5] * 4] * 3)  # every group equal: no advantage anywhere
    step = GRPOStep(m, _cfg(model="tiny", max_grad_norm=0.0), tok.pad_token_id)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    metrics = step.train(groups)
    assert metrics["trained_sequences"] == 0 and metrics["grad_norm"] == 0.0 and step.version == 1
    assert all(torch.equal(before[n], p) for n, p in m.named_parameters())


def test_memory_lean_backward_gives_plain_autogradients(tiny, monkeypatch):
    """Fused head/lookup and aliased prompt-pass weights (see headgrad) change memory, not results."""
    model, tok = tiny
    groups = _groups(model, tok, REWARDS)
    lean, _ = _grads(model, _cfg(model="tiny", micro_batch_size=3), groups)
    monkeypatch.setattr("swarmgrpo.trainer.step.supports_fused_head", lambda m: False)
    monkeypatch.setattr("swarmgrpo.trainer.step.aliased_leaves", lambda m: dict(m.named_parameters()))
    plain, _ = _grads(model, _cfg(model="tiny", micro_batch_size=3), groups)
    assert lean.keys() == plain.keys() and lean
    for name in plain:
        torch.testing.assert_close(lean[name], plain[name], atol=1e-6, rtol=1e-4)


def test_fp8_on_trains_every_linear_but_the_head_in_fp8_and_auto_leaves_a_cpu_model_alone(tiny):
    from swarmgrpo.trainer.fp8 import FP8Linear

    model, tok = tiny
    groups = _groups(model, tok, REWARDS)
    auto = GRPOStep(copy.deepcopy(model), _cfg(model="tiny"), 0)
    assert not auto.fp8 and not any(isinstance(m, FP8Linear) for m in auto.model.modules())

    plain, _ = _grads(model, _cfg(model="tiny", fp8="off"), groups)
    m = copy.deepcopy(model)
    step = GRPOStep(m, _cfg(model="tiny", fp8="on"), 0)
    fp8_layers = [mod for mod in m.modules() if isinstance(mod, FP8Linear)]
    n_linear = sum(isinstance(mod, torch.nn.Linear) for mod in m.modules())
    assert step.fp8 and len(fp8_layers) == n_linear - 1 and type(m.lm_head) is torch.nn.Linear
    assert {layer.fp8_backend for layer in fp8_layers} == {"scaled_mm"}
    called = set()
    for layer in fp8_layers:  # the fused MLP must not bypass its FP8 linears
        layer.register_forward_hook(lambda mod, args, out: called.add(id(mod)))
    step.compute_gradients(groups)
    assert called == {id(layer) for layer in fp8_layers}
    fp8 = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    assert fp8.keys() == plain.keys()
    total = torch.cat([g.flatten() for g in plain.values()])
    diff = torch.cat([(fp8[n] - plain[n]).flatten() for n in plain])
    rel = (diff.norm() / total.norm()).item()
    assert 1e-4 < rel < 0.1, rel  # rounded as FP8 rounds (measured 0.053), still the same gradient


@pytest.mark.gpu
def test_on_a_gpu_the_step_gives_the_cpu_gradients_and_auto_trains_fp8_on_hopper(tiny, monkeypatch):
    from swarmgrpo.trainer.fp8 import BLOCKWISE_CAPABILITY, FP8Linear

    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    model, tok = tiny
    groups = _groups(model, tok, REWARDS)
    cpu, cpu_metrics = _grads(model, _cfg(model="tiny", fp8="off"), groups)
    gpu, gpu_metrics = _grads(copy.deepcopy(model).cuda(), _cfg(model="tiny", fp8="off"), groups)
    assert gpu.keys() == cpu.keys()
    for name in cpu:
        assert gpu[name].is_cuda
        torch.testing.assert_close(gpu[name].cpu(), cpu[name], atol=1e-5, rtol=1e-3)
    assert gpu_metrics["loss"] == pytest.approx(cpu_metrics["loss"], rel=1e-4, abs=1e-6)
    step = GRPOStep(copy.deepcopy(model).cuda(), _cfg(model="tiny"), 0)  # fp8 = "auto"
    hopper = torch.cuda.get_device_capability() == BLOCKWISE_CAPABILITY
    assert step.fp8 is hopper  # the one-call block-scaled matmul only there (see trainer/fp8.py)
    assert any(isinstance(m, FP8Linear) for m in step.model.modules()) is hopper
    metrics = step.train(groups)
    assert metrics["grad_norm"] > 0 and step.version == 1
