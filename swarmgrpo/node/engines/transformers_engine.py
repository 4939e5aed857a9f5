"""Rollouts with a transformers model: batched sampling with a KV cache (`generate`).

In solo mode the engine shares its `nn.Module` with the trainer, so a new policy needs no copy.
"""

from __future__ import annotations

import torch

from swarmgrpo.node.engines.base import Completion, Engine, SamplingParams
from swarmgrpo.p2p.weights import copy_weights
from swarmgrpo.trainer.models import model_device

# Legend: N = prompts × n sequences sampled together, P = padded prompt length, T = new tokens, V = vocab.


class TransformersEngine(Engine):
    def __init__(self, model, tokenizer, max_batch: int = 64, autocast_dtype: torch.dtype | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.autocast_dtype = autocast_dtype

    def load_weights(self, state_dict: dict) -> None:
        copy_weights(self.model, state_dict)

    def sync_from(self, model) -> None:
        if model is not self.model:  # the trainer's own module: nothing to copy
            copy_weights(self.model, model.state_dict())

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], n: int, params: SamplingParams) -> list[list[Completion]]:
        per_batch = max(1, self.max_batch // n)
        out: list[Completion] = []
        with torch.random.fork_rng(enabled=params.seed is not None):
            if params.seed is not None:
                torch.manual_seed(params.seed)
            for start in range(0, len(prompts), per_batch):
                out.extend(self._generate_batch(prompts[start : start + per_batch], n, params))
        return [out[i * n : (i + 1) * n] for i in range(len(prompts))]

    def _generate_batch(self, prompts: list[list[int]], n: int, params: SamplingParams) -> list[Completion]:
        """n completions of each of K prompts, decoded together (N = K·n rows).

        Each prompt's context (all tokens but the last) is prefilled once and its KV cache copied n
        times, instead of running the same prompt n times (prefill is ~half of the work at G = 8).
        The decode loop is ours rather than `model.generate`: per token it runs the model, samples,
        and keeps only the sampled token's log-prob, where `generate` kept every step's [N, V]
        logits and spent ~1/3 of the step time around the forward pass on SmolLM2 at N = 32.
        """
        pad = self.tokenizer.pad_token_id
        eos = self.tokenizer.eos_token_id
        width = max(len(p) for p in prompts)
        ids_KP = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask_KP = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding, so every row's new tokens start at column P
            ids_KP[i, width - len(p) :] = torch.tensor(p)
            mask_KP[i, width - len(p) :] = 1
        device = model_device(self.model)  # the inputs go where the model is
        ids_KP, mask_KP = ids_KP.to(device), mask_KP.to(device)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.autocast(
                device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None
            ):
                cache = self._prefill(ids_KP[:, :-1], mask_KP[:, :-1], n) if width > 1 else None
                tokens_NT, logp_NT = self._decode(
                    ids_KP[:, -1:].repeat_interleave(n, 0),
                    mask_KP.repeat_interleave(n, 0),
                    cache,
                    params,
                    eos,
                    pad,
                )
        finally:
            self.model.train(was_training)
        completions = []
        for toks, logps in zip(tokens_NT.tolist(), logp_NT.tolist(), strict=True):
            finished = eos in toks
            end = toks.index(eos) + 1 if finished else len(toks)
            completions.append(Completion(toks[:end], logps[:end], finished=finished))
        return completions

    def _prefill(self, ids_KP: torch.Tensor, mask_KP: torch.Tensor, n: int):
        """The KV cache of all prompt tokens but the last."""
        positions = (mask_KP.cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            input_ids=ids_KP, attention_mask=mask_KP, position_ids=positions, use_cache=True, logits_to_keep=1
        )
        out.past_key_values.batch_repeat_interleave(n)
        return out.past_key_values

    def _decode(self, last_N1, mask_NP, cache, params: SamplingParams, eos: int, pad: int):
        """Sample up to max_tokens per row; a row that sampled EOS is fed padding until all are done."""
        n_rows = last_N1.shape[0]
        position_N1 = mask_NP.sum(-1, keepdim=True) - 1
        inputs_N1, mask = last_N1, mask_NP
        done_N = torch.zeros(n_rows, dtype=torch.bool, device=last_N1.device)
        tokens, logps = [], []
        for _ in range(params.max_tokens):
            out = self.model(
                input_ids=inputs_N1,
                attention_mask=mask,
                position_ids=position_N1,
                past_key_values=cache,
                use_cache=True,
            )
            cache = out.past_key_values
            token_N, logp_N = sample(out.logits[:, -1].float(), params)
            token_N = torch.where(done_N, pad, token_N)
            tokens.append(token_N)
            logps.append(torch.where(done_N, 0.0, logp_N))
            done_N |= token_N == eos
            if bool(done_N.all()):
                break
            inputs_N1 = token_N[:, None]
            mask = torch.cat([mask, torch.ones(n_rows, 1, dtype=mask.dtype, device=mask.device)], 1)
            position_N1 = position_N1 + 1
        if not tokens:
            return torch.empty(n_rows, 0, dtype=torch.long), torch.empty(n_rows, 0)
        return torch.stack(tokens, 1), torch.stack(logps, 1)


def sample(logits_NV: torch.Tensor, params: SamplingParams) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row and its behavior log-prob: log-softmax(logits / temperature) of the token,
    before top-k/top-p truncation (which only narrows where the token is drawn from). Greedy when
    temperature is 0 (its log-prob is then taken at temperature 1)."""
    if params.temperature == 0:
        token_N = logits_NV.argmax(-1)
        return token_N, _picked_logprob(logits_NV, token_N)
    scaled_NV = logits_NV / params.temperature
    logp_NV = torch.log_softmax(scaled_NV, -1)
    filtered_NV = logp_NV
    if params.top_k and params.top_k < logp_NV.shape[-1]:
        kth_N1 = logp_NV.topk(params.top_k, -1).values[:, -1:]
        filtered_NV = filtered_NV.masked_fill(filtered_NV < kth_N1, float("-inf"))
    if params.top_p < 1.0:
        sorted_NV, order_NV = filtered_NV.sort(-1, descending=True)
        # Drop a token when the tokens ranked above it already reach top_p (the first is always kept).
        drop_NV = sorted_NV.exp().cumsum(-1) - sorted_NV.exp() >= params.top_p
        filtered_NV = filtered_NV.masked_fill(
            torch.zeros_like(drop_NV).scatter(-1, order_NV, drop_NV), float("-inf")
        )
    token_N = draw(torch.softmax(filtered_NV, -1))
    return token_N, logp_NV.gather(-1, token_N[:, None])[:, 0]


def draw(probs_NV: torch.Tensor) -> torch.Tensor:
    """One index per row, drawn with probability probs_NV, by inverting the cumulative distribution.

    One uniform number per row and a binary search: at SmolLM2's vocabulary and 32 rows ~2 ms, where
    `torch.multinomial` (and the exponential race) draw a random number per vocabulary entry and
    take ~33 ms on this CPU, a fifth of a decode step. float64 keeps the sums exact enough that
    a zero-probability index is never drawn (`right=True` skips the flat stretches of the CDF).
    """
    cdf_NV = probs_NV.to(torch.float64).cumsum(-1)
    # drawn from the CPU generator on any device, so a seed draws the same numbers everywhere
    u_N1 = torch.rand(probs_NV.shape[0], 1, dtype=torch.float64).to(probs_NV.device) * cdf_NV[:, -1:]
    return torch.searchsorted(cdf_NV, u_N1, right=True)[:, 0].clamp_(max=probs_NV.shape[-1] - 1)


def _picked_logprob(logits_NV: torch.Tensor, tokens_N: torch.Tensor) -> torch.Tensor:
    return logits_NV.gather(-1, tokens_N[:, None])[:, 0] - logits_NV.logsumexp(-1)
