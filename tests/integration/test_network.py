"""The network for real: a coordinator process (gRPC + SQLite) and node processes on loopback.

Some tests drive the coordinator directly with a signed client, playing a rollout node or a trainer,
so that every refusal (token, protocol, replay, bad field, staleness, expired lease) is checked
against the real server and what its public read API (/status, /runlog) shows it stored.
"""

import json
import re
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request

import grpc
import pytest
import torch

from swarmgrpo.coordinator.runlog import read_status, read_table
from swarmgrpo.node.engines.base import Completion
from swarmgrpo.protocol import PROTOCOL_VERSION, swarm_pb2
from swarmgrpo.protocol.client import CoordinatorClient, CoordinatorError
from swarmgrpo.protocol.signing import NodeKey
from swarmgrpo.trainer.models import SMOLLM2, resolve_model_path
from swarmgrpo.trainer.rollouts import submission
from tests.integration.netfixtures import TOKEN
from tests.integration.netfixtures import join as _join
from tests.limits import file_size_limit

pytestmark = pytest.mark.integration


def _fake_groups(lease, tokens=(5, 6, 7), reported=1.0):
    group = [Completion(list(tokens), [-1.0] * len(tokens), finished=True)] * lease.group_size
    req = submission(lease, [group] * len(lease.prompts), generation_s=0.1)
    for g in req.groups:
        for c in g.completions:
            c.reported_reward = reported  # the node's claim, which the coordinator does not read
    return req


def _await_versions(net, n: int, procs, timeout: float = 180) -> float:
    """Wait until n versions are published while `procs` run; returns the deadline used."""
    deadline = time.monotonic() + timeout
    while _counts(net)["versions_published"] < n:
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), net.logs()
        time.sleep(0.2)
    return deadline


def _counts(net) -> dict:
    """The run's counts of /status: rollouts accepted, trained..., leases open..., versions published."""
    return read_status(net.http)["counts"]


def _version(net) -> int:
    return read_status(net.http)["policy_version"]


def _nodes(net) -> list[dict]:
    """Every node that joined, as /status lists them (it lists them all: fewer than it would cut)."""
    status = read_status(net.http)
    assert len(status["nodes"]) == status["nodes_total"], status["nodes_total"]
    return status["nodes"]


def _announced(net) -> dict:
    status = json.loads(urllib.request.urlopen(f"http://{net.http}/status", timeout=10).read())
    return {node_id: record["role"] for node_id, record in status["dht"]["announced"].items()}


def _await(net, what: str, done, procs, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), f"{what}:\n{net.logs()}"
        time.sleep(0.2)


def test_a_run_of_one_trainer_and_two_rollout_nodes_reaches_max_steps(network):
    """Weights travel over libp2p between the node processes.

    Leases are first come, first served (a fast node may take all the work), so the test orders
    the work to know what each node must do: rollout0 fills steps 0 and 1 alone (max_staleness = 1
    allows no more before version 1) and is then stopped; the trainer trains both steps and waits;
    rollout1, the only rollout node left, fetches version 2 from a peer and makes step 2's rollouts.
    """
    network.start_coordinator()
    rollout0 = network.start_node("rollout0", "rollout", weights="p2p")
    rollouts = lambda: _counts(network)["rollouts_accepted"]  # noqa: E731
    _await(network, "rollout0 fills steps 0 and 1", lambda: rollouts() >= 4, [rollout0])
    # Every node joins the run's DHT through the coordinator's peer and announces itself there.
    _await(network, "rollout0 is announced", lambda: len(_announced(network)) == 1, [rollout0])
    (first,) = _announced(network)
    rollout0.send_signal(signal.SIGSTOP)
    try:
        time.sleep(1.0)
        assert rollouts() == 4, "max_staleness = 1 lets no node lease step 2 before version 1"
        trainer = network.start_node("trainer", "train", weights="p2p")
        _await_versions(network, 2, [trainer])
        _await(
            network, "the trainer is announced", lambda: "train" in _announced(network).values(), [trainer]
        )
        rollout1 = network.start_node("rollout1", "rollout", weights="p2p")
        _await_versions(network, 3, [trainer, rollout1])
    finally:
        rollout0.send_signal(signal.SIGCONT)
    for p, name in [(trainer, "trainer"), (rollout0, "rollout0"), (rollout1, "rollout1")]:
        assert network.wait(p, 240, name) == 0, network.logs()
    rows, versions = read_table(network.http, "rollouts"), read_table(network.http, "versions")
    steps = {}
    for r in rows:
        steps.setdefault(r["step"], set()).add(r["node_id"])
    assert [v["version"] for v in versions] == [1, 2, 3, 4]
    trainer_id = versions[0]["node_id"]
    rollout_ids = {n["node_id"] for n in _nodes(network)} - {trainer_id}
    assert len(rollout_ids) == 2 and first in rollout_ids
    (second,) = rollout_ids - {first}
    assert steps[0] == steps[1] == {first} and steps[2] == {second}, "both rollout nodes contributed"
    assert _counts(network)["rollouts_trained"] == 4 * 2  # steps × prompts per step
    published = {v["version"] for v in versions}
    stale = max(
        r["step"] - r["policy_version"] for r in rows if r["step"] is not None and r["step"] + 1 in published
    )
    assert stale <= 1, "max_staleness = 1 was exceeded"
    # rollout1 joined at version 2 and fetched it from a peer before making step 2's rollouts;
    # rollout0, resumed after that, may find the run finished before it needs new weights.
    assert "synced to policy 2" in network.log("rollout1"), "rollout1 fetched version 2 from a peer"
    for name in ("trainer", "rollout0", "rollout1"):
        assert re.search(r"DHT peer \S+ via [1-9]\d* bootstrap peers", network.log(name)), name
    assert "left the run (finished)" in network.log("rollout0")
    status = json.loads(urllib.request.urlopen(f"http://{network.http}/status", timeout=10).read())
    assert status["policy_version"] == 4 and status["counts"]["rollouts_trained"] == 8
    metrics = urllib.request.urlopen(f"http://{network.http}/metrics", timeout=10).read().decode()
    assert "swarmgrpo_policy_version 4.0" in metrics


def test_refusals_name_the_problem_and_store_nothing(network):
    network.start_coordinator()
    with pytest.raises(CoordinatorError) as e:
        _join(network, token="wrong")
    assert e.value.code == grpc.StatusCode.PERMISSION_DENIED and "join token" in str(e.value)
    with pytest.raises(CoordinatorError) as e:
        _join(network, protocol=PROTOCOL_VERSION + 1)
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION and "protocol" in str(e.value)
    stranger = CoordinatorClient(network.address, NodeKey.generate(), patience_s=5)
    with pytest.raises(CoordinatorError) as e:
        stranger.lease(0, 1)
    assert e.value.code == grpc.StatusCode.UNAUTHENTICATED and "join first" in str(e.value)

    client, _ = _join(network)
    lease = client.lease(0, 2)
    assert lease.status == swarm_pb2.LEASE_GRANTED and len(lease.prompts) == 2
    bad = _fake_groups(lease, tokens=(5, 10**6))
    with pytest.raises(CoordinatorError) as e:
        client.submit(bad)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and "vocabulary" in str(e.value)
    assert _counts(network)["rollouts_accepted"] == 0

    # A captured request sent again is refused, even though its signature is valid.
    req = client.key.sign("Lease", swarm_pb2.LeaseRequest(policy_version=0, max_prompts=1))
    client.stub.Lease(req, timeout=10)
    with pytest.raises(grpc.RpcError) as e:
        client.stub.Lease(req, timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED and "replay" in e.value.details()

    # The node's rewards are ignored: the coordinator scores "\x05\x06\x07"-like tokens itself.
    reply = client.submit(_fake_groups(lease, reported=1.0))
    assert reply.status == swarm_pb2.SUBMIT_ACCEPTED
    stored = [r["rewards"] for r in read_table(network.http, "rollouts")]
    assert all(r != 1.0 for rs in stored for r in rs)
    assert client.submit(_fake_groups(lease)).status == swarm_pb2.SUBMIT_DUPLICATE
    assert _counts(network)["rollouts_accepted"] == 2

    shown = subprocess.run(
        [sys.executable, "-m", "swarmgrpo", "status", "--coordinator", network.address],
        capture_output=True,
        text=True,
        timeout=60,
        env=network.env,
    )
    assert shown.returncode == 0, shown.stderr
    assert "policy version 0" in shown.stdout and "rollouts accepted 2" in shown.stdout
    row = next(line for line in shown.stdout.splitlines() if line.startswith(client.key.node_id[:8]))
    assert row.split()[1:3] == ["rollout", "cpu"], shown.stdout  # role and device, as it joined
    nobody = subprocess.run(
        [sys.executable, "-m", "swarmgrpo", "status", "--coordinator", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
        env=network.env,
    )
    assert nobody.returncode == 2 and nobody.stderr.startswith("error: no coordinator answered")


def test_one_node_holds_one_lease_however_often_it_asks(network):
    """A node that asks again gets the lease it holds (its first answer may have been lost), so one
    node cannot take every prompt of the step and stall the run; joining again returns its lease."""
    network.start_coordinator()  # k = 1, 2 prompts a step, 2 a lease: 4 prompts may be out
    hoarder, _ = _join(network)
    first = hoarder.lease(0, 2)
    assert first.status == swarm_pb2.LEASE_GRANTED and len(first.prompts) == 2
    for _ in range(4):
        again = hoarder.lease(0, 2)
        assert again.lease_id == first.lease_id and list(again.prompts) == list(first.prompts)
    honest, _ = _join(network)
    theirs = honest.lease(0, 2)
    assert theirs.status == swarm_pb2.LEASE_GRANTED and len(theirs.prompts) == 2
    assert _counts(network)["leases_open"] == 2
    # the hoarder restarts (same key, joins again): its lease goes back, another node takes it
    _join(network, key=hoarder.key)
    (state,) = [x["state"] for x in read_table(network.http, "leases") if x["lease_id"] == first.lease_id]
    assert state == "returned"
    late, _ = _join(network)
    taken = late.lease(0, 2)
    assert sorted(p.prompt_index for p in taken.prompts) == sorted(p.prompt_index for p in first.prompts)
    assert late.submit(_fake_groups(taken)).status == swarm_pb2.SUBMIT_ACCEPTED
    assert hoarder.submit(_fake_groups(first)).status == swarm_pb2.SUBMIT_EXPIRED  # no longer its


@pytest.mark.parametrize("network", [{"max_staleness": 0, "lease_timeout_s": 2.0}], indirect=True)
def test_staleness_bound_and_lease_expiry(network):
    import time

    network.start_coordinator()
    rollout, _ = _join(network)
    trainer, _ = _join(network, roles=(swarm_pb2.ROLE_TRAIN,))
    first = rollout.lease(0, 2)
    other, _ = _join(network)
    assert other.lease(0, 2).status == swarm_pb2.LEASE_WAIT, "k = 0: step 0's prompts are all out"
    old = rollout.lease  # a second lease at version 0 that will go stale
    time.sleep(2.5)  # first lease expires; its prompts return to the pool
    assert rollout.submit(_fake_groups(first)).status == swarm_pb2.SUBMIT_EXPIRED
    again = old(0, 2)
    assert again.status == swarm_pb2.LEASE_GRANTED
    assert [p.prompt_index for p in again.prompts] == [p.prompt_index for p in first.prompts], (
        "expired prompts re-leased"
    )
    assert rollout.submit(_fake_groups(again)).status == swarm_pb2.SUBMIT_ACCEPTED
    assert trainer.train_batch(1).status == swarm_pb2.BATCH_RESYNC
    batch = trainer.train_batch(0)
    assert batch.status == swarm_pb2.BATCH_READY and len(batch.groups) == 2
    assert trainer.report_step(0, "ab" * 32, {"loss": 0.1}).status == swarm_pb2.STEP_PUBLISHED
    assert trainer.report_step(0, "cd" * 32, {}).status == swarm_pb2.STEP_REJECTED, "a step is published once"
    resync = rollout.lease(0, 2)
    assert resync.status == swarm_pb2.LEASE_RESYNC and "max_staleness=0" in resync.message
    assert resync.policy.policy_version == 1 and resync.policy.weight_hash == "ab" * 32


def test_held_calls_answer_when_work_or_a_policy_arrives(network):
    """Lease, TrainBatch and GetPolicy with wait_s are long polls: a trainer waiting for rollouts gets its
    batch the moment they are accepted, and a rollout node waiting for work learns of the new
    policy the moment it is published, not after a polling delay."""
    from concurrent.futures import ThreadPoolExecutor

    network.start_coordinator()
    rollout, _ = _join(network)
    trainer, _ = _join(network, roles=(swarm_pb2.ROLE_TRAIN,))
    with pytest.raises(CoordinatorError) as e:
        trainer.train_batch(0, wait_s=31.0)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and "wait_s" in str(e.value)
    t0 = time.monotonic()
    assert trainer.train_batch(0, wait_s=0.5).status == swarm_pb2.BATCH_WAIT
    assert time.monotonic() - t0 >= 0.5, "held for wait_s while nothing came"
    other, _ = _join(network)
    lease, _ = rollout.lease(0, 2), other.lease(0, 2)  # steps 0 and 1 (max_staleness = 1)
    with ThreadPoolExecutor(2) as pool:
        batch = pool.submit(trainer.train_batch, 0, wait_s=20.0)
        time.sleep(1.0)
        assert not batch.done(), "held while the step's rollouts are out"
        assert rollout.submit(_fake_groups(lease)).status == swarm_pb2.SUBMIT_ACCEPTED
        submitted = time.monotonic()
        assert batch.result(timeout=10).status == swarm_pb2.BATCH_READY
        assert time.monotonic() - submitted < 5.0
        held = pool.submit(rollout.lease, 0, 2, wait_s=20.0)  # nothing to lease until v1
        policy = pool.submit(trainer.policy, after_version=0, wait_s=20.0)  # a worker awaiting v1
        time.sleep(1.0)
        assert not held.done() and not policy.done()
        assert trainer.report_step(0, "ab" * 32, {}).status == swarm_pb2.STEP_PUBLISHED
        published = time.monotonic()
        reply = held.result(timeout=10)
        assert policy.result(timeout=10).policy_version == 1
        assert time.monotonic() - published < 5.0
    assert reply.status == swarm_pb2.LEASE_WAIT and reply.retry_after_s == 0.0
    assert "version 1 is published: fetch it" in reply.message
    t0 = time.monotonic()
    assert (
        trainer.policy(after_version=1, wait_s=0.5).policy_version == 1
    )  # nothing newer: held, then answered
    assert time.monotonic() - t0 >= 0.5
    with pytest.raises(CoordinatorError) as e:
        trainer.policy(after_version=1, wait_s=-1.0)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and "wait_s" in str(e.value)


def test_coordinator_killed_mid_run_resumes_and_loses_nothing(network):
    network.start_coordinator()
    client, _ = _join(network)
    lease = client.lease(0, 2)
    assert client.submit(_fake_groups(lease)).status == swarm_pb2.SUBMIT_ACCEPTED
    open_lease = client.lease(0, 2)
    network.kill9_coordinator()
    network.start_coordinator()
    assert _counts(network)["rollouts_accepted"] == 2
    # The node's identity, its open lease and the accepted rollouts all survived.
    assert client.submit(_fake_groups(open_lease)).status == swarm_pb2.SUBMIT_ACCEPTED
    trainer = network.start_node("trainer", "train")
    node = network.start_node("rollout", "rollout")
    assert network.wait(trainer, 240, "trainer") == 0, network.logs()
    assert network.wait(node, 60, "rollout") == 0, network.logs()
    assert _version(network) == 4
    before_crash = sorted(p.prompt_index for p in [*lease.prompts, *open_lease.prompts])
    rows = sorted(read_table(network.http, "rollouts"), key=lambda r: r["prompt_index"])
    steps = [(r["prompt_index"], r["step"]) for r in rows[:4]]
    assert steps == [(i, i // 2) for i in before_crash], (
        "steps 0 and 1 trained the rollouts accepted around the crash"
    )


def test_sigterm_leaves_cleanly(network):
    network.start_coordinator()
    node = network.start_node("rollout", "rollout")
    deadline = time.monotonic() + 120
    while _counts(network)["rollouts_accepted"] < 2:  # no trainer: it fills step 0 and waits
        assert time.monotonic() < deadline and node.poll() is None, network.logs()
        time.sleep(0.5)
    node.send_signal(signal.SIGTERM)
    assert network.wait(node, 30, "rollout") == 0
    assert "left the run (stopped)" in network.log("rollout")
    assert sum(n["left_at"] is not None for n in _nodes(network)) == 1
    assert _counts(network)["leases_open"] == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for a machine without a GPU")
def test_a_node_asked_for_a_gpu_it_lacks_says_why_and_leaves(network):
    network.start_coordinator()
    node = network.start_node("trainer", "train", "--device", "cuda")
    assert network.wait(node, 60, "trainer") == 2  # a UserError: one line, no traceback
    log = network.log("trainer")
    assert 'error: device "cuda" asked for, but torch sees no GPU' in log and "Traceback" not in log, log
    assert "left the run (could not start its model or engine)" in log
    assert sum(n["left_at"] is not None for n in _nodes(network)) == 1


@pytest.mark.parametrize("network", [{"train": {"save_steps": 1, "max_steps": 4}}], indirect=True)
def test_a_restarted_trainer_continues_from_its_own_checkpoint(network):
    """Stopped after a step, a trainer started again on the same state folder takes its float32
    weights, AdamW state and RNG from its checkpoint (no fetch from peers) and the run finishes."""
    network.start_coordinator()
    trainer = network.start_node("trainer", "train")
    rollout = network.start_node("rollout", "rollout")
    _await_versions(network, 2, [trainer])
    trainer.send_signal(signal.SIGTERM)  # finishes the step it is in (checkpoint included), then leaves
    assert network.wait(trainer, 60, "trainer") == 0
    stopped_at = _version(network)
    assert stopped_at < 4, "the run ended before the restart could be tested"
    again = network.start_node("trainer-again", "train", state="trainer")
    assert network.wait(again, 240, "trainer-again") == 0
    assert network.wait(rollout, 120, "rollout") == 0
    log = network.log("trainer-again")
    assert f"optimizer state and RNG of policy {stopped_at}" in log, log[-3000:]
    assert "synced to policy" not in log
    assert _version(network) == 4


@pytest.mark.parametrize("network", [{"train": {"save_steps": 1, "max_steps": 3}}], indirect=True)
def test_a_trainer_that_cannot_write_its_checkpoints_trains_on(network):
    """A full disk costs a trainer node its checkpoints (a fast restart), not the run: it logs why
    and how to fix it, and goes on publishing versions."""
    resolve_model_path(SMOLLM2)  # the tokenizer's cache is built before the limit, not under it
    network.start_coordinator()
    with file_size_limit(8 << 20):  # the tiny model's weights are 13 MB: as on a disk that is full
        trainer = network.start_node("trainer", "train", weights="p2p")
    rollout = network.start_node("rollout", "rollout", weights="p2p")
    assert network.wait(trainer, 240, "trainer") == 0, network.logs()
    assert network.wait(rollout, 120, "rollout") == 0, network.logs()
    assert _version(network) == 3
    log = network.log("trainer")
    failures = re.findall(
        r"could not write checkpoint \S+checkpoint-(\d+): .*Training goes on without it", log
    )
    assert failures == ["1", "2", "3"], log[-3000:]
    assert "File too large" in log and "start the node with --state-dir on another" in log
    assert not list((network.root / "trainer" / "checkpoints" / "test-run").iterdir())  # nothing half-written


@pytest.mark.parametrize(
    "network", [{"train": {"grad_compression": "fp16", "max_steps": 5, "weights_fp8": True}}], indirect=True
)
def test_two_gradient_workers_share_each_step_agree_on_the_weights_and_ship_fp8(network):
    """Two train-role nodes split every step's batch, all-reduce over libp2p and publish one version
    only when their weight hashes agree, the block-FP8 file's included; the rollout node fetches
    every version in block FP8 and rolls out from it."""
    network.start_coordinator()
    workers = [network.start_node(f"worker{i}", "train", weights="p2p") for i in range(2)]
    rollout = network.start_node("rollout", "rollout", "--weights-format", "fp8", weights="p2p")
    for p, name in [(workers[0], "worker0"), (workers[1], "worker1"), (rollout, "rollout")]:
        assert network.wait(p, 300, name) == 0, network.logs()
    versions = read_table(network.http, "versions")
    steps = {n["node_id"]: n["steps_trained"] for n in _nodes(network) if "ROLE_TRAIN" in n["roles"]}
    hashes = [(v["weight_hash"], v["weight_hash_fp8"]) for v in versions]
    late = sum(r["policy_version"] >= 1 for r in read_table(network.http, "rollouts"))
    assert [v["version"] for v in versions] == [1, 2, 3, 4, 5]
    assert all(len(h8) == 64 and h8 != h for h, h8 in hashes), hashes
    synced = re.findall(r"synced to policy \d+ \((block FP8, )?", network.log("rollout"))
    assert synced and all(synced) and late > 0, network.log("rollout")[-3000:]  # every sync in FP8
    shared = [v["version"] for v in versions if v["metrics"].get("workers") == 2]
    # The first step may start before the second worker has joined; the later ones are shared.
    assert len(shared) >= 3 and shared[-1] == 5, versions
    assert sorted(steps.values())[0] >= len(shared), steps
    for name in ("worker0", "worker1"):
        log = network.log(name)
        assert "not published" not in log and "all-reduce failed" not in log, log[-3000:]


def test_a_heartbeat_sent_before_publication_does_not_leave_a_worker_out_of_the_next_team(network):
    """Worker A reports its step, then heartbeats the version it held before it learnt that the
    step was published; the next step's team still counts A (the coordinator knows better)."""
    network.start_coordinator()
    rollout, _ = _join(network)
    workers = [_join(network, roles=(swarm_pb2.ROLE_TRAIN,), peer_id=f"peer{i}")[0] for i in range(2)]
    a, b = sorted(workers, key=lambda c: c.key.node_id)
    for _ in range(2):  # steps 0 and 1 (max_staleness = 1), 2 prompts each
        assert rollout.submit(_fake_groups(rollout.lease(0, 2))).status == swarm_pb2.SUBMIT_ACCEPTED
    assert len(a.train_batch(0).workers) == len(b.train_batch(0).workers) == 2
    assert a.report_step(0, "ab" * 32, {}).status == swarm_pb2.STEP_PENDING
    assert b.report_step(0, "ab" * 32, {}).status == swarm_pb2.STEP_PUBLISHED
    a.heartbeat(0, "waiting for the publication", 0.0)
    team = b.train_batch(1)
    assert team.status == swarm_pb2.BATCH_READY
    assert sorted(w.node_id for w in team.workers) == [a.key.node_id, b.key.node_id]


def test_a_step_team_shares_one_device_type_gpus_first_and_is_formed_again_if_it_dies(network):
    """CPU trainers stand by while a GPU trainer is live (a CPU worker would hold it back, and the two
    may not agree to the last bit; standing by, they do not copy its state after every step); a node
    trains on the device its TrainBatch calls name, whatever it joined with; once the GPU trainer is
    gone before reporting, the CPU trainers form the step's team again and take it."""
    network.start_coordinator()
    rollout, _ = _join(network)
    train = (swarm_pb2.ROLE_TRAIN,)
    cpu = _join(network, roles=train, peer_id="peer-cpu")[0]
    gpu = _join(network, roles=train, peer_id="peer-gpu", device="cuda")[0]
    box = _join(network, roles=train, peer_id="peer-box", device="cuda")[0]  # a GPU box run with --device cpu
    assert rollout.submit(_fake_groups(rollout.lease(0, 2))).status == swarm_pb2.SUBMIT_ACCEPTED
    waits = cpu.train_batch(0, device="cpu")
    assert waits.status == swarm_pb2.BATCH_WAIT and waits.message.startswith("standing by: 2 GPU trainers")
    waits = box.train_batch(0, device="cpu")
    assert waits.status == swarm_pb2.BATCH_WAIT and waits.message.startswith("standing by: 1 GPU trainer ")
    ready = gpu.train_batch(0, device="cuda")
    assert ready.status == swarm_pb2.BATCH_READY and [w.node_id for w in ready.workers] == [gpu.key.node_id]
    deadline = time.monotonic() + 30  # the GPU trainer says nothing more: 3 heartbeats (1 s) later it is gone
    while (taken := cpu.train_batch(0, device="cpu")).status != swarm_pb2.BATCH_READY:
        assert time.monotonic() < deadline and taken.message.startswith("standing by"), taken
        for client in (cpu, box):
            client.heartbeat(0, "standing by", 0.0)
        time.sleep(0.5)
    assert sorted(w.node_id for w in taken.workers) == sorted([cpu.key.node_id, box.key.node_id])
    assert taken.attempt == 1 and len(taken.groups) == 1  # the batch's 2 groups, one each
    refused = gpu.report_step(0, "ab" * 32, {}, attempt=ready.attempt)  # the dead team's late report
    assert refused.status == swarm_pb2.STEP_REJECTED, refused


# Heartbeats every 5 s: the dead worker still counts as live for 15 s, so the next step's team
# certainly includes it and the survivor's all-reduce is the one to find out.
@pytest.mark.parametrize(
    "network",
    [{"heartbeat_interval_s": 5.0, "train": {"allreduce_timeout_s": 5.0, "max_steps": 5}}],
    indirect=True,
)
def test_a_gradient_worker_killed_mid_run_does_not_stop_it(network):
    """kill -9 one of two workers: the other's all-reduce times out, the coordinator drops the dead
    worker (its shard's rollouts go back to the pool) and the survivor finishes the run alone."""
    network.start_coordinator()
    workers = [network.start_node(f"worker{i}", "train", weights="p2p") for i in range(2)]
    rollout = network.start_node("rollout", "rollout", weights="p2p")
    _await_versions(network, 2, workers)
    workers[1].send_signal(signal.SIGKILL)
    workers[1].wait(10)
    assert network.wait(workers[0], 240, "worker0") == 0, network.logs()
    assert network.wait(rollout, 120, "rollout") == 0, network.logs()
    assert _version(network) == 5
    log = network.log("worker0")
    assert "all-reduce failed" in log, log[-3000:]
    assert _counts(network)["rollouts_trained"] >= 5, "every step trained on accepted rollouts"


@pytest.mark.parametrize(
    "network",
    [{"train": {"grad_compression": "powersgd", "max_steps": 30, "generation_batch_size": 12}}],
    indirect=True,
)
def test_a_late_gradient_worker_takes_the_exact_state_and_agrees(network):
    """A third worker joining mid-run takes a peer's float32 weights, AdamW and PowerSGD state; the
    steps it shares are published with all three hashes agreeing. The tiny model steps in a fraction
    of a second, faster than a node starts, so the rollout node is paused while the third joins (as
    if generation were slow, as it is with a real model); then the run goes on."""
    network.start_coordinator()
    workers = [network.start_node(f"worker{i}", "train", weights="p2p") for i in range(2)]
    rollout = network.start_node("rollout", "rollout", weights="p2p")
    deadline = _await_versions(network, 2, workers)
    rollout.send_signal(signal.SIGSTOP)
    try:
        late = network.start_node("late", "train", weights="p2p")
        while "took the training state of policy" not in network.log("late"):
            assert time.monotonic() < deadline and late.poll() is None, network.logs()
            time.sleep(0.2)
        time.sleep(2.0)  # its next heartbeat tells the coordinator it holds the current version
    finally:
        rollout.send_signal(signal.SIGCONT)
    for p, name in [(workers[0], "worker0"), (workers[1], "worker1"), (late, "late"), (rollout, "rollout")]:
        assert network.wait(p, 300, name) == 0, network.logs()
    log = network.log("late")
    assert "not published" not in log, log[-3000:]
    versions = read_table(network.http, "versions")
    assert [v["version"] for v in versions] == list(range(1, 31))
    assert any(v["metrics"].get("workers") == 3 for v in versions), versions


def _peer_addr(port: int) -> str:
    """A multiaddr with a well-formed, random libp2p peer id (nobody listens there)."""
    from hivemind.p2p import PeerID

    identity = bytes([0x00, 36, 0x08, 0x01, 0x12, 0x20]) + NodeKey.generate().public_key  # ed25519 key
    return f"/ip4/127.0.0.1/tcp/{port}/p2p/{PeerID(identity).to_base58()}"


def test_a_join_reply_carries_only_the_train_table_and_a_bounded_peer_list(network):
    """Before, a joiner got the whole run config (join_token, state_dir, listen addresses) and every
    live node's addresses (1,601 after 100 keys had joined with 16 each)."""
    from swarmgrpo.coordinator.joining import MAX_INITIAL_PEERS

    network.start_coordinator()
    dht_addrs = json.loads((network.state_dir / "ports.json").read_text())["dht"]
    for i in range(12):
        _join(network, peer_addrs=[_peer_addr(1000 + 16 * i + j) for j in range(16)])
    _, reply = _join(network)
    config = tomllib.loads(reply.run_config_toml)
    assert list(config) == ["train"] and config["train"]["max_steps"] == 4
    for secret in (TOKEN, str(network.state_dir), network.address, "join_token", "state_dir"):
        assert secret not in reply.run_config_toml
    peers = list(reply.initial_peers)
    assert len(peers) <= MAX_INITIAL_PEERS and peers[: len(dht_addrs)] == dht_addrs
    assert len(peers) > len(dht_addrs), "a few live nodes' addresses come along"


def test_a_node_advertising_an_address_that_does_not_parse_is_refused_and_later_joiners_still_join(network):
    network.start_coordinator()
    for bad in (
        "garbage",
        "/ip4/127.0.0.1/tcp/99999",
        "/ip4/127.0.0.1/tcp/1/p2p/notapeer",
        "/ip4/١.٢.٣.٤/tcp/1",
    ):
        with pytest.raises(CoordinatorError) as refused:
            _join(network, peer_addrs=[_peer_addr(4001), bad])
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT, bad
        assert "peer_addrs" in str(refused.value) and "advertise the libp2p host's addresses" in str(
            refused.value
        )
    assert read_status(network.http)["nodes_total"] == 0, "nothing of a refused Join is stored"
    node = network.start_node("rollout", "rollout")
    _await(
        network,
        "a real node joins and works",
        lambda: _counts(network)["rollouts_accepted"] > 0,
        [node],
    )


def test_the_coordinator_shows_only_node_records_their_node_signed(network):
    """Anyone who reaches the coordinator's DHT peer (every joiner is told its address) can store
    records under the run's nodes key: forged, altered, unsigned and junk records are not shown."""
    from swarmgrpo.p2p.host import PeerHost, nodes_key
    from swarmgrpo.protocol.dhtrecords import sign_node_record

    network.start_coordinator()
    run = "test-run"
    dht_addrs = json.loads((network.state_dir / "ports.json").read_text())["dht"]
    honest, victim, altered = NodeKey.generate(), NodeKey.generate(), NodeKey.generate()
    for key in (honest, victim, altered):
        _join(network, key)
    record = {"peer_id": "12D3KooW", "addrs": [], "role": "rollout", "policy_version": 0}
    record |= {"activity": "generating", "tokens_per_s": 1.5}
    attacker = PeerHost()
    try:
        assert attacker.join_dht(dht_addrs) == 1
        key = nodes_key(run)
        attacker.announce(key, honest.node_id, sign_node_record(honest, run, record, ttl=60), ttl=60)
        forged = sign_node_record(NodeKey.generate(), run, record | {"activity": "<b>pwned</b>"}, ttl=60)
        attacker.announce(key, victim.node_id, forged, ttl=60)
        changed = sign_node_record(altered, run, record, ttl=60) | {"role": "train"}
        attacker.announce(key, altered.node_id, changed, ttl=60)
        other_run = sign_node_record(NodeKey.generate(), "another-run", record, ttl=60)
        attacker.announce(key, NodeKey.generate().node_id, other_run, ttl=60)
        for i in range(50):
            attacker.announce(key, f"junk-{i}", {"activity": "x" * 4000, "addrs": ["garbage"] * 100}, ttl=60)

        def shown():
            status = json.loads(urllib.request.urlopen(f"http://{network.http}/status", timeout=10).read())
            return status["dht"]["announced"], status

        _await(
            network, "the coordinator reads the DHT", lambda: shown()[0], [network.coordinator], timeout=30
        )
        time.sleep(2.5)  # two more reads: all the records are in by now
        announced, status = shown()
        assert announced == {honest.node_id: record}
        assert {n["node_id"]: n["in_dht"] for n in status["nodes"]} == {
            honest.node_id: True,
            victim.node_id: False,
            altered.node_id: False,
        }
    finally:
        attacker.close()
    assert "ignored" in network.log("coordinator") and "unsigned or forged node records" in network.log(
        "coordinator"
    )


def test_nodes_ride_out_a_coordinator_outage_and_finish_the_run(network):
    """The coordinator is killed while a trainer waits for rollouts, a rollout node starts during the
    outage, and the coordinator comes back on the same state and port: both nodes wait
    (one clear line each about what they wait for, their key kept), go on and finish the run, with
    no traceback. Before, a node exited with a traceback after 60 s without an answer. (No step is
    in flight at the kill: a step whose team a restart forgets is re-synced, which is another test.)"""
    network.start_coordinator()
    trainer = network.start_node("trainer", "train")
    waiting = lambda: sum(n["activity"] == "waiting for rollouts" for n in _nodes(network))  # noqa: E731
    _await(network, "the trainer waits for rollouts", lambda: waiting() == 1, [trainer])
    network.kill9_coordinator()
    node = network.start_node("rollout", "rollout")
    unreachable = f"coordinator {network.address} unreachable since"
    _await(network, "the rollout node waits", lambda: unreachable in network.log("rollout"), [trainer, node])
    time.sleep(3.0)  # a few more tries each
    assert trainer.poll() is None and node.poll() is None, network.logs()
    network.start_coordinator(timeout=240)  # it loads its tokenizer and task again: slow on a busy machine
    assert network.wait(trainer, 240, "trainer") == 0, network.logs()
    assert network.wait(node, 120, "rollout") == 0, network.logs()
    assert _version(network) == 4
    assert read_status(network.http)["nodes_total"] == 2, "each node kept its key: no new identity"
    for name in ("trainer", "rollout"):
        log = network.log(name)
        assert re.search(
            rf"coordinator {network.address} unreachable since \d\d:\d\d:\d\d .*retrying every 5 s at most "
            r"for as long as it takes \(key and cached weights kept\)",
            log,
        ), log
        assert f"coordinator {network.address} answers again after" in log, log
        assert "Traceback" not in log, log


def test_a_node_leaves_with_one_line_when_its_coordinator_patience_is_spent(network):
    network.start_coordinator()
    node = network.start_node("rollout", "rollout", "--coordinator-patience", "3")
    _await(network, "the node works", lambda: _counts(network)["rollouts_accepted"] > 0, [node])
    network.kill9_coordinator()
    assert network.wait(node, 60, "rollout") == 2, network.logs()
    log = network.log("rollout")
    assert f"error: the coordinator at {network.address} gave no answer for" in log, log
    assert "(--coordinator-patience 3); start the node again when it is back" in log, log
    assert "Traceback" not in log, log
