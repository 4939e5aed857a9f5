"""The training-state file and the rules a fetcher holds holders to (size, silence, ranking)."""

import asyncio
import hashlib

import pytest
import torch

from swarmgrpo.p2p import train_state
from swarmgrpo.p2p.holders import HolderRanking, transfer_deadline
from swarmgrpo.p2p.weight_transfer import NotHeld, chunks, receive
from swarmgrpo.p2p.weights import WeightError
from swarmgrpo.protocol import swarm_pb2
from swarmgrpo.trainer.models import load_model


def _replica(steps: int = 2):
    """The tiny model and an AdamW that took `steps` identical steps (as every worker of a team does)."""
    model, _ = load_model("tiny", seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, betas=(0.9, 0.99))
    for i in range(steps):
        torch.manual_seed(i)
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        optimizer.step()
    return model, optimizer


def _state(model, optimizer, version=3, powersgd=None):
    return {
        "version": version,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "powersgd": powersgd,
    }


def test_two_replicas_that_took_the_same_steps_pack_the_same_bytes_and_digest_them_unpacked():
    a, b = _state(*_replica()), _state(*_replica())
    data = train_state.pack(a)
    assert data == train_state.pack(b)
    assert (
        train_state.state_digest(a)
        == train_state.state_digest(b)
        == (hashlib.sha256(data).hexdigest(), len(data))
    )


def test_forged_moments_change_the_digest():
    model, optimizer = _replica()
    agreed = train_state.state_digest(_state(model, optimizer))
    for per_param in optimizer.state.values():
        per_param["exp_avg"].fill_(1.0)
        per_param["exp_avg_sq"].zero_()
    assert train_state.state_digest(_state(model, optimizer)) != agreed


def test_unpack_gives_back_a_state_a_fresh_replica_loads_exactly():
    model, optimizer = _replica()
    q = {0: torch.randn(5, 2), 3: torch.randn(7, 2)}
    state = train_state.unpack(train_state.pack(_state(model, optimizer, version=7, powersgd=q)))
    assert state["version"] == 7 and set(state["powersgd"]) == {0, 3}
    assert torch.equal(state["powersgd"][3], q[3])
    fresh_model, fresh_opt = _replica(steps=0)
    fresh_model.load_state_dict(state["model"], strict=False)  # the tied head is stored once
    fresh_opt.load_state_dict(state["optimizer"])
    assert train_state.pack(_state(fresh_model, fresh_opt, 7, q)) == train_state.pack(
        _state(model, optimizer, 7, q)
    )
    for per_param in fresh_opt.state.values():  # copies, not read-only views into the received bytes
        per_param["exp_avg"].add_(1.0)


def test_a_state_with_no_powersgd_unpacks_to_none():
    assert train_state.unpack(train_state.pack(_state(*_replica(1))))["powersgd"] is None


def test_ranking_puts_holders_that_failed_behind_and_those_that_served_first():
    holders = [swarm_pb2.WeightHolder(peer_id=p) for p in ("liar", "new", "good", "flaky")]
    ranking = HolderRanking()
    assert [h.peer_id for h in ranking.order(holders)] == ["liar", "new", "good", "flaky"]  # as named
    ranking.failed("liar")
    ranking.served("good")
    ranking.served("flaky")
    ranking.served("flaky")
    ranking.failed("flaky")
    assert [h.peer_id for h in ranking.order(holders)] == ["good", "new", "flaky", "liar"]
    ranking.failed("liar")
    ranking.failed("flaky")  # as many failures as the liar: what it served puts it first of the two
    assert [h.peer_id for h in ranking.order(holders)] == ["good", "new", "flaky", "liar"]


def test_the_deadline_grows_with_the_bound_on_the_size():
    assert transfer_deadline(0, 30, 1 << 20) == 30
    assert transfer_deadline(270 << 20, 30, 1 << 20) == 300


async def _stream(messages, pause: float = 0.0):
    for m in messages:
        if pause:
            await asyncio.sleep(pause)
        yield m


def test_receive_refuses_a_file_announced_larger_than_the_bound_at_its_first_chunk():
    data = bytes(range(256)) * 40
    sha = hashlib.sha256(data).hexdigest()
    sent = list(chunks(1, data, sha, 1000))
    assert asyncio.run(receive(_stream(sent), sha, 5, max_bytes=len(data))) == data
    with pytest.raises(
        WeightError, match=f"announces a file of {len(data)} bytes; the version's is at most 9000"
    ):
        asyncio.run(receive(_stream(sent), sha, 5, max_bytes=9000))


def test_receive_names_a_silent_holder_and_a_holder_that_does_not_hold_it():
    data = b"x" * 10
    sent = list(chunks(1, data, hashlib.sha256(data).hexdigest(), 4))
    with pytest.raises(WeightError, match=r"holder silent for 0\.05 s after 0 bytes"):
        asyncio.run(receive(_stream(sent, pause=0.5), "", 0.05))
    with pytest.raises(NotHeld, match="not here"):
        asyncio.run(receive(_stream([swarm_pb2.WeightChunk(error="not here")]), "", 1))
