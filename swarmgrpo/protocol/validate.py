"""Every field of every incoming request, checked in one place before the coordinator acts on it.

A failed check raises `InvalidRequest(field, problem, fix)`; the coordinator turns it into gRPC
INVALID_ARGUMENT with that sentence, and stores nothing from the request.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

from swarmgrpo.protocol import SUPPORTED_PROTOCOL_VERSIONS, multiaddrs, swarm_pb2


class InvalidRequest(Exception):
    def __init__(self, field: str, problem: str, fix: str):
        self.field = field
        super().__init__(f"{field}: {problem}; {fix}")


class IncompatibleProtocol(Exception):
    """The node speaks a protocol version the coordinator does not (gRPC FAILED_PRECONDITION)."""


@dataclass(frozen=True)
class Limits:
    vocab_size: int
    group_size: int
    max_completion_length: int
    max_prompts_per_lease: int = 64
    max_string: int = 512
    max_addrs: int = 16
    max_wait_s: float = 30.0
    max_set_aside: int = 1024
    max_unlikely_draw: float = 1e-12
    """The chance, per token, that an honest engine's draw falls below `min_logprob`."""

    @property
    def min_logprob(self) -> float:
        """The lowest log-prob a sampled token may claim: ln(max_unlikely_draw / vocab_size), -38.4
        for SmolLM2's 49,152 tokens.

        Tokens less likely than p = e^min_logprob hold together less than vocab_size * p of the
        sampling distribution, so an engine draws one with probability below `max_unlikely_draw`
        per token, whatever the temperature, top-p or top-k (they only raise the sampled tokens'
        probabilities): one in a billion 1,024-token completions. A claim below it is a forgery (or
        a broken engine). It also keeps exp(logp - behavior_logp) a finite float32 (logp <= 0), so a
        node's log-probs cannot make the trainer's importance ratio overflow (-1e30 gave inf, -50 a
        ratio of 1e17 before the ratio cap)."""
        return math.log(self.max_unlikely_draw / self.vocab_size)


def _check(ok: bool, field: str, problem: str, fix: str) -> None:
    if not ok:
        raise InvalidRequest(field, problem, fix)


def _auth(auth: swarm_pb2.Auth, *, join: bool) -> None:
    _check(
        len(auth.signature) == 64, "auth.signature", "must be a 64-byte ed25519 signature", "sign the request"
    )
    if join:
        _check(
            len(auth.public_key) == 32,
            "auth.public_key",
            "Join needs the 32-byte ed25519 public key",
            "send it",
        )
    _check(
        len(auth.node_id) == 32,
        "auth.node_id",
        "must be 32 hex characters",
        "use the id derived from the key",
    )
    _check(
        len(auth.public_key) in (0, 32),
        "auth.public_key",
        "must be empty or the 32-byte ed25519 key",
        "send the key in Join only",
    )


def auth_fields(auth: swarm_pb2.Auth, *, join: bool) -> None:
    """The Auth's lengths alone: cheap, so the coordinator checks them before the signature."""
    _auth(auth, join=join)


def _short(value: str, field: str, limits: Limits) -> None:
    _check(
        len(value) <= limits.max_string, field, f"longer than {limits.max_string} characters", "shorten it"
    )


def join(req: swarm_pb2.JoinRequest, limits: Limits) -> None:
    _auth(req.auth, join=True)
    if req.protocol_version not in SUPPORTED_PROTOCOL_VERSIONS:
        raise IncompatibleProtocol(
            f"this node speaks protocol {req.protocol_version}, the coordinator speaks "
            f"{sorted(SUPPORTED_PROTOCOL_VERSIONS)}: install the swarmgrpo version the run owner names"
        )
    for name in ("join_token", "peer_id", "software_version"):
        _short(getattr(req, name), name, limits)
    _check(
        len(req.peer_addrs) <= limits.max_addrs, "peer_addrs", f"more than {limits.max_addrs}", "send fewer"
    )
    for a in req.peer_addrs:
        _short(a, "peer_addrs", limits)
        why = multiaddrs.problem(a)
        _check(
            why is None,
            "peer_addrs",
            f"{why}: later joiners dial it",
            "advertise the libp2p host's addresses",
        )
    _check(len(req.roles) <= 2, "roles", "more than 2", "offer each role once")
    for r in req.roles:
        _check(
            r in (swarm_pb2.ROLE_ROLLOUT, swarm_pb2.ROLE_TRAIN),
            "roles",
            f"unknown role {r}",
            "use rollout/train",
        )
    caps = req.capabilities
    _check(
        caps.device in ("cpu", "cuda"),
        "capabilities.device",
        f"'{caps.device[:20]}' is unknown",
        "use cpu or cuda",
    )
    for name in ("device_name", "compute_capability"):
        _short(getattr(caps, name), f"capabilities.{name}", limits)
    _check(len(caps.engines) <= 8, "capabilities.engines", "more than 8", "send fewer")
    for e in caps.engines:
        _short(e, "capabilities.engines", limits)


def _rate(value: float, field: str) -> None:
    _check(math.isfinite(value) and value >= 0, field, "must be finite and >= 0", "fix the node")


def heartbeat(req: swarm_pb2.HeartbeatRequest, limits: Limits) -> None:
    _auth(req.auth, join=False)
    _short(req.activity, "activity", limits)
    _rate(req.tokens_per_s, "tokens_per_s")


def _wait(value: float, limits: Limits) -> None:
    _check(
        math.isfinite(value) and 0 <= value <= limits.max_wait_s,
        "wait_s",
        f"must be 0..{limits.max_wait_s:g} seconds, got {value}",
        "ask for a shorter hold (the node asks again after a wait)",
    )


def lease(req: swarm_pb2.LeaseRequest, limits: Limits) -> None:
    _auth(req.auth, join=False)
    _wait(req.wait_s, limits)
    _check(
        1 <= req.max_prompts <= limits.max_prompts_per_lease,
        "max_prompts",
        f"must be 1..{limits.max_prompts_per_lease}, got {req.max_prompts}",
        "ask for fewer prompts",
    )


def submit(req: swarm_pb2.SubmitRequest, limits: Limits, leased: Collection[int]) -> None:
    """`leased`: the lease's prompt indices (the prompts themselves never come from the node)."""
    _auth(req.auth, join=False)
    _short(req.lease_id, "lease_id", limits)
    _rate(req.generation_s, "generation_s")
    _check(
        0 < len(req.groups) <= len(leased),
        "groups",
        f"{len(req.groups)} groups for a lease of {len(leased)} prompts",
        "submit one group per leased prompt",
    )
    seen = set()
    for i, g in enumerate(req.groups):
        where = f"groups[{i}]"
        _check(
            g.prompt_index in leased,
            f"{where}.prompt_index",
            f"{g.prompt_index} is not in this lease",
            "submit only leased prompts",
        )
        _check(
            g.prompt_index not in seen,
            f"{where}.prompt_index",
            f"{g.prompt_index} appears twice",
            "submit each prompt once",
        )
        seen.add(g.prompt_index)
        _check(
            len(g.completions) == limits.group_size,
            f"{where}.completions",
            f"{len(g.completions)} completions, the run's group size is {limits.group_size}",
            f"sample exactly {limits.group_size} per prompt",
        )
        for j, c in enumerate(g.completions):
            _completion(c, f"{where}.completions[{j}]", limits)


def _completion(c: swarm_pb2.Completion, where: str, limits: Limits) -> None:
    n = len(c.token_ids)
    _check(
        n <= limits.max_completion_length,
        f"{where}.token_ids",
        f"{n} tokens > max_completion_length {limits.max_completion_length}",
        "stop sampling at the limit",
    )
    _check(
        len(c.logprobs) == n,
        f"{where}.logprobs",
        f"{len(c.logprobs)} log-probs for {n} tokens",
        "send one per token",
    )
    if n and max(c.token_ids) >= limits.vocab_size:
        raise InvalidRequest(
            f"{where}.token_ids",
            f"token id {max(c.token_ids)} outside the vocabulary ({limits.vocab_size})",
            "use the run's tokenizer",
        )
    for lp in c.logprobs:
        if not (limits.min_logprob <= lp <= 0.0):  # also refuses nan
            raise InvalidRequest(
                f"{where}.logprobs",
                f"{lp} is not a sampled token's log-probability ({limits.min_logprob:.2f}..0)",
                "send the log-probs the engine reported for the tokens it drew",
            )
    _check(
        math.isfinite(c.reported_reward), f"{where}.reported_reward", "must be finite", "send the reward or 0"
    )


def train_batch(req: swarm_pb2.TrainBatchRequest, limits: Limits) -> None:
    _auth(req.auth, join=False)
    _wait(req.wait_s, limits)
    _check(
        len(req.missing_node_ids) <= 1024 and all(len(n) == 32 for n in req.missing_node_ids),
        "missing_node_ids",
        "must be at most 1024 node ids of 32 characters",
        "name the workers from TrainBatchReply.workers that the all-reduce did not hear from",
    )
    _check(
        req.device in ("", "cpu", "cuda"),
        "device",
        f"'{req.device[:20]}' is not cpu or cuda",
        "send cpu or cuda, or leave it empty for the device the node joined with",
    )


def _is_sha256(h: str) -> bool:
    return len(h) == 64 and all(ch in "0123456789abcdef" for ch in h)


def step_report(req: swarm_pb2.StepReport, limits: Limits) -> None:
    _auth(req.auth, join=False)
    _check(_is_sha256(req.weight_hash), "weight_hash", "must be 64 lowercase hex characters (sha256)",
           "hash the weights file")  # fmt: skip
    _check(
        not req.weight_hash_fp8 or _is_sha256(req.weight_hash_fp8),
        "weight_hash_fp8",
        "must be empty or 64 lowercase hex characters (sha256)",
        "hash the block-FP8 weights file, or leave it empty when the run ships no FP8 weights",
    )
    _check(
        not req.state_hash or _is_sha256(req.state_hash),
        "state_hash",
        "must be empty or 64 lowercase hex characters (sha256)",
        "hash the training-state file (swarmgrpo.p2p.train_state), or leave it empty",
    )
    _check(len(req.metrics) <= 64, "metrics", "more than 64 entries", "send fewer")
    _check(
        len(req.set_aside_prompts) <= limits.max_set_aside,
        "set_aside_prompts",
        f"more than {limits.max_set_aside}",
        "name only the prompts of your shard that the step set aside",
    )
    for k, v in req.metrics.items():
        _short(k, "metrics", limits)
        _check(math.isfinite(v), f"metrics[{k}]", f"{v} is not finite", "send finite metrics")


def policy(req: swarm_pb2.PolicyRequest, limits: Limits) -> None:
    _auth(req.auth, join=False)
    _wait(req.wait_s, limits)


def signed_only(req, limits: Limits) -> None:
    _auth(req.auth, join=False)
    if hasattr(req, "reason"):
        _short(req.reason, "reason", limits)
