"""Model loading: built-ins, local folders, and a one-line error for anything else."""

from pathlib import Path

import pytest
import torch

from swarmgrpo.core.errors import UserError
from swarmgrpo.trainer.models import load_model, resolve_model_path


def test_tiny_is_seeded_and_small(tiny):
    model, tok = tiny
    again, _ = load_model("tiny")
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True)
    )
    other, _ = load_model("tiny", seed=1)
    assert not torch.equal(model.model.embed_tokens.weight, other.model.embed_tokens.weight)
    assert sum(p.numel() for p in model.parameters()) < 5_000_000
    assert model.config.vocab_size == len(tok) and tok.pad_token_id is not None


def test_default_model_loads_from_the_safetensors_cache():
    path = resolve_model_path("smollm2-135m")
    stamp = Path(path, "model.safetensors").stat().st_mtime
    model, tok = load_model("smollm2-135m")
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    assert Path(path, "model.safetensors").stat().st_mtime == stamp  # not rebuilt


def test_saved_folder_round_trips(tiny, tmp_path):
    model, tok = tiny
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, _ = load_model(str(tmp_path))
    assert torch.equal(again.lm_head.weight, model.lm_head.weight)


@pytest.mark.parametrize("name", ["no-such/model-anywhere", "./not-a-folder"])
def test_unknown_model_is_one_clear_line(name):
    with pytest.raises(UserError) as err:
        load_model(name)
    message = str(err.value)
    assert name in message and "pass a local folder" in message and "\n" not in message


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(UserError, match=r"has no config\.json"):
        load_model(str(tmp_path))


def test_a_device_is_auto_cpu_or_an_existing_gpu():
    from swarmgrpo.core.device import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match=r'torch sees no GPU .* use device "auto" or "cpu"'):
            resolve_device("cuda")
