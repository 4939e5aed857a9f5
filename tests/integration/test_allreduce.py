"""All-reduce between real peers: this process is member 0, two member processes run beside it.

Every codec averages (8-bit and PowerSGD move every member onto the mean, up to their error), every
member ends with bitwise-identical values, a member that dies fails the round with its index named,
and hivemind's own 8-bit codec decodes again (its NumPy 2 bug, worked around in `compression`).
"""

import hashlib
import json
import sys
import threading
import time

import pytest
import torch

from swarmgrpo.p2p import compression
from swarmgrpo.p2p.allreduce import (
    LINGER_S,
    MIN_STREAM_BYTES,
    AllReduce,
    AllReduceError,
    ErrorFeedback,
    Layout,
    Member,
)
from swarmgrpo.p2p.host import PeerHost
from swarmgrpo.p2p.powersgd import PowerSGD
from swarmgrpo.protocol import swarm_pb2
from tests.integration.peerprocs import readline, send, spawn, stop

pytestmark = pytest.mark.integration
SIZE = 100_003  # not a multiple of 3: uneven slices
SHAPES = [(64, 96), (300,), (40, 50)]  # PowerSGD: two matrices and a vector
WEIGHTS = [1.0, 2.0, 3.0]
# Slices travel in segments of this many values (not a divisor of the slices): a round's pipeline
# over several segments runs even on these small vectors.
SEGMENT_VALUES = 10_007


def _vector(seed: int, size: int = SIZE) -> torch.Tensor:
    return torch.randn(size, generator=torch.Generator().manual_seed(seed))


def _grads(seed: int, step: int = 0) -> list[torch.Tensor]:
    """Near rank-1 matrices (the same directions every step, scaled per member) plus fresh noise."""
    g = torch.Generator().manual_seed(1000)
    u, v = torch.randn(64, 1, generator=g), torch.randn(1, 96, generator=g)
    u2, v2 = torch.randn(40, 1, generator=g), torch.randn(1, 50, generator=g)
    noise = torch.Generator().manual_seed(100 * step + seed)
    return [
        (1 + seed) * u @ v + 0.01 * torch.randn(64, 96, generator=noise),
        torch.randn(300, generator=noise),
        (2 - seed) * u2 @ v2 + 0.01 * torch.randn(40, 50, generator=noise),
    ]


def _sha(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def _skewed(me: int, size: int = 30_011) -> torch.Tensor:
    """Spikes of 10 every 256 values and a constant 0.02·(1 + me/10) between them: under int8 (step
    10/127 ≈ 0.079) the small values round to zero in every round unless errors are fed back."""
    v = torch.full((size,), 0.02 * (1 + me / 10))
    v[::256] = 10.0
    return v


def _run(reducer, psgd, cmd, feedback=None):
    reducer.segment_values = cmd.get("segment_values", SEGMENT_VALUES)
    members = [Member(p, tuple(a)) for p, a in cmd["members"]]
    me, weight = cmd["me"], WEIGHTS[cmd["me"]]
    if cmd["codec"] == "powersgd":
        out = psgd.reduce(reducer, cmd["round"], members, me, _grads(me, cmd.get("step", 0)), weight)
        return out, psgd.last_bytes_sent
    vector = _skewed(me) if cmd.get("skewed") else _vector(me, cmd.get("size", SIZE))
    fb = feedback if cmd.get("feedback") else None
    out = reducer.run(cmd["round"], members, me, vector, weight, codec=cmd["codec"], feedback=fb)
    return [out], reducer.last_bytes_sent


def member_main() -> None:
    """Member process: print its address, then run one round per command line until stdin closes."""
    host = PeerHost()
    reducer = AllReduce(host, timeout=float(sys.argv[1]))
    psgd = PowerSGD(SHAPES, rank=1)
    feedback = ErrorFeedback()
    print(json.dumps({"peer_id": host.peer_id, "addrs": host.addrs}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            out, sent = _run(reducer, psgd, cmd, feedback)
            torch.save(out, cmd["out"])
            print(json.dumps({"sha": _sha(out), "bytes": sent}), flush=True)
        except AllReduceError as e:
            culprits = getattr(e, "culprits", [])
            print(json.dumps({"error": str(e), "missing": e.missing, "culprits": culprits}), flush=True)
    reducer.close()
    host.close()


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("allreduce")
    procs = [spawn(__name__, "member_main", "10") for _ in range(2)]
    host = PeerHost()
    reducer = AllReduce(host, timeout=10)
    try:
        infos = [readline(p) for p in procs]
        members = [[host.peer_id, host.addrs]] + [[i["peer_id"], i["addrs"]] for i in infos]
        yield {
            "procs": procs,
            "reducer": reducer,
            "members": members,
            "tmp": tmp,
            "psgd": PowerSGD(SHAPES, rank=1),
            "feedback": ErrorFeedback(),
        }
    finally:
        for p in procs:
            stop(p)
        reducer.close()
        host.close()


def _round(group, name, codec, members=None, **extra):
    """One round on all live members; returns (per-member outputs, shas, bytes sent) in member order."""
    members = members or group["members"]
    procs = group["procs"][: len(members) - 1]
    for i, p in enumerate(procs, start=1):
        cmd = {
            "round": name,
            "members": members,
            "me": i,
            "codec": codec,
            "out": str(group["tmp"] / f"{name}-{i}.pt"),
        }
        send(p, {**cmd, **extra})
    mine, sent = _run(
        group["reducer"],
        group["psgd"],
        {"round": name, "members": members, "me": 0, "codec": codec, **extra},
        group["feedback"],
    )
    answers = [readline(p) for p in procs]
    for a in answers:
        assert "error" not in a, a
    outs = [mine] + [torch.load(group["tmp"] / f"{name}-{i}.pt") for i in range(1, len(members))]
    return outs, [_sha(mine)] + [a["sha"] for a in answers], [sent] + [a["bytes"] for a in answers]


def _weighted_mean(weights, vectors):
    weights = weights[: len(vectors)]
    return sum(w * v.double() for w, v in zip(weights, vectors, strict=True)) / sum(weights)


@pytest.mark.parametrize("codec", ["none", "fp16", "int8", "fp8", "uint8"])
def test_every_codec_averages_and_every_member_gets_identical_bytes(group, codec):
    outs, shas, sent = _round(group, f"codec-{codec}", codec)
    assert len(set(shas)) == 1, "members disagree"
    mean = _weighted_mean(WEIGHTS, [_vector(i) for i in range(3)]).float()
    result = outs[0][0]
    spread = min((_vector(i) - mean).norm() for i in range(3))
    err = (result - mean).norm()
    if codec == "none":
        torch.testing.assert_close(result, mean, atol=1e-6, rtol=1e-6)
    elif codec == "fp16":
        torch.testing.assert_close(result, mean, atol=2e-3, rtol=1e-3)
    else:  # 8-bit: much closer to the mean than any member started
        assert err < 0.05 * spread, (err, spread)
    full = SIZE * 4
    expected = (
        {"none": 1.0, "fp16": 0.5, "int8": 0.25, "fp8": 0.25, "uint8": 0.25}[codec] * full * 2 * 2 / 3
    )  # 2·(N−1)/N of the vector
    if codec == "uint8":  # hivemind's codebook, 256 float32 per encoded segment; 2·(N−1) slices' worth sent
        expected += 256 * 4 * 2 * 2 * -(-(SIZE // 3) // SEGMENT_VALUES)
    # Within 5%: headers and block scales.
    assert all(abs(s - expected) / expected < 0.05 for s in sent), (sent, expected)


def test_parts_larger_than_a_stream_travel_over_several_and_arrive_whole(group):
    """1.2 MB slices in two segments of 600 KB, each over parallel streams (see AllReduce._send)."""
    size, segment = 900_001, 150_001
    assert segment * 4 > 2 * MIN_STREAM_BYTES and size // 3 > segment
    outs, shas, _ = _round(group, "big", "none", size=size, segment_values=segment)
    assert len(set(shas)) == 1, "members disagree"
    mean = _weighted_mean(WEIGHTS, [_vector(i, size) for i in range(3)]).float()
    torch.testing.assert_close(outs[0][0], mean, atol=1e-6, rtol=1e-6)


def test_a_range_sent_twice_is_placed_once():
    host = PeerHost()
    reducer = AllReduce(host, timeout=5)
    try:
        data = compression.encode_part("none", _vector(0, 512))  # slice 0 of a 1024-value round of 2
        sender = "sender-peer"
        layout = Layout("r", (host.peer_id, sender), 0, "none", 1024, 1024)
        head = swarm_pb2.AllReducePart(
            round_id="r", phase=0, part=0, sender=1, weight=2.0, total_bytes=len(data)
        )
        key = ("r", 0, 0, 1, 0)  # round, phase, part, sender, segment

        async def pieces():
            await reducer.inbox.open(layout)
            for start, end in (
                (0, 1024),
                (0, 1024),
                (1024, len(data)),
            ):  # the first range twice (a retried send)
                part = await reducer.inbox.admit(head, sender)
                part.buf[start:end] = data[start:end]
                await reducer.inbox.piece(key, part, start, end - start)
            return await reducer.inbox.wait({key}, time.monotonic() + 5)

        weight, got = host.call(pieces())[key]
        assert (weight, bytes(got)) == (2.0, data)
    finally:
        reducer.close()
        host.close()


def test_a_failed_stream_sends_only_its_range_again():
    """A part goes over parallel streams, one byte range each; when one stream fails (here the
    receiver refuses its first delivery of the second range), the sender sends that range again,
    not the part, and the receiver ends with the part whole."""
    receiver_host, sender_host = PeerHost(), PeerHost()
    receiver, sender = AllReduce(receiver_host, timeout=10), AllReduce(sender_host, timeout=10)
    to_receiver = Member(receiver_host.peer_id, tuple(receiver_host.addrs))
    values = 6 * MIN_STREAM_BYTES // 4
    data = compression.encode_part("none", _vector(0, values))  # slice 0 of a round of 2
    head = swarm_pb2.AllReducePart(round_id="flaky", phase=0, part=0, sender=1, weight=1.0)
    key = ("flaky", 0, 0, 1, 0)
    second = len(data) // sender.streams  # where the second stream's range starts
    placed, original = [], receiver.inbox.piece

    async def piece(k, part, offset, length):
        placed.append(offset)
        if offset == second and placed.count(second) == 1:
            raise ConnectionResetError("dropped once by the test")
        await original(k, part, offset, length)

    receiver.inbox.piece = piece
    peers = (receiver_host.peer_id, sender_host.peer_id)
    receiver_host.call(receiver.inbox.open(Layout("flaky", peers, 0, "none", 2 * values, values)))
    try:
        sender_host.call(sender._send(to_receiver, head, data, time.monotonic() + 10, index=0))
        _, got = receiver_host.call(receiver.inbox.wait({key}, time.monotonic() + 5))[key]
        assert bytes(got) == data
        assert sender.last_resent == 1 and sender.last_streams == sender.streams + 1
        assert sorted(placed) == sorted(
            [len(data) * i // sender.streams for i in range(sender.streams)] + [second]
        )
    finally:
        sender.close(linger=0)
        receiver.close(linger=0)
        receiver_host.close()
        sender_host.close()


def test_a_closing_member_still_takes_a_late_retry_then_stops():
    """A member ends its round once it has every part it needs, while another may be retrying a
    send whose data arrived but whose acknowledgment did not: `close` keeps the handler until no
    part has come for LINGER_S, so that retry is acknowledged instead of failing the sender's round."""
    receiver_host, sender_host = PeerHost(), PeerHost()
    receiver, sender = AllReduce(receiver_host, timeout=5), AllReduce(sender_host, timeout=5)
    to_receiver = Member(receiver_host.peer_id, tuple(receiver_host.addrs))
    head = swarm_pb2.AllReducePart(round_id="late", phase=0, part=0, sender=1, weight=1.0)
    try:
        sender_host.call(sender._send(to_receiver, head, b"x" * 1000))  # the round's last part
        closing = threading.Thread(target=receiver.close)
        closing.start()
        time.sleep(LINGER_S / 4)
        assert closing.is_alive()
        sender_host.call(sender._send(to_receiver, head, b"x" * 1000))  # the retry: acknowledged
        closing.join(3 * LINGER_S)
        assert not closing.is_alive()
        with pytest.raises(Exception, match="protocols not supported"):
            sender_host.call(sender._send(to_receiver, head, b"x" * 1000))
    finally:
        sender.close(linger=0)
        receiver_host.close()
        sender_host.close()


def test_powersgd_tracks_the_mean_with_identical_results_and_far_fewer_bytes(group):
    """One power iteration from a random start is rough; warm-started from the last step's Q it
    converges, and error feedback carries what an approximation missed into the next step."""
    sums, mean_sums, sent = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], []
    for step in range(4):
        outs, shas, sent = _round(group, f"psgd-{step}", "powersgd", step=step)
        assert len(set(shas)) == 1, "members disagree"
        means = [_weighted_mean(WEIGHTS, [_grads(i, step)[k] for i in range(3)]).float() for k in range(3)]
        for k in (0, 2):  # the matrices: near rank 1, so a rank-1 average is close once warm
            rel = float((outs[0][k] - means[k]).norm() / means[k].norm())
            assert rel < (0.2 if step < 2 else 0.03), (step, k, rel)
            sums[k] = sums[k] + outs[0][k]
            mean_sums[k] = mean_sums[k] + means[k]
        torch.testing.assert_close(outs[0][1], means[1], atol=2e-3, rtol=1e-3)  # the vector, fp16
    for k in (0, 2):  # error feedback: over 4 steps, what was applied is within one step's error of the truth
        assert float((sums[k] - mean_sums[k]).norm() / mean_sums[k].norm()) < 0.03, k
    full = sum(torch.Size(s).numel() for s in SHAPES) * 4 * 2 * 2 / 3
    assert max(sent) < full / 10, (sent, full)


@pytest.mark.parametrize("codec", ["int8", "uint8"])
def test_error_feedback_delivers_what_rounding_drops(group, codec):
    """Values far below an int8 step are lost in every round without error feedback; with it, the
    sum of the results tracks the sum of the means to within the residuals left at the end (half an
    int8 step of the members' parts plus half of the owner's mean: one step, 10/127), and members
    still agree bitwise. (hivemind's uint8 codec places its levels by quantile and keeps this
    constant exactly; for it the check is that feedback does no harm.)"""
    rounds, step = 16, 10 / 127
    mean = _weighted_mean(WEIGHTS, [_skewed(i) for i in range(3)]).float()
    small = torch.ones_like(mean, dtype=torch.bool)
    small[::256] = False
    for feedback in (False, True):
        total = torch.zeros_like(mean)
        for r in range(rounds):
            outs, shas, _ = _round(
                group,
                f"ef-{codec}-{feedback}-{r}",
                codec,
                skewed=True,
                feedback=feedback,
                segment_values=3001,
            )
            assert len(set(shas)) == 1, "members disagree"
            total += outs[0][0]
        got, want = float(total[small].mean()), float(rounds * mean[small].mean())
        if feedback:
            assert abs(got - want) <= step, (got, want)
        elif codec == "int8":
            assert got == 0.0 and want > 4 * step, (got, want)  # all of it lost, every round
        torch.testing.assert_close(total[~small], rounds * mean[~small], rtol=0.01, atol=0.0)


def test_a_silent_member_fails_the_round_and_is_named(group):
    members = group["members"]
    # Member 2 is told nothing: it never sends, so members 0 and 1 time out waiting for its parts.
    p = group["procs"][0]
    send(p, {"round": "silent", "members": members, "me": 1, "codec": "none", "out": "/dev/null"})
    with pytest.raises(AllReduceError, match=r"no part from members \[2\]") as caught:
        _run(
            group["reducer"], group["psgd"], {"round": "silent", "members": members, "me": 0, "codec": "none"}
        )
    assert caught.value.missing == [2]
    answer = readline(p)
    assert answer["missing"] == [2], answer
    # The survivors go on without it.
    outs, shas, _ = _round(group, "survivors", "none", members=members[:2])
    assert len(set(shas)) == 1
    torch.testing.assert_close(outs[0][0], _weighted_mean(WEIGHTS[:2], [_vector(0), _vector(1)]).float())


def test_hivemind_8bit_codec_decodes_under_numpy_2():
    from hivemind.compression import deserialize_torch_tensor, serialize_torch_tensor
    from hivemind.proto import runtime_pb2

    x = torch.randn(10_000, generator=torch.Generator().manual_seed(0))
    for kind in (runtime_pb2.UNIFORM_8BIT, runtime_pb2.QUANTILE_8BIT):
        y = deserialize_torch_tensor(serialize_torch_tensor(x, kind))
        assert (y - x).norm() < 0.05 * x.norm()
    constant = compression.decode_part(compression.encode_part("uint8", torch.full((7,), 2.5)))
    assert torch.equal(constant, torch.full((7,), 2.5))
