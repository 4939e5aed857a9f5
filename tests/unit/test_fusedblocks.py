"""The lean RMSNorm/SwiGLU blocks give plain autograd's outputs and gradients and save fewer bytes."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from swarmgrpo.trainer.fusedblocks import fuse_blocks

H, INTER, LAYERS, VOCAB = 32, 80, 3, 97


def _llama(seed: int = 0) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=H,
        intermediate_size=INTER,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # break the ones-initialised norm weights' symmetry so their grads differ
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


def _mask(ids):
    """Left padding on the first row, so attention takes its masked path."""
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    return mask


def _loss(model, ids):
    logits = model(input_ids=ids, attention_mask=_mask(ids)).logits
    scale = torch.linspace(-1.0, 1.0, logits.numel()).view_as(logits)
    return (logits * scale).sum(), logits


def _saved_bytes(fn) -> int:
    """Bytes of distinct storages autograd saves for backward while `fn` runs."""
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def test_fused_blocks_give_plain_autograd_outputs_and_gradients():
    ids = torch.randint(0, VOCAB, (3, 11), generator=torch.Generator().manual_seed(1))
    plain, fused = _llama(), _llama()
    # 2 norms + 1 MLP per layer, the final norm, and the attention implementation
    assert fuse_blocks(fused) == LAYERS * 3 + 1 + 1
    results = []
    for model in (plain, fused):
        loss, logits = _loss(model, ids)
        loss.backward()
        results.append((logits.detach(), {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-5, rtol=1e-5)
    assert results[1][1].keys() == results[0][1].keys()
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_fused_blocks_save_the_expected_bytes_less():
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(2))
    plain, fused = _llama(), _llama()
    fuse_blocks(fused)
    saved = [_saved_bytes(lambda m=m: _loss(m, ids)[0]) for m in (plain, fused)]
    tokens = ids.numel()
    # Per token per layer: the MLP no longer keeps silu(gate) and the product (2·INTER floats, INTER = intermediate size), each of
    # the two norms no longer keeps the normalised x (H floats), and attention keeps keys and values
    # once per key/value head instead of once per query head (2·H → 2·H·kv/heads = H floats).
    expected_less = tokens * LAYERS * (2 * INTER + 2 * H + H) * 4
    assert saved[0] - saved[1] >= expected_less, saved


def test_generation_and_autocast_take_the_modules_own_norm_and_mlp():
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(3))
    plain, fused = _llama(), _llama()
    fuse_blocks(fused)
    with torch.no_grad():
        for mask in (None, _mask(ids)):
            torch.testing.assert_close(
                fused(input_ids=ids, attention_mask=mask).logits,
                plain(input_ids=ids, attention_mask=mask).logits,
            )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        saved = [_saved_bytes(lambda m=m: _loss(m, ids)[0]) for m in (plain, fused)]
    # Norms and MLPs keep autocast's graph; only the attention's unrepeated bf16 keys/values differ.
    assert saved[0] - saved[1] == ids.numel() * LAYERS * H * 2


def test_fuse_blocks_is_idempotent_and_leaves_other_architectures_alone():
    model = _llama()
    assert fuse_blocks(model) > 0
    assert fuse_blocks(model) == 0
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=VOCAB))
    assert fuse_blocks(gpt2) == 0


@pytest.mark.parametrize("act", ["gelu", "relu"])
def test_other_activations_are_left_alone(act):
    model = _llama()
    model.config.hidden_act = act
    assert fuse_blocks(model) == 0
