"""Rollouts with a transformers model: batched sampling with a KV cache (`generate`).

In solo mode the engine shares its `nn.Module` with the trainer, so a new policy needs no copy.
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig

from swarmgrpo.node.engines.base import Completion, Engine, SamplingParams

# Legend: N = prompts × n sequences sampled together, P = padded prompt length, T = new tokens, V = vocab.


class TransformersEngine(Engine):
    def __init__(self, model, tokenizer, max_batch: int = 64, autocast_dtype: torch.dtype | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.autocast_dtype = autocast_dtype

    def load_weights(self, state_dict: dict) -> None:
        self.model.load_state_dict(state_dict, strict=False)

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
        """n completions of each of K prompts. Each prompt is prefilled once and its KV cache copied n
        times, instead of running the same prompt n times (prefill is ~half of the work at G = 8)."""
        pad = self.tokenizer.pad_token_id
        eos = self.tokenizer.eos_token_id
        width = max(len(p) for p in prompts)
        ids_KP = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask_KP = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding, so every row's new tokens start at column P
            ids_KP[i, width - len(p) :] = torch.tensor(p)
            mask_KP[i, width - len(p) :] = 1
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.autocast("cpu", dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
                cache = self._prefill(ids_KP[:, :-1], mask_KP[:, :-1], n) if width > 1 else None
                result = self.model.generate(
                    input_ids=ids_KP.repeat_interleave(n, 0),
                    attention_mask=mask_KP.repeat_interleave(n, 0),
                    past_key_values=cache,
                    generation_config=self._config(params),
                )
        finally:
            self.model.train(was_training)
        return self._completions(result, width, params, eos)

    def _prefill(self, ids_KP: torch.Tensor, mask_KP: torch.Tensor, n: int):
        """The KV cache of all prompt tokens but the last (generate must see one uncached token)."""
        positions = (mask_KP.cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            input_ids=ids_KP, attention_mask=mask_KP, position_ids=positions, use_cache=True, logits_to_keep=1
        )
        out.past_key_values.batch_repeat_interleave(n)
        return out.past_key_values

    def _config(self, params: SamplingParams) -> GenerationConfig:
        greedy = params.temperature == 0
        return GenerationConfig(
            max_new_tokens=params.max_tokens,
            do_sample=not greedy,
            temperature=None if greedy else params.temperature,
            top_p=None if greedy else params.top_p,
            top_k=None if greedy else params.top_k,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            output_logits=True,
            return_dict_in_generate=True,
        )

    def _completions(self, result, width: int, params: SamplingParams, eos: int) -> list[Completion]:
        greedy = params.temperature == 0
        new_NT = result.sequences[:, width:]
        scale = 1.0 if greedy else 1.0 / params.temperature
        # One step at a time: stacking [N, T, V] float32 logits would cost N·T·V·4 bytes more.
        logp_NT = torch.stack(
            [
                _sampled_logprob(logits_NV.float() * scale, new_NT[:, t])
                for t, logits_NV in enumerate(result.logits)
            ],
            dim=1,
        )
        completions = []
        for toks, logps in zip(new_NT.tolist(), logp_NT.tolist(), strict=True):
            finished = eos in toks
            end = toks.index(eos) + 1 if finished else len(toks)
            completions.append(Completion(toks[:end], logps[:end], finished=finished))
        return completions


def _sampled_logprob(logits_NV: torch.Tensor, tokens_N: torch.Tensor) -> torch.Tensor:
    return logits_NV.gather(-1, tokens_N[:, None])[:, 0] - logits_NV.logsumexp(-1)
