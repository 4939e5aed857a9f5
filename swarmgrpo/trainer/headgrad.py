"""Embedding lookup and LM-head log-probs whose weight gradients go straight into `.grad`.

Why: in a small model the vocabulary matrix dominates the backward pass's temporaries. SmolLM2-135M
ties a [49152, 576] matrix (113 MB in float32) between embedding and head. Plain autograd makes a
dense [V, H] gradient for each use (the head's `grad_logits^T @ hidden`, the embedding's
`embedding_dense_backward`), keeps the first one in a buffer until the last is ready, then adds the
sum into `.grad`: two to three extra copies of the matrix at the backward peak, plus the [B, T, V]
logits, their float32 copy and their gradient. Here:

- `lookup(ids, weight)` adds its gradient rows into `weight.grad` with `index_add_` (no dense temporary);
- `head_logprobs(hidden, weight, targets, temperature)` computes log p(target) chunk by chunk of
  tokens, keeps no logits for backward (it recomputes them per chunk), and adds each chunk's
  `grad_logits^T @ hidden` into `weight.grad` in place.

Both return no gradient to autograd for `weight` (the engine sees an undefined gradient and adds
nothing), so the result in `.grad` equals plain autograd's. Limits, checked where cheap: first-order
`.backward()` only (no `create_graph`, no `torch.autograd.grad` w.r.t. the weight, which would miss
what went into `.grad`), and only for heads that are exactly `logits = hidden @ weight.T`
(`supports_fused_head` says which models qualify; others take the plain path).
"""

from __future__ import annotations

import torch

# Architectures whose logits are exactly hidden @ lm_head.weight.T (no bias, scale or soft-capping)
# and whose decoder takes inputs_embeds unscaled. Anything else uses plain autograd.
FUSED_HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})
CHUNK_TOKENS = 32  # 32 x 49152 float32 logits = 6 MB per chunk; the backward holds ~4 such at once


def supports_fused_head(model: torch.nn.Module) -> bool:
    head = model.get_output_embeddings()
    return (
        getattr(model.config, "model_type", None) in FUSED_HEAD_MODEL_TYPES
        and isinstance(head, torch.nn.Linear)
        and head.bias is None
    )


def _accumulate(weight: torch.Tensor, fn) -> None:
    """Run `fn(grad)` on weight.grad, creating it (zeros) on first use."""
    if torch.is_grad_enabled():
        raise RuntimeError("headgrad supports first-order .backward() only (create_graph=True was used)")
    if weight.grad is None:
        weight.grad = torch.zeros_like(weight)
    fn(weight.grad)


class _Lookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ids_N: torch.Tensor, weight_VH: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(ids_N)
        ctx.weight = weight_VH
        return weight_VH.index_select(0, ids_N)

    @staticmethod
    def backward(ctx, grad_NH: torch.Tensor):
        (ids_N,) = ctx.saved_tensors
        weight = ctx.weight
        if weight.requires_grad:
            _accumulate(weight, lambda g: g.index_add_(0, ids_N, grad_NH.to(g.dtype)))
        return None, None


class _HeadLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden_NH, weight_VH, targets_N, temperature: float, compute_dtype):
        weight_c = weight_VH.to(compute_dtype)
        out_N = torch.empty(hidden_NH.shape[0], dtype=torch.float32, device=hidden_NH.device)
        for s in range(0, hidden_NH.shape[0], CHUNK_TOKENS):
            logits = (hidden_NH[s : s + CHUNK_TOKENS].to(compute_dtype) @ weight_c.T).float() / temperature
            picked = logits.gather(-1, targets_N[s : s + CHUNK_TOKENS, None]).squeeze(-1)
            out_N[s : s + CHUNK_TOKENS] = picked - torch.logsumexp(logits, -1)
        ctx.save_for_backward(hidden_NH, targets_N)
        ctx.weight, ctx.temperature, ctx.compute_dtype = weight_VH, temperature, compute_dtype
        return out_N

    @staticmethod
    def backward(ctx, grad_N: torch.Tensor):
        hidden_NH, targets_N = ctx.saved_tensors
        weight, temperature, dtype = ctx.weight, ctx.temperature, ctx.compute_dtype
        weight_c = weight.to(dtype)
        grad_hidden = torch.empty_like(hidden_NH) if ctx.needs_input_grad[0] else None
        for s in range(0, hidden_NH.shape[0], CHUNK_TOKENS):
            h = hidden_NH[s : s + CHUNK_TOKENS].to(dtype)
            logits = (h @ weight_c.T).float() / temperature
            # d logp(target) / d logits = onehot(target) - softmax(logits), times 1/temperature
            grad_logits = torch.softmax(logits, -1).neg_()
            grad_logits.scatter_add_(
                -1, targets_N[s : s + CHUNK_TOKENS, None], torch.ones_like(grad_logits[:, :1])
            )
            grad_logits.mul_((grad_N[s : s + CHUNK_TOKENS] / temperature)[:, None])
            if grad_hidden is not None:
                grad_hidden[s : s + CHUNK_TOKENS] = (grad_logits.to(dtype) @ weight_c).to(grad_hidden.dtype)
            if weight.requires_grad:  # addmm_ accumulates in place: no [V, H] temporary
                _accumulate(weight, lambda g, gl=grad_logits, h=h: g.addmm_(gl.T.to(g.dtype), h.to(g.dtype)))
        return grad_hidden, None, None, None, None


def aliased_leaves(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Leaf aliases of `module`'s trainable parameters whose gradients are added into the originals.

    For a second forward through the same weights (the trainer's prompt pass, whose KV cache the
    completion pass reuses): use them with `torch.func.functional_call`. Without them every weight
    has two uses, and autograd holds the first use's gradient of every layer in a buffer until the
    second arrives: a whole model of gradient temporaries at the backward peak (~300 MB at
    SmolLM2-135M). An alias shares its parameter's storage and hands its gradient over as soon as
    it is accumulated, so at most one layer's gradients are in flight.
    """
    leaves = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        leaf = param.detach().requires_grad_()

        def hand_over(alias: torch.Tensor, param: torch.Tensor = param) -> None:
            if param.grad is None:
                param.grad = alias.grad
            else:
                param.grad.add_(alias.grad)
            alias.grad = None

        leaf.register_post_accumulate_grad_hook(hand_over)
        leaves[name] = leaf
    return leaves


def lookup(ids: torch.Tensor, weight_VH: torch.Tensor) -> torch.Tensor:
    """weight_VH[ids] with the weight's gradient added into weight.grad (ids of any shape)."""
    return _Lookup.apply(ids.reshape(-1), weight_VH).view(*ids.shape, weight_VH.shape[1])


def head_logprobs(
    hidden_BTH: torch.Tensor, weight_VH: torch.Tensor, targets_BT: torch.Tensor, temperature: float
) -> torch.Tensor:
    """float32 log softmax(hidden @ weight.T / temperature)[target], [B, T], never holding [B, T, V]."""
    b, t, h = hidden_BTH.shape
    on = hidden_BTH.device.type
    dtype = torch.get_autocast_dtype(on) if torch.is_autocast_enabled(on) else weight_VH.dtype
    out = _HeadLogprobs.apply(
        hidden_BTH.reshape(b * t, h), weight_VH, targets_BT.reshape(-1).long(), temperature, dtype
    )
    return out.view(b, t)
