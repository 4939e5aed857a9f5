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
        flat = [p for p in prompts for _ in range(n)]
        out: list[Completion] = []
        with torch.random.fork_rng(enabled=params.seed is not None):
            if params.seed is not None:
                torch.manual_seed(params.seed)
            for start in range(0, len(flat), self.max_batch):
                out.extend(self._generate_batch(flat[start : start + self.max_batch], params))
        return [out[i * n : (i + 1) * n] for i in range(len(prompts))]

    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        pad = self.tokenizer.pad_token_id
        eos = self.tokenizer.eos_token_id
        width = max(len(p) for p in prompts)
        ids_NP = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask_NP = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding, so every row's new tokens start at column P
            ids_NP[i, width - len(p) :] = torch.tensor(p)
            mask_NP[i, width - len(p) :] = 1
        greedy = params.temperature == 0
        config = GenerationConfig(
            max_new_tokens=params.max_tokens,
            do_sample=not greedy,
            temperature=None if greedy else params.temperature,
            top_p=None if greedy else params.top_p,
            top_k=None if greedy else params.top_k,
            pad_token_id=pad,
            eos_token_id=eos,
            output_logits=True,
            return_dict_in_generate=True,
        )
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.autocast("cpu", dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
                result = self.model.generate(
                    input_ids=ids_NP, attention_mask=mask_NP, generation_config=config
                )
        finally:
            self.model.train(was_training)
        new_NT = result.sequences[:, width:]
        logits_NTV = torch.stack(result.logits, dim=1).float()
        if not greedy:
            logits_NTV = logits_NTV / params.temperature
        logp_NT = logits_NTV.gather(-1, new_NT.unsqueeze(-1)).squeeze(-1) - logits_NTV.logsumexp(-1)
        completions = []
        for toks, logps in zip(new_NT.tolist(), logp_NT.tolist(), strict=True):
            finished = eos in toks
            end = toks.index(eos) + 1 if finished else len(toks)
            completions.append(Completion(toks[:end], logps[:end], finished=finished))
        return completions
