"""Weight sync with a fake transport: which encoding a node fetches, what it loads and serves after,
when it does nothing; a trainer's own checkpoint, the agreed training state, and the fresh start."""

import copy

import pytest
import torch

from swarmgrpo.node import weight_sync
from swarmgrpo.node.weight_sync import TrainStateSync, WeightSync
from swarmgrpo.p2p.weights import FP8, WeightError, encode_model
from swarmgrpo.protocol import swarm_pb2
from swarmgrpo.trainer.checkpoint import TrainerState, node_checkpoints, save_checkpoint
from tests.unit.node_fakes import FakeClient, FakeTransport, joined

BF16, FP8_BYTES = b"bf16 weights", b"fp8"


def _policy(version=5, weight_hash="h16", **kw) -> swarm_pb2.PolicyState:
    return swarm_pb2.PolicyState(
        policy_version=version, weight_hash=weight_hash, weight_bytes=len(BF16), **kw
    )


def _sync(fp8=False, **kw):
    loaded = []
    transport = FakeTransport({(5, ""): BF16, (5, FP8): FP8_BYTES})
    node = joined(transport=transport, **kw)
    return WeightSync(node, loaded.append, fp8=fp8), node, transport, loaded


def test_sync_loads_the_published_version_and_serves_it_after():
    sync, node, transport, loaded = _sync()
    assert sync.sync(_policy()) is True
    assert transport.fetched == [(5, "h16", "", len(BF16))]
    assert loaded == [BF16] and transport.published == [(5, BF16, "h16", None)]
    assert node.progress.version == 5 and node.progress.activity == "syncing"


def test_sync_fetches_fp8_only_where_wanted_and_shipped():
    shipped = _policy(weight_hash_fp8="h8", weight_bytes_fp8=3)
    sync, _, transport, loaded = _sync(fp8=True)
    sync.sync(shipped)
    assert transport.fetched == [(5, "h8", FP8, 3)] and loaded == [FP8_BYTES]
    sync, _, transport, _ = _sync(fp8=True)
    sync.sync(_policy())  # the run ships no FP8: the transfer encoding
    assert transport.fetched == [(5, "h16", "", len(BF16))]
    sync, _, transport, _ = _sync(fp8=False)
    sync.sync(shipped)
    assert transport.fetched == [(5, "h16", "", len(BF16))]


def test_sync_does_nothing_for_the_version_it_holds_or_a_finished_run_unless_forced():
    sync, node, transport, _ = _sync()
    node.progress.version = 5
    assert sync.sync(_policy()) is True and sync.sync(_policy(finished=True, version=9)) is True
    assert transport.fetched == []
    assert sync.sync(_policy(), force=True) is True and len(transport.fetched) == 1


def test_a_version_no_holder_serves_is_false_after_a_pause():
    sync, node, transport, loaded = _sync()
    assert sync.sync(_policy(version=6)) is False
    assert loaded == [] and transport.published == [] and node.progress.version == 0
    assert node.waited == [1.0]


@pytest.mark.parametrize(("published", "synced"), [(_policy(), True), (_policy(version=0), False)])
def test_catch_up_syncs_only_to_a_newer_published_version(published, synced):
    client = FakeClient(policy=[published])
    sync, _, _, loaded = _sync(client=client)
    sync.catch_up()
    assert bool(loaded) is synced


def test_catch_up_ignores_a_version_without_weights():
    sync, _, _, loaded = _sync(client=FakeClient(policy=[swarm_pb2.PolicyState(policy_version=5)]))
    sync.catch_up()
    assert loaded == []


# ---------------------------------------------------------------- a trainer's state


@pytest.fixture
def model(tiny):
    return copy.deepcopy(tiny[0])


def _trainer(model, transport=None, client=None, tmp_path=None):
    adopted = []
    opts = {"state_dir": str(tmp_path)} if tmp_path else {}
    node = joined(client=client, transport=transport, **opts)
    weights = WeightSync(node, lambda data: None)
    return TrainStateSync(node, model, weights, adopted.append), node, adopted


def test_fresh_start_takes_the_weights_even_at_its_own_version_and_a_fresh_optimizer(model):
    state, node, adopted = _trainer(model, FakeTransport({(5, ""): BF16}))
    node.progress.version = 5
    assert state.fresh_start(_policy()) is True
    assert adopted == [None] and node.transport.fetched
    state, _, adopted = _trainer(model, FakeTransport())
    assert state.fresh_start(_policy()) is False and adopted == []  # nothing taken: nothing to adopt


def test_the_agreed_training_state_is_taken_with_its_optimizer(model, monkeypatch):
    stepped = copy.deepcopy(model)
    with torch.no_grad():
        next(stepped.parameters()).add_(0.5)
    data, sha = encode_model(stepped, "bfloat16")
    agreed = {"version": 5, "model": stepped.state_dict(), "optimizer": {"state": {}}, "powersgd": None}
    monkeypatch.setattr(weight_sync.train_state, "fetch", lambda *a: agreed)
    state, node, adopted = _trainer(model)
    assert state.sync(_policy(weight_hash=sha, state_hash="s")) is True
    assert adopted == [agreed] and node.progress.version == 5
    assert node.transport.published == [(5, data, sha, None)]
    assert torch.equal(next(model.parameters()), next(stepped.parameters()))


def test_a_training_state_that_does_not_encode_to_the_hash_falls_back_to_a_fresh_start(model, monkeypatch):
    agreed = {"version": 5, "model": model.state_dict(), "optimizer": {"state": {}}, "powersgd": None}
    monkeypatch.setattr(weight_sync.train_state, "fetch", lambda *a: agreed)
    state, node, adopted = _trainer(model, FakeTransport({(5, ""): BF16}))
    assert state.sync(_policy(weight_hash="not its hash", state_hash="s")) is True
    assert adopted == [None] and node.transport.fetched  # the run's weights, a fresh optimizer


def test_without_an_agreed_state_a_trainer_starts_fresh_at_once(model, monkeypatch):
    def unserved(*a):
        raise WeightError("no worker serves it")

    monkeypatch.setattr(weight_sync.train_state, "fetch", unserved)
    state, node, adopted = _trainer(model, FakeTransport({(5, ""): BF16}))
    assert state.sync(_policy()) is True  # no state_hash published: nothing to wait for
    assert adopted == [None] and node.waited == []


def test_own_checkpoint_of_the_run_version_is_resumed_and_served(model, tiny, tmp_path):
    optimizer = torch.optim.AdamW(model.parameters())
    state, node, _ = _trainer(model, tmp_path=tmp_path)
    assert state.own_checkpoint(_policy()) is None  # none yet
    out = node_checkpoints(tmp_path, node.run_id)
    save_checkpoint(out, model, tiny[1], optimizer, node.cfg, TrainerState(5, 5, 0))
    data, sha = encode_model(model, "bfloat16")
    assert state.own_checkpoint(_policy(version=6, weight_hash=sha)) is None  # of another version
    assert state.own_checkpoint(_policy(weight_hash="other weights")) is None
    assert node.progress.version == 0 and node.transport.published == []
    assert state.own_checkpoint(_policy(weight_hash=sha)) == out / "checkpoint-5"
    assert node.progress.version == 5 and node.transport.published == [(5, data, sha, None)]
