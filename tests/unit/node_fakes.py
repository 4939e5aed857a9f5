"""Fakes for the node's role objects: a coordinator client that answers from a script, an engine, a
weight transport. No sockets, no processes."""

from __future__ import annotations

import threading
from collections import deque

from swarmgrpo.node.engines.base import Completion, Engine
from swarmgrpo.node.joined import Joined
from swarmgrpo.node.options import NodeOptions
from swarmgrpo.p2p.weights import WeightError
from swarmgrpo.protocol import swarm_pb2
from swarmgrpo.trainer.config import TrainConfig


class FakeClient:
    """Answers each call with the next scripted reply (an exception in the script is raised); a call
    with nothing scripted left is a test bug, except `policy`, which repeats its last answer."""

    def __init__(self, **scripts):
        self.scripts = {name: deque(replies) for name, replies in scripts.items()}
        self.calls: list[tuple[str, tuple, dict]] = []
        self.last_policy = swarm_pb2.PolicyState()

    def _answer(self, name, *args, **kwargs):
        self.calls.append((name, args, kwargs))
        queue = self.scripts.get(name)
        if not queue:
            if name == "policy":
                return self.last_policy
            raise AssertionError(f"unscripted call {name}{args}")
        reply = queue.popleft()
        if isinstance(reply, Exception):
            raise reply
        if name == "policy":
            self.last_policy = reply
        return reply

    def named(self, name: str) -> list[tuple[tuple, dict]]:
        return [(a, k) for n, a, k in self.calls if n == name]

    def lease(self, version, max_prompts, wait_s=0.0):
        return self._answer("lease", version, max_prompts, wait_s=wait_s)

    def submit(self, request):
        return self._answer("submit", request)

    def policy(self, after_version=0, wait_s=0.0):
        return self._answer("policy", after_version=after_version, wait_s=wait_s)

    def train_batch(self, step, failed_attempt=0, missing_node_ids=(), wait_s=0.0, device=""):
        return self._answer(
            "train_batch", step, failed_attempt, list(missing_node_ids), wait_s=wait_s, device=device
        )

    def report_step(self, step, weight_hash, metrics, **kwargs):
        return self._answer("report_step", step, weight_hash, metrics, **kwargs)


class FakeEngine(Engine):
    """Completion j of a prompt: the prompt's first token + j, then 7 (finished)."""

    def __init__(self, quantization=None):
        self.quantization = quantization
        self.asked: list[tuple] = []
        self.loaded: list[dict] = []
        self.closed = False

    def generate(self, prompts, n, params):
        self.asked.append((prompts, n, params))
        return [
            [Completion([p[0] + j, 7], [-0.5 - j, -0.25], finished=True) for j in range(n)] for p in prompts
        ]

    def load_weights(self, state_dict):
        self.loaded.append(state_dict)

    def close(self):
        self.closed = True


class FakeTransport:
    """Serves `files` {(version, fmt): bytes}; a version it lacks is a WeightError."""

    def __init__(self, files=None):
        self.files = dict(files or {})
        self.fetched: list[tuple] = []
        self.published: list[tuple] = []

    def fetch(self, version, sha256, holders, fmt="", size=0):
        self.fetched.append((version, sha256, fmt, size))
        if (version, fmt) not in self.files:
            raise WeightError(f"no peer serves version {version}")
        return self.files[(version, fmt)]

    def publish(self, version, data, sha256, fp8=None):
        self.published.append((version, data, sha256, fp8))

    def close(self):
        pass


def joined(client=None, transport=None, cfg=None, **opts) -> Joined:
    """A joined node whose waits are recorded, not slept."""
    j = Joined(
        opts=NodeOptions(join="127.0.0.1:1", token="t", **opts),
        cfg=cfg or TrainConfig(),
        run_id="run",
        client=client or FakeClient(),
        host=None,
        transport=transport or FakeTransport(),
        stop=threading.Event(),
    )
    j.waited = []
    j.wait = j.waited.append
    return j
