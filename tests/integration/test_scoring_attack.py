"""A node submits the completions that cost the answer checker most; the coordinator goes on answering.

A real coordinator process (arithmetic task, completions up to 1024 tokens) is attacked by a signed
node that submits, lease after lease, the worst completions found by reading every pattern of the
checker, as token ids of the run's tokenizer: "=" then a run of whitespace (cubic before), unclosed
\\boxed{ and <answer> blocks (quadratic before), "####" runs, malformed thousands runs. Meanwhile an
honest node heartbeats. Measured against the real processes: the CPU time of the scoring per
submission (from /proc: the coordinator's scoring worker, or the coordinator where it scores inline),
and the honest node's Heartbeat latency during the attack and in quiet windows between.
"""

import itertools
import os
import statistics
import threading
import time
from pathlib import Path

import pytest

from swarmgrpo.node.engines.base import Completion
from swarmgrpo.protocol import swarm_pb2
from swarmgrpo.trainer.models import load_tokenizer
from swarmgrpo.trainer.rollouts import submission
from tests.integration.netfixtures import open_network
from tests.integration.test_network import _join

pytestmark = pytest.mark.integration

MAX_TOKENS = 1024
ATTACKS = 12
ROUNDS = 3
# Between submissions: this test is about the checker; a flood of big submissions is for rate limits.
PACE_S = 0.1
CPU_LIMIT_S = 0.050
# (head, filler, tail): the filler repeats until the completion holds MAX_TOKENS tokens, tail included
WORST = (
    ("=", " ", "x"),
    ("= 5", " ", "x"),
    ("the answer is", " ", ":x"),
    ("", "\\boxed{", ""),
    ("", "<answer>", ""),
    ("", "####", ""),
    ("1", ",100", "1"),
    ("", "=" + " " * 64, ""),
)


@pytest.fixture
def network(tmp_path):
    train = {"max_completion_length": MAX_TOKENS, "generation_batch_size": 4 * 2 * ATTACKS}
    with open_network(tmp_path, train={**train, "task": {"name": "arithmetic"}}, max_staleness=0) as net:
        yield net


def _worst_token_ids() -> list[list[int]]:
    tokenizer = load_tokenizer("tiny")

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    worst = []
    for head, filler, tail in WORST:
        room = MAX_TOKENS - len(encode(head)) - len(encode(tail))
        worst.append(encode(head) + encode(filler * 100 * MAX_TOKENS)[:room] + encode(tail))
    return worst


def _worst_submission(lease, completions: list[list[int]]) -> swarm_pb2.SubmitRequest:
    worst = itertools.cycle(Completion(ids, [-1.0] * len(ids), finished=True) for ids in completions)
    groups = [[next(worst) for _ in range(lease.group_size)] for _ in lease.prompts]
    return submission(lease, groups, generation_s=1.0)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _forked_children(pid: int) -> list[int]:
    """Children of `pid` running its own command line (the scoring worker, not the libp2p daemon)."""
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent == pid and (proc / "cmdline").read_bytes() == cmdline:
                found.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return found


def _scoring_cpu_s(pid: int) -> float:
    """CPU time of the process that scores: the coordinator's worker, or the coordinator if it has none."""
    workers = _forked_children(pid)
    return sum(_cpu_s(w) for w in workers) if workers else _cpu_s(pid)


def _heartbeat_ms(client) -> float:
    time.sleep(0.02)
    t0 = time.perf_counter()
    client.heartbeat(0, "idle", 0.0)
    return (time.perf_counter() - t0) * 1000


def test_the_worst_completions_cost_little_cpu_and_do_not_stall_other_calls(network):
    network.start_coordinator()
    coordinator = network.coordinator.pid
    honest, _ = _join(network)
    completions = _worst_token_ids()
    assert all(len(ids) == MAX_TOKENS for ids in completions)
    attacks = []  # one lease per node: the attacker runs many keys, and builds its requests first
    for _ in range(ATTACKS):
        attacker, _ = _join(network)
        lease = attacker.lease(0, 2)
        assert lease.status == swarm_pb2.LEASE_GRANTED, lease
        req = attacker.key.sign("Submit", _worst_submission(lease, completions))  # now, not while measured
        attacks.append((attacker, req))

    scoring_s, total_s, rewards, errors = [], [], [], []

    def attack(batch):
        try:
            for attacker, req in batch:
                time.sleep(PACE_S)
                cpu0, scoring0 = _cpu_s(coordinator), _scoring_cpu_s(coordinator)
                reply = attacker.stub.Submit(req, timeout=60)
                scoring_s.append(_scoring_cpu_s(coordinator) - scoring0)
                total_s.append(
                    _cpu_s(coordinator) - cpu0 + scoring_s[-1] * bool(_forked_children(coordinator))
                )
                assert reply.status == swarm_pb2.SUBMIT_ACCEPTED, reply.message
                rewards.extend(r for g in reply.rewards for r in g.rewards)  # scored, every one
        except Exception as e:  # reported by the main thread
            errors.append(e)

    # Quiet and attacked windows alternate, so that both see the same load from the rest of the machine.
    before, during = [], []
    for batch in (attacks[i : i + ATTACKS // ROUNDS] for i in range(0, ATTACKS, ATTACKS // ROUNDS)):
        before += [_heartbeat_ms(honest) for _ in range(15)]
        attacking = threading.Thread(target=attack, args=(batch,), daemon=True)
        attacking.start()
        while attacking.is_alive():
            during.append(_heartbeat_ms(honest))
        attacking.join()
    assert not errors, errors
    assert len(scoring_s) == ATTACKS and len(rewards) == ATTACKS * 8

    # /proc counts in clock ticks (10 ms): the means are the figures. The total adds the coordinator's
    # own work on each submission (signature, field checks, storing) and on the heartbeats meanwhile.
    per_submission = sum(scoring_s) / ATTACKS
    base, loaded = statistics.median(before), statistics.median(during)
    print(
        f"scoring CPU per submission of 8 x {MAX_TOKENS} worst tokens: mean {per_submission * 1000:.1f} ms, "
        f"max {max(scoring_s) * 1000:.0f} ms (coordinator in all {sum(total_s) / ATTACKS * 1000:.1f} ms); heartbeat median {base:.2f} ms before, {loaded:.2f} ms during "
        f"({len(during)} heartbeats)"
    )
    assert per_submission < CPU_LIMIT_S
    assert loaded < 2 * base, (before, during)
