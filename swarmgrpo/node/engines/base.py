"""The rollout engine interface: prompts in, G sampled completions per prompt out, with behavior log-probs.

Engines live with the node. Each returns, for every sampled token, the log-probability the sampling
distribution gave it (log-softmax of logits / temperature, before top-p/top-k truncation), so the
trainer's importance ratio works the same whether a rollout came from this process or a peer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    """0 disables top-k."""
    seed: int | None = None


@dataclass(frozen=True)
class Completion:
    token_ids: list[int]
    """Sampled tokens, up to and including the end-of-sequence token if one was sampled."""
    logprobs: list[float]
    """Behavior log-prob of each sampled token (same length as token_ids)."""
    finished: bool
    """True if the completion ended with end-of-sequence rather than hitting max_tokens."""


class Engine(ABC):
    """Generates completions with the current policy weights."""

    quantization: str | None = None
    """"fp8" where the engine's linear layers run in FP8 (vLLM on an FP8 GPU), else None."""

    @abstractmethod
    def generate(self, prompts: list[list[int]], n: int, params: SamplingParams) -> list[list[Completion]]:
        """`n` completions for each prompt (token ids), in prompt order."""

    @abstractmethod
    def load_weights(self, state_dict: dict) -> None:
        """Take new policy weights (state-dict names, any float dtype) in place."""

    def close(self) -> None:  # noqa: B027 (an optional hook, not an abstract method)
        """Release what the engine holds beyond Python objects (vLLM's engine core)."""

    def sync_from(self, model) -> None:
        """Take the trainer's current weights (solo mode, after each step)."""
        self.load_weights(model.state_dict())
