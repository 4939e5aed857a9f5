"""The weight encoding: byte for byte what safetensors writes, and what load_into reads back."""

import hashlib

import pytest
import torch
from safetensors.torch import save as st_save

from swarmgrpo.node.weights import DTYPES, WeightError, encode, load_into
from swarmgrpo.trainer.models import load_model


@pytest.fixture(scope="module")
def tiny():
    model, _ = load_model("tiny")
    return model


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_encode_is_the_bytes_safetensors_writes(tiny, dtype):
    assert tiny.lm_head.weight.data_ptr() == tiny.model.embed_tokens.weight.data_ptr()
    expected, seen = {}, set()
    for name, t in sorted(tiny.state_dict().items()):  # a tied weight once, under its first name
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            expected[name] = t.detach().to(DTYPES[dtype]).contiguous()
    assert len(expected) == len(tiny.state_dict()) - 1
    data, sha = encode(tiny, dtype)
    assert data == st_save(expected, metadata={"format": "pt"})
    assert sha == hashlib.sha256(data).hexdigest()


def test_a_non_contiguous_weight_is_written_in_its_logical_order():
    model = torch.nn.Linear(3, 4)
    with torch.no_grad():
        model.weight = torch.nn.Parameter(torch.arange(12.0).reshape(3, 4).t())
    data, _ = encode(model, "float32")
    target = torch.nn.Linear(3, 4)
    load_into(target, data)
    assert torch.equal(target.weight, model.weight)


def test_load_into_refuses_bytes_that_are_not_the_published_ones(tiny):
    data, sha = encode(tiny)
    corrupt = bytearray(data)
    corrupt[-1] ^= 1
    with pytest.raises(WeightError, match="do not match the published sha256"):
        load_into(tiny, bytes(corrupt), sha)


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_load_into_reads_back_what_encode_wrote(dtype):
    source, _ = load_model("tiny", seed=1)
    target, _ = load_model("tiny", seed=2)
    data, sha = encode(source, dtype)
    load_into(target, data, sha)
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values(), strict=True):
        assert torch.equal(a.to(DTYPES[dtype]).float(), b), name


def test_weights_of_another_model_are_refused_by_name(tiny):
    data, _ = encode(torch.nn.Linear(3, 4))
    with pytest.raises(WeightError, match=r"lack \d+ tensors of this model"):
        load_into(tiny, data)
    with pytest.raises(WeightError, match="carry 1 tensors this model lacks"):
        load_into(torch.nn.Linear(3, 4, bias=False), data)
    with pytest.raises(WeightError, match="not a safetensors file"):
        load_into(tiny, b"\x01")
