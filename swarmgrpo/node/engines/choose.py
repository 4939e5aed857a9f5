"""Which rollout engine a node runs: `engine = "auto" | "vllm" | "transformers"` (run config or `--engine`).

`auto` takes vLLM when it imports, the model is a folder vLLM can load (not the in-memory `tiny`),
the run's sampling settings are ones vLLM reports our behavior log-probs for, and the engine
starts; otherwise transformers, with the reason logged. `vllm` asked for explicitly fails loudly
instead of falling back.

FP8 rollouts (`fp8` in the run config): vLLM runs with `quantization="fp8"` where the run says "on", or
"auto" on a GPU that multiplies FP8 (compute capability >= 8.9) in a bf16 run (vLLM's FP8 takes bf16
or fp16 activations, not float32), so a volunteer changes nothing. The
log-probs then come from the FP8 policy while the trainer's are bf16 or FP8-trained float32; the
truncated importance-sampling weight (`tis_cap`) corrects that mismatch as it does any other.
"""

from __future__ import annotations

import logging

import torch

from swarmgrpo.core.device import gpu_has_fp8
from swarmgrpo.core.errors import UserError
from swarmgrpo.node.engines.base import Engine
from swarmgrpo.trainer.config import ENGINES, TrainConfig
from swarmgrpo.trainer.models import TINY, resolve_model_path

log = logging.getLogger("swarmgrpo.engine")


def build_engine(choice: str, cfg: TrainConfig, model_loader, threads: int = 0) -> Engine:
    """The engine for `cfg`'s model; `model_loader()` returns the (model, tokenizer) the transformers
    engine runs on (called only when that engine is chosen)."""
    if choice not in ENGINES:
        raise UserError(f"unknown engine '{choice}'; use one of: {', '.join(ENGINES)}")
    if choice != "transformers":
        try:
            return vllm_engine(cfg, threads)
        except UserError as e:
            if choice == "vllm":
                raise
            log.info("rollout engine: transformers (%s)", e)
        except Exception as e:  # a model or platform vLLM does not support: found by starting it
            if choice == "vllm":
                raise UserError(f"vLLM could not start '{cfg.model}': {type(e).__name__}: {e}") from e
            log.warning("rollout engine: transformers (vLLM failed to start: %s: %s)", type(e).__name__, e)
    return transformers_engine(cfg, *model_loader())


def vllm_engine(cfg: TrainConfig, threads: int = 0) -> Engine:
    from swarmgrpo.node.engines import vllm_engine as v

    reason = v.unavailable_reason()
    if reason:
        raise UserError(reason)
    if cfg.model == TINY:
        raise UserError(f"model '{TINY}' lives in memory and vLLM loads from a folder")
    quantization = "fp8" if rollout_fp8(cfg) else None
    engine = v.VLLMEngine(
        resolve_model_path(cfg.model),
        dtype=cfg.dtype,
        max_model_len=cfg.max_prompt_length + cfg.max_completion_length,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        seed=cfg.seed,
        threads=threads,
        quantization=quantization,
    )
    log.info(
        "rollout engine: vLLM (%s%s, logprobs_mode %s)",
        cfg.dtype,
        ", FP8 linears" if quantization else "",
        engine.mode,
    )
    return engine


def rollout_fp8(cfg: TrainConfig) -> bool:
    """Whether this node's vLLM rolls out in FP8: the run says "on", or "auto" on an FP8 GPU in a
    bf16 run."""
    return cfg.fp8 == "on" or (cfg.fp8 == "auto" and cfg.dtype == "bfloat16" and gpu_has_fp8())


def transformers_engine(cfg: TrainConfig, model, tokenizer) -> Engine:
    from swarmgrpo.node.engines.transformers_engine import TransformersEngine

    autocast = torch.bfloat16 if cfg.dtype == "bfloat16" else None
    return TransformersEngine(model, tokenizer, autocast_dtype=autocast)
