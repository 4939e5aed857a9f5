"""The largest valid request of each Coordinator method, and so the most bytes the coordinator takes.

`validate.py` bounds every field of every request; here each method's largest request is built with
every field at its bound (strings of 4-byte UTF-8 characters, integers at their widest varint), and
its size is that method's cap. The coordinator refuses a longer message before parsing it (see
swarmgrpo/coordinator/gate.py), so a stranger's bytes cost at most a valid request's worth.

Only Submit grows with the run (prompts per lease x group size x max_completion_length tokens); the
other requests are a few KiB to ~150 KiB whatever the run.
"""

from __future__ import annotations

from swarmgrpo.protocol import SUPPORTED_PROTOCOL_VERSIONS, swarm_pb2
from swarmgrpo.protocol.validate import Limits

WIDE = "\U0010ffff"  # the widest character: 4 bytes in UTF-8
U64 = 2**64 - 1
U32 = 2**32 - 1
MAX_ROLES = 2  # the bounds validate.py writes as literals
MAX_ENGINES = 8
MAX_MISSING_NODES = 1024
MAX_METRICS = 64


def _text(limits: Limits, n: int | None = None, first: str = WIDE) -> str:
    return first + WIDE * ((limits.max_string if n is None else n) - 1)


def _longest_addr(limits: Limits) -> str:
    """A valid multiaddr (validate.join parses them) of max_string ASCII characters, the most an
    advertised address can be: a 253-character DNS name, then /ws and /wss to fill the length."""
    host = ".".join(["a" * 63] * 3) + "." + "a" * 61
    addr = f"/dns/{host}/tcp/65535"
    rest = limits.max_string - len(addr)
    wss, ws = rest % 3, (rest - 4 * (rest % 3)) // 3  # 4 * wss + 3 * ws == rest
    return addr + "/wss" * wss + "/ws" * ws


def _auth() -> swarm_pb2.Auth:
    return swarm_pb2.Auth(
        node_id=WIDE * 32,
        public_key=b"\xff" * 32,
        nonce=U64,
        timestamp_ms=2**63 - 1,
        signature=b"\xff" * 64,
    )


def _join(limits: Limits) -> swarm_pb2.JoinRequest:
    return swarm_pb2.JoinRequest(
        auth=_auth(),
        protocol_version=max(SUPPORTED_PROTOCOL_VERSIONS),
        join_token=_text(limits),
        capabilities=swarm_pb2.Capabilities(
            device="cuda",
            device_name=_text(limits),
            memory_bytes=U64,
            device_memory_bytes=U64,
            compute_capability=_text(limits),
            fp8=True,
            cpu_cores=U32,
            engines=[_text(limits)] * MAX_ENGINES,
        ),
        roles=[swarm_pb2.ROLE_TRAIN] * MAX_ROLES,
        peer_id=_text(limits),
        peer_addrs=[_longest_addr(limits)] * limits.max_addrs,
        software_version=_text(limits),
    )


def _submit(limits: Limits, groups: int) -> swarm_pb2.SubmitRequest:
    n = limits.max_completion_length
    completion = swarm_pb2.Completion(
        token_ids=[limits.vocab_size - 1] * n, logprobs=[-1.0] * n, reported_reward=1.0
    )
    return swarm_pb2.SubmitRequest(
        auth=_auth(),
        lease_id=_text(limits),
        policy_version=U64,
        groups=[
            swarm_pb2.Group(prompt_index=U64 - i, completions=[completion] * limits.group_size)
            for i in range(groups)
        ],
        generation_s=1.0,
    )


def largest_requests(limits: Limits, groups_per_submit: int) -> dict[str, object]:
    """Method name -> its largest valid request (`groups_per_submit`: the run's prompts per lease)."""
    wait = limits.max_wait_s
    return {
        "Join": _join(limits),
        "Heartbeat": swarm_pb2.HeartbeatRequest(
            auth=_auth(), policy_version=U64, activity=_text(limits), tokens_per_s=1.0
        ),
        "GetPolicy": swarm_pb2.PolicyRequest(auth=_auth(), after_version=U64, wait_s=wait),
        "Lease": swarm_pb2.LeaseRequest(
            auth=_auth(), policy_version=U64, max_prompts=limits.max_prompts_per_lease, wait_s=wait
        ),
        "Submit": _submit(limits, groups_per_submit),
        "TrainBatch": swarm_pb2.TrainBatchRequest(
            auth=_auth(),
            step=U64,
            failed_attempt=U32,
            missing_node_ids=[WIDE * 32] * MAX_MISSING_NODES,
            wait_s=wait,
            device="cuda",
        ),
        "ReportStep": swarm_pb2.StepReport(
            auth=_auth(),
            step=U64,
            weight_hash="f" * 64,
            metrics={_text(limits, first=chr(0x10000 + i)): 1.0 for i in range(MAX_METRICS)},
            attempt=U32,
            weight_hash_fp8="f" * 64,
            set_aside_prompts=[U64] * limits.max_set_aside,
            weight_bytes=U64,
            weight_bytes_fp8=U64,
            state_hash="f" * 64,
            state_bytes=U64,
        ),
        "Leave": swarm_pb2.LeaveRequest(auth=_auth(), reason=_text(limits)),
        "Status": swarm_pb2.StatusRequest(),
    }


def request_caps(limits: Limits, groups_per_submit: int) -> dict[str, int]:
    """Method name -> the most bytes a valid request of it can have."""
    return {m: r.ByteSize() for m, r in largest_requests(limits, groups_per_submit).items()}
