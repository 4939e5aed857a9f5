"""Gradient codecs: round trips, error bounds, and refusals."""

import pytest
import torch

from swarmgrpo.node.compression import FP16_BLOCK, decode, encode


def test_block_fp16_keeps_small_values_next_to_large_ones():
    g = torch.Generator().manual_seed(0)
    x = torch.cat(
        [torch.randn(5000, generator=g) * 30, torch.randn(3000, generator=g) * 1e-8, torch.zeros(1)]
    )
    y = decode(encode("fp16", x))
    assert y.shape == x.shape
    big, tiny = slice(0, 5000), slice(5000 + FP16_BLOCK, 8000)  # whole blocks of tiny values
    assert ((y[big] - x[big]).abs() <= x[big].abs().max() * 2**-11).all()
    assert ((y[tiny] - x[tiny]).abs() <= x[tiny].abs().max() * 2**-11).all()
    assert not (y[tiny] == 0).all(), "plain float16 would flush these to zero"
    assert len(encode("fp16", x)) < 0.51 * len(encode("none", x))


@pytest.mark.parametrize("codec", ["none", "fp16", "uint8"])
def test_empty_and_constant_parts_round_trip(codec):
    assert decode(encode(codec, torch.zeros(0))).numel() == 0
    torch.testing.assert_close(decode(encode(codec, torch.full((9,), -1.5))), torch.full((9,), -1.5))


def test_unknown_codec_and_encoding_are_refused():
    with pytest.raises(ValueError, match="unknown compression 'zip'"):
        encode("zip", torch.ones(3))
    with pytest.raises(ValueError, match="unknown gradient encoding"):
        decode(b"?garbage")


def test_float32_parts_are_their_raw_values_and_a_truncated_part_is_refused():
    x = torch.randn(1000)
    data = encode("none", x)
    assert len(data) == 1 + 4 * 1000 and torch.equal(decode(data), x)
    with pytest.raises(ValueError):
        decode(data[:-1])
    with pytest.raises(ValueError, match="cannot hold"):
        decode(encode("fp16", x)[:-2])
