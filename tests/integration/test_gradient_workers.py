"""Gradient workers in real processes take the step one worker takes on the union of their shards.

This process is worker 0 and also computes the single-worker reference; workers 1.. run beside it.
Every worker ends with bitwise-identical weights; to float tolerance they equal the reference.
"""

import hashlib
import json
import sys

import pytest
import torch

from swarmgrpo.core.configtree import load_config
from swarmgrpo.p2p.allreduce import Member
from swarmgrpo.p2p.gradients import GradientAverager
from swarmgrpo.p2p.host import PeerHost
from swarmgrpo.trainer.config import TrainConfig
from swarmgrpo.trainer.models import load_model
from swarmgrpo.trainer.rollouts import RolloutGroup
from swarmgrpo.trainer.step import GRPOStep
from tests.integration.peerprocs import readline, send, spawn, stop

pytestmark = pytest.mark.integration
STEPS = 2


def _cfg(loss_type: str) -> TrainConfig:
    return load_config(TrainConfig, None, ['model="tiny"', f'loss_type="{loss_type}"', "learning_rate=0.01"])


def _groups(step: int, vocab: int) -> list[RolloutGroup]:
    """Six groups of four with varied lengths and rewards: the same in every process."""
    g = torch.Generator().manual_seed(100 + step)
    groups = []
    for _ in range(6):
        prompt = torch.randint(5, vocab, (int(torch.randint(3, 8, (1,), generator=g)),), generator=g).tolist()
        comps = [
            torch.randint(5, vocab, (int(torch.randint(1, 7, (1,), generator=g)),), generator=g).tolist()
            for _ in range(4)
        ]
        behavior = [(-torch.rand(len(c), generator=g) * 3).tolist() for c in comps]
        rewards = torch.rand(4, generator=g).round(decimals=1).tolist()
        groups.append(RolloutGroup(prompt, comps, behavior, rewards, step))
    return groups


def _flat_weights(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _train(loss_type: str, shard_of=None, averager_for=None) -> torch.Tensor:
    """STEPS steps on the tiny model; with shard_of/averager_for, as one of several workers."""
    model, tok = load_model("tiny", seed=0)
    step = GRPOStep(model, _cfg(loss_type), tok.pad_token_id)
    averager = averager_for(model) if averager_for else None
    for s in range(STEPS):
        groups = _groups(s, len(tok))
        mine = shard_of(groups) if shard_of else groups
        step.compute_gradients(mine)
        if averager:
            step.reduce(averager, s, step.shard_weight(mine))
        step.apply()
    return _flat_weights(model)


def worker_main() -> None:
    """Worker process: print its address, read {members, me, n, loss_type}, train, save its weights."""
    host = PeerHost()
    print(json.dumps({"peer_id": host.peer_id, "addrs": host.addrs}), flush=True)
    cmd = json.loads(sys.stdin.readline())
    weights = _run_worker(host, cmd)
    torch.save(weights, cmd["out"])
    print(json.dumps({"sha": hashlib.sha256(weights.numpy().tobytes()).hexdigest()}), flush=True)
    host.close()


def _run_worker(host: PeerHost, cmd: dict) -> torch.Tensor:
    members = [Member(p, tuple(a)) for p, a in cmd["members"]]
    me, n = cmd["me"], len(members)
    holder = {}

    def averager_for(model):
        holder["avg"] = GradientAverager(host, model, compression=cmd["compression"], timeout=60)
        return lambda s, w: holder["avg"].average(f"test/{s}/0", members, me, w)

    try:
        return _train(cmd["loss_type"], shard_of=lambda groups: groups[me::n], averager_for=averager_for)
    finally:
        if "avg" in holder:
            holder["avg"].close()


@pytest.mark.parametrize(
    ("n", "loss_type", "compression"), [(2, "grpo", "none"), (3, "dapo", "none"), (2, "grpo", "fp16")]
)
def test_workers_take_the_single_worker_step_on_the_union_of_their_shards(
    tmp_path, n, loss_type, compression
):
    procs = [spawn(__name__, "worker_main") for _ in range(n - 1)]
    host = PeerHost()
    try:
        infos = [readline(p) for p in procs]
        members = [[host.peer_id, host.addrs]] + [[i["peer_id"], i["addrs"]] for i in infos]
        for i, p in enumerate(procs, start=1):
            cmd = {
                "members": members,
                "me": i,
                "loss_type": loss_type,
                "compression": compression,
                "out": str(tmp_path / f"w{i}.pt"),
            }
            send(p, cmd)
        mine = _run_worker(
            host, {"members": members, "me": 0, "loss_type": loss_type, "compression": compression}
        )
        shas = [hashlib.sha256(mine.numpy().tobytes()).hexdigest()] + [readline(p)["sha"] for p in procs]
        for p in procs:
            assert p.wait(30) == 0
    finally:
        for p in procs:
            stop(p)
        host.close()
    assert len(set(shas)) == 1, "the workers' replicas differ"
    reference = _train(loss_type)
    start = _flat_weights(load_model("tiny", seed=0)[0])
    moved = (reference - start).abs().max()
    assert moved > 1e-3, "the steps did not move the weights: the comparison would say nothing"
    if compression == "none":
        # Float32 sums in another order, through AdamW's division by sqrt(v) + eps: a few 1e-6.
        torch.testing.assert_close(mine, reference, atol=1e-5, rtol=0)
    else:
        # fp16 (scaled by the part's mean and std) gradients: AdamW normalises every element, so
        # rounding shows in the update, but only just. Unscaled fp16 flushed this tiny model's
        # smallest gradients to zero and moved the update by 42% of its norm.
        rel = float((mine - reference).norm() / (reference - start).norm())
        assert rel < 0.01, rel
