"""The all-reduce's part rules on their own: sizes, who may send what, what is held before a round."""

import math

import pytest
import torch
from hivemind.compression import serialize_torch_tensor
from hivemind.proto import runtime_pb2

from swarmgrpo.p2p import compression
from swarmgrpo.p2p.allreduce import SEND_WINDOW, AllReduceError
from swarmgrpo.p2p.allreduce_math import decode_mean, weighted_mean
from swarmgrpo.p2p.allreduce_parts import (
    EARLY_PARTS,
    EARLY_SEGMENTS,
    GATHER,
    REDUCE,
    Layout,
    early_refusal,
    refusal,
)
from swarmgrpo.protocol import swarm_pb2

PEERS = ("peer-a", "peer-b", "peer-c")
LAYOUT = Layout("r", PEERS, 0, "none", 1000, 150)  # slice 0: 334 values in 3 segments (112, 111, 111)


@pytest.mark.parametrize("codec", compression.CODECS)
@pytest.mark.parametrize("n", [0, 1, 2, 1023, 1025, 5000])
def test_encoded_size_bounds_what_encode_makes(codec, n):
    low, high = compression.encoded_size(codec, n)
    for part in (torch.randn(n), torch.full((n,), 2.5)):  # a constant part: float32 in uint8
        assert low <= len(compression.encode_part(codec, part)) <= high
    if codec != "uint8":
        assert low == high


@pytest.mark.parametrize("numel,n,segment", [(1000, 3, 150), (10, 3, 100), (2, 3, 1), (100_003, 3, 10_007)])
def test_layout_cuts_segments_as_the_round_does(numel, n, segment):
    layout = Layout("r", PEERS[:n], 0, "none", numel, segment)
    for part, piece in enumerate(torch.tensor_split(torch.empty(numel), n)):
        cut = torch.tensor_split(piece, max(1, -(-piece.numel() // segment)))
        assert layout.segment_numels(part) == [t.numel() for t in cut]


def _size(segment: int) -> int:
    return compression.encoded_size("none", LAYOUT.segment_numels(0)[segment])[0]


def test_a_members_part_of_the_right_size_and_weight_is_taken():
    assert refusal(LAYOUT, ("r", REDUCE, 0, 1, 2), "peer-b", _size(2), 1.5) is None
    mean_size = compression.encoded_size("none", LAYOUT.segment_numels(2)[0])[0]
    assert refusal(LAYOUT, ("r", GATHER, 2, 2, 0), "peer-c", mean_size, 0.0) is None


@pytest.mark.parametrize(
    "key,peer",
    [
        (("r", REDUCE, 0, 1, 0), "peer-c"),  # peer c claiming to be member 1
        (("r", REDUCE, 0, 1, 0), "outsider"),
        (("r", GATHER, 0, 0, 0), "peer-a"),  # a mean of this member's own slice
        (("r", GATHER, 1, 2, 0), "peer-c"),  # a mean of slice 1 from member 2, not its owner
        (("r", REDUCE, 1, 2, 0), "peer-c"),  # a part of a slice this member does not own
        (("r", REDUCE, 0, 0, 0), "peer-a"),  # its own part, from the network
        (("r", REDUCE, 0, 3, 0), "peer-a"),  # a member index past the round
        (("r", 2, 0, 1, 0), "peer-b"),  # no such phase
    ],
)
def test_a_part_no_member_sends_here_is_refused_blaming_no_member(key, peer):
    refused = refusal(LAYOUT, key, peer, _size(0), 1.0)
    assert refused is not None and refused.culprit is None


@pytest.mark.parametrize(
    "segment,size,weight,why",
    [
        (0, _size(0) + 4, 1.0, "bytes in none"),
        (0, 2 << 30, 1.0, "bytes in none"),
        (3, _size(0), 1.0, "no segment 3"),
        (0, _size(0), math.nan, "weight nan"),
        (0, _size(0), math.inf, "weight inf"),
        (0, _size(0), 0.0, "weight 0.0"),
        (0, _size(0), -1.0, "weight -1.0"),
    ],
)
def test_a_members_bad_part_is_refused_blaming_it(segment, size, weight, why):
    refused = refusal(LAYOUT, ("r", REDUCE, 0, 2, segment), "peer-c", size, weight)
    assert refused is not None and refused.culprit == 2 and why in refused.reason


def _early(peer="p", total=100, phase=REDUCE, weight=1.0):
    return swarm_pb2.AllReducePart(round_id="r", phase=phase, weight=weight, total_bytes=total), peer


def test_early_parts_are_held_within_bounds():
    largest = 1000
    assert early_refusal(*_early(), [], largest, SEND_WINDOW) is None
    assert "means cannot come" in early_refusal(*_early(phase=GATHER), [], largest, SEND_WINDOW)
    assert "weight nan" in early_refusal(*_early(weight=math.nan), [], largest, SEND_WINDOW)
    assert "larger than any segment" in early_refusal(*_early(total=largest + 1), [], largest, SEND_WINDOW)
    mine = [("p", 10)] * SEND_WINDOW
    assert "send again later" in early_refusal(*_early(), mine, largest, SEND_WINDOW)
    assert early_refusal(*_early(peer="q"), mine, largest, SEND_WINDOW) is None
    many = [(f"p{i}", 1) for i in range(EARLY_PARTS)]
    assert "send again later" in early_refusal(*_early(peer="q"), many, largest, SEND_WINDOW)
    full = [(f"p{i}", largest) for i in range(EARLY_SEGMENTS)]
    assert "send again later" in early_refusal(*_early(peer="q", total=1), full, largest, SEND_WINDOW)


def _part(values: torch.Tensor, w: float = 1.0):
    return w, compression.encode_part("none", values)


def test_an_owner_refuses_non_finite_or_wrong_sized_parts_naming_the_member():
    good = torch.ones(10)
    for bad in (torch.tensor([1.0] * 9 + [math.nan]), torch.tensor([math.inf] + [1.0] * 9), torch.ones(11)):
        with pytest.raises(AllReduceError) as caught:
            weighted_mean("none", [_part(good), _part(bad)], 10, None, 0)
        assert caught.value.culprits == [1] and caught.value.missing == [1]
    with pytest.raises(AllReduceError, match="overflows float32") as caught:
        weighted_mean("none", [_part(good), _part(torch.full((10,), 3e38), 2.0)], 10, None, 0)
    assert caught.value.culprits == [1]
    mean = compression.decode_part(weighted_mean("none", [_part(good), _part(3 * good, 3.0)], 10, None, 0))
    assert torch.equal(mean, torch.full((10,), 2.5))


def test_a_member_refuses_a_non_finite_mean_naming_its_owner():
    out = torch.empty(4)
    with pytest.raises(AllReduceError, match="non-finite") as caught:
        decode_mean(
            compression.encode_part("none", torch.tensor([1.0, math.nan, 2.0, 3.0])),
            out,
            ("r", GATHER, 2, 2, 0),
        )
    assert caught.value.culprits == [2]
    with pytest.raises(AllReduceError, match="does not decode") as caught:
        decode_mean(compression.encode_part("none", torch.ones(5)), out, ("r", GATHER, 1, 1, 0))
    assert caught.value.culprits == [1]


def test_hivemind_encodings_swarmgrpo_does_not_send_are_refused():
    message = serialize_torch_tensor(torch.randn(100), runtime_pb2.FLOAT16)
    with pytest.raises(ValueError, match="FLOAT16 is not one that swarmgrpo sends"):
        compression.decode_part(b"h" + message.SerializeToString())
