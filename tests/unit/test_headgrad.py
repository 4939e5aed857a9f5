"""The memory-lean embedding/head/alias functions give exactly plain autograd's gradients."""

import pytest
import torch

from swarmgrpo.trainer import headgrad
from swarmgrpo.trainer.headgrad import aliased_leaves, head_logprobs, lookup


def _tied_model_loss(weight, w_mid, ids, targets, fused, temperature=0.7):
    """Tied embedding -> a tanh layer -> tied head -> sum of weighted target log-probs."""
    emb = lookup(ids, weight) if fused else torch.nn.functional.embedding(ids, weight)
    hidden = torch.tanh(emb @ w_mid)
    if fused:
        logp = head_logprobs(hidden, weight, targets, temperature)
    else:
        logp = torch.log_softmax((hidden @ weight.T) / temperature, -1).gather(-1, targets[..., None])[..., 0]
    scale = torch.linspace(-1.0, 2.0, logp.numel()).view_as(logp)
    return (logp * scale).sum(), logp


@pytest.mark.parametrize("tokens", [5, 150])  # 150 > CHUNK_TOKENS: several chunks
def test_lookup_and_head_match_plain_autograd_with_tied_weights(tokens):
    g = torch.Generator().manual_seed(0)
    v, h = 37, 8
    ids = torch.randint(0, v, (3, tokens), generator=g)
    targets = torch.randint(0, v, (3, tokens), generator=g)
    results = []
    for fused in (False, True):
        weight = torch.randn(v, h, generator=torch.Generator().manual_seed(1)).requires_grad_()
        w_mid = torch.randn(h, h, generator=torch.Generator().manual_seed(2)).requires_grad_()
        loss, logp = _tied_model_loss(weight, w_mid, ids, targets, fused)
        loss.backward()
        results.append((logp.detach(), weight.grad.clone(), w_mid.grad.clone()))
    for plain, fused in zip(*results, strict=True):
        torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)


def test_gradients_accumulate_across_backward_calls_like_autograd():
    ids, targets = torch.tensor([[1, 2, 3]]), torch.tensor([[4, 5, 6]])
    grads = []
    for fused in (False, True):
        weight = torch.randn(9, 4, generator=torch.Generator().manual_seed(3)).requires_grad_()
        w_mid = torch.eye(4).requires_grad_()
        for _ in range(2):
            _tied_model_loss(weight, w_mid, ids, targets, fused)[0].backward()
        grads.append(weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
def test_create_graph_is_refused_rather_than_silently_wrong():
    weight = torch.randn(9, 4).requires_grad_()
    loss, _ = _tied_model_loss(
        weight, torch.eye(4).requires_grad_(), torch.tensor([[1, 2]]), torch.tensor([[3, 4]]), True
    )
    with pytest.raises(RuntimeError, match="first-order"):
        loss.backward(create_graph=True)


def test_aliased_leaves_give_the_same_gradients_as_a_second_use_of_the_weights():
    layer = torch.nn.Linear(6, 6)
    x1, x2 = torch.randn(4, 6), torch.randn(4, 6)

    def loss_of(second_pass):
        return (layer(x1).tanh() * second_pass(x2)).sum()

    loss_of(layer).backward()
    plain = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad(set_to_none=True)
    leaves = aliased_leaves(layer)
    loss_of(lambda x: torch.func.functional_call(layer, leaves, (x,))).backward()
    for p, expected in zip(layer.parameters(), plain, strict=True):
        torch.testing.assert_close(p.grad, expected)
    assert all(leaf.grad is None for leaf in leaves.values())  # handed over, nothing kept twice


def test_only_plain_linear_heads_of_known_architectures_take_the_fused_path(tiny):
    model, _ = tiny
    assert headgrad.supports_fused_head(model)
    model.config.model_type, saved = "gemma2", model.config.model_type  # soft-capped logits
    try:
        assert not headgrad.supports_fused_head(model)
    finally:
        model.config.model_type = saved
