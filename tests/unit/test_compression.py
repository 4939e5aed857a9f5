"""Gradient codecs: round trips, error bounds, and refusals."""

import pytest
import torch

from swarmgrpo.p2p.compression import BLOCK_VALUES, CHUNK_VALUES, decode_part, decode_part_into, encode_part


def test_block_fp16_keeps_small_values_next_to_large_ones():
    g = torch.Generator().manual_seed(0)
    x = torch.cat(
        [torch.randn(5000, generator=g) * 30, torch.randn(3000, generator=g) * 1e-8, torch.zeros(1)]
    )
    y = decode_part(encode_part("fp16", x))
    assert y.shape == x.shape
    big, tiny = slice(0, 5000), slice(5000 + BLOCK_VALUES, 8000)  # whole blocks of tiny values
    assert ((y[big] - x[big]).abs() <= x[big].abs().max() * 2**-11).all()
    assert ((y[tiny] - x[tiny]).abs() <= x[tiny].abs().max() * 2**-11).all()
    assert not (y[tiny] == 0).all(), "plain float16 would flush these to zero"
    assert len(encode_part("fp16", x)) < 0.51 * len(encode_part("none", x))


@pytest.mark.parametrize("codec", ["none", "fp16", "int8", "fp8", "uint8"])
def test_empty_and_constant_parts_round_trip(codec):
    assert decode_part(encode_part(codec, torch.zeros(0))).numel() == 0
    torch.testing.assert_close(
        decode_part(encode_part(codec, torch.full((9,), -1.5))), torch.full((9,), -1.5)
    )


def test_unknown_codec_and_encoding_are_refused():
    with pytest.raises(ValueError, match="unknown compression 'zip'"):
        encode_part("zip", torch.ones(3))
    with pytest.raises(ValueError, match="unknown gradient encoding"):
        decode_part(b"?garbage")


def test_float32_parts_are_their_raw_values_and_a_truncated_part_is_refused():
    x = torch.randn(1000)
    data = encode_part("none", x)
    assert len(data) == 1 + 4 * 1000 and torch.equal(decode_part(data), x)
    with pytest.raises(ValueError):
        decode_part(data[:-1])
    with pytest.raises(ValueError, match="cannot hold"):
        decode_part(encode_part("fp16", x)[:-2])


@pytest.mark.parametrize("codec", ["fp16", "int8"])
def test_block_codecs_bound_the_error_per_block_across_chunks_and_a_short_last_block(codec):
    g = torch.Generator().manual_seed(1)
    n = CHUNK_VALUES + 3 * BLOCK_VALUES + 17  # two chunks, the second ending in a block of 17
    x = torch.randn(n, generator=g) * torch.logspace(-6, 2, n)  # block magnitudes 1e-6 .. 1e2
    y = decode_part(encode_part(codec, x))
    step = 2**-11 if codec == "fp16" else 1 / 254  # relative to the block's largest magnitude
    padded = torch.nn.functional.pad(x, (0, -n % BLOCK_VALUES)).view(-1, BLOCK_VALUES)
    bound = padded.abs().amax(1).repeat_interleave(BLOCK_VALUES)[:n] * step * 1.0001
    assert ((y - x).abs() <= bound).all()
    itemsize = 2 if codec == "fp16" else 1
    assert len(encode_part(codec, x)) == 9 + 4 * (-(-n // BLOCK_VALUES)) + itemsize * n


def test_int8_uses_its_whole_range_and_keeps_zeros_and_signs():
    x = torch.tensor([0.0, 1.0, -1.0, 0.5, -0.25, 1e-9])
    y = decode_part(encode_part("int8", x))
    assert y[0] == 0 and y[1] == 1 and y[2] == -1
    assert torch.equal(torch.sign(y[:5]), torch.sign(x[:5]))
    torch.testing.assert_close(y, x, atol=1 / 254, rtol=0)


def test_fp8_keeps_every_value_to_its_relative_precision_across_chunks_and_a_short_last_block():
    """e4m3 after scaling each block's largest magnitude to 448: a value whose scaled magnitude is a
    normal float8 (>= 2^-6) is off by at most half of its 3-bit mantissa's step (2^-4 relative);
    below that, by half the subnormal step (2^-10 in scaled units)."""
    g = torch.Generator().manual_seed(2)
    n = CHUNK_VALUES + 3 * BLOCK_VALUES + 17
    x = torch.randn(n, generator=g) * torch.logspace(-6, 2, n)
    x[5 * BLOCK_VALUES + 3] = 1e-9  # far below its block's largest, next to it
    y = decode_part(encode_part("fp8", x))
    padded = torch.nn.functional.pad(x, (0, -n % BLOCK_VALUES)).view(-1, BLOCK_VALUES)
    unit = padded.abs().amax(1).repeat_interleave(BLOCK_VALUES)[:n] / 448  # one scaled unit
    bound = torch.maximum(x.abs() * 2**-4, unit * 2**-10) * 1.0001
    assert ((y - x).abs() <= bound).all()
    assert torch.equal(torch.sign(y[x.abs() > unit * 2**-9]), torch.sign(x[x.abs() > unit * 2**-9]))
    assert len(encode_part("fp8", x)) == len(encode_part("int8", x)) == 9 + 4 * (-(-n // BLOCK_VALUES)) + n


def test_fp8_sends_what_int8_rounds_to_zero():
    x = torch.tensor([1.0, 1e-3, -2e-3, 3e-4] + [0.0] * 100)  # one block: at most 1/1000 of its largest
    y8, yi = decode_part(encode_part("fp8", x)), decode_part(encode_part("int8", x))
    assert (yi[1:4] == 0).all()  # below half an int8 step (1/254)
    torch.testing.assert_close(y8[:4], x[:4], rtol=2**-4, atol=0)


@pytest.mark.parametrize("codec", ["none", "fp16", "int8", "fp8", "uint8"])
def test_decode_into_writes_the_part_and_refuses_a_part_of_another_size(codec):
    x = torch.randn(3000)
    out = torch.full((3000,), float("nan"))
    decode_part_into(encode_part(codec, x), out)
    torch.testing.assert_close(out, decode_part(encode_part(codec, x)))
    with pytest.raises(ValueError, match="a gradient part of 3000 values arrived where 2999 were expected"):
        decode_part_into(encode_part(codec, x), torch.empty(2999))
