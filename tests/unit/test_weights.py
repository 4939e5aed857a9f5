"""The weight encoding: byte for byte what safetensors writes, and what load_into reads back."""

import hashlib

import pytest
import torch
from safetensors.torch import save as st_save

from swarmgrpo.p2p.weights import (
    DTYPES,
    SCALE_SUFFIX,
    WeightError,
    dequantized,
    encode_model,
    is_fp8,
    load_into,
    to_fp8,
    views,
)
from swarmgrpo.trainer.fp8 import TILE, fake_quantize
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
    data, sha = encode_model(tiny, dtype)
    assert data == st_save(expected, metadata={"format": "pt"})
    assert sha == hashlib.sha256(data).hexdigest()


def test_a_non_contiguous_weight_is_written_in_its_logical_order():
    model = torch.nn.Linear(3, 4)
    with torch.no_grad():
        model.weight = torch.nn.Parameter(torch.arange(12.0).reshape(3, 4).t())
    data, _ = encode_model(model, "float32")
    target = torch.nn.Linear(3, 4)
    load_into(target, data)
    assert torch.equal(target.weight, model.weight)


def test_load_into_refuses_bytes_that_are_not_the_published_ones(tiny):
    data, sha = encode_model(tiny)
    corrupt = bytearray(data)
    corrupt[-1] ^= 1
    with pytest.raises(WeightError, match="do not match the published sha256"):
        load_into(tiny, bytes(corrupt), sha)


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_load_into_reads_back_what_encode_wrote(dtype):
    source, _ = load_model("tiny", seed=1)
    target, _ = load_model("tiny", seed=2)
    data, sha = encode_model(source, dtype)
    load_into(target, data, sha)
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values(), strict=True):
        assert torch.equal(a.to(DTYPES[dtype]).float(), b), name


def test_weights_of_another_model_are_refused_by_name(tiny):
    data, _ = encode_model(torch.nn.Linear(3, 4))
    with pytest.raises(WeightError, match=r"lack \d+ tensors of this model"):
        load_into(tiny, data)
    with pytest.raises(WeightError, match="carry 1 tensors this model lacks"):
        load_into(torch.nn.Linear(3, 4, bias=False), data)
    with pytest.raises(WeightError, match="not a safetensors file"):
        load_into(tiny, b"\x01")


def test_fp8_file_holds_the_linear_weights_in_e4m3_blocks_and_the_rest_as_it_was(tiny):
    data, _ = encode_model(tiny)
    fp8, sha8 = to_fp8(data)
    assert to_fp8(data) == (fp8, sha8) and sha8 == hashlib.sha256(fp8).hexdigest()  # bytes alone decide
    assert is_fp8(fp8) and not is_fp8(data) and not is_fp8(b"\x01" * 16)
    full, small = views(data), views(fp8)
    # the tied embedding is written once, as lm_head.weight
    linear = [n for n, t in full.items() if t.dim() == 2 and n != "lm_head.weight"]
    assert linear and set(small) == set(full) | {n + SCALE_SUFFIX for n in linear}
    for name, t in full.items():
        if name in linear:
            assert small[name].dtype == torch.float8_e4m3fn
            rows, cols = t.shape
            assert small[name + SCALE_SUFFIX].shape == (-(-rows // TILE), -(-cols // TILE))
        else:  # the embedding and head, the norms: untouched bf16
            assert torch.equal(small[name], t)
    back = dequantized(small)
    assert back.keys() == full.keys()
    for name in linear:  # exactly the FP8 rounding of the bf16 values, DeepSeek-V3's weight tiles
        assert torch.equal(back[name], fake_quantize(full[name].float(), TILE, TILE)), name
    target, _ = load_model("tiny", seed=5)
    load_into(target, fp8, sha8)
    state = target.state_dict()
    assert all(torch.equal(state[n], back[n].float()) for n in back)


def test_fp8_file_is_about_half_the_bytes_of_bf16_for_linear_layers():
    model = torch.nn.Sequential(
        torch.nn.Linear(1024, 1024, bias=False), torch.nn.Linear(1024, 4096, bias=False)
    )
    data, _ = encode_model(model)
    fp8, _ = to_fp8(data)
    # 1 byte per value instead of 2, and one float32 scale per 128 x 128 block (4 bytes / 16384 values)
    assert 0.5 < len(fp8) / len(data) < 0.5 + 0.001
