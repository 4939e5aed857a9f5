"""The node's side of the Coordinator service: every call signed, transient outages retried.

A coordinator that restarts (even after kill -9) comes back with its state, so UNAVAILABLE is
retried with backoff for `patience_s`; every other error is raised as `CoordinatorError` with the
coordinator's sentence.
"""

from __future__ import annotations

import time

import grpc

from swarmgrpo.protocol import swarm_pb2, swarm_pb2_grpc
from swarmgrpo.protocol.signing import NodeKey

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class CoordinatorError(Exception):
    def __init__(self, code: grpc.StatusCode, details: str):
        self.code = code
        super().__init__(f"coordinator refused ({code.name}): {details}")


class CoordinatorClient:
    def __init__(self, address: str, key: NodeKey, patience_s: float = 60.0):
        self.address = address
        self.key = key
        self.patience_s = patience_s
        self.channel = grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self.stub = swarm_pb2_grpc.CoordinatorStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def call(self, method: str, request, *, include_public_key: bool = False, timeout: float = 60.0):
        deadline = time.monotonic() + self.patience_s
        delay = 0.2
        while True:
            self.key.sign(method, request, include_public_key=include_public_key)  # fresh nonce per try
            try:
                return getattr(self.stub, method)(request, timeout=timeout)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() + delay > deadline:
                    raise CoordinatorError(e.code(), e.details() or "") from None
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def join(self, request: swarm_pb2.JoinRequest) -> swarm_pb2.JoinReply:
        return self.call("Join", request, include_public_key=True)

    def heartbeat(self, version: int, activity: str, tokens_per_s: float) -> swarm_pb2.PolicyState:
        req = swarm_pb2.HeartbeatRequest(policy_version=version, activity=activity, tokens_per_s=tokens_per_s)
        return self.call("Heartbeat", req, timeout=10.0)

    def policy(self, after_version: int = 0, wait_s: float = 0.0) -> swarm_pb2.PolicyState:
        """The run's policy; with wait_s, held until a version newer than after_version is out."""
        request = swarm_pb2.PolicyRequest(after_version=after_version, wait_s=wait_s)
        return self.call("GetPolicy", request, timeout=60.0 + wait_s)

    def lease(self, version: int, max_prompts: int, wait_s: float = 0.0) -> swarm_pb2.LeaseReply:
        request = swarm_pb2.LeaseRequest(policy_version=version, max_prompts=max_prompts, wait_s=wait_s)
        return self.call("Lease", request, timeout=60.0 + wait_s)

    def submit(self, request: swarm_pb2.SubmitRequest) -> swarm_pb2.SubmitReply:
        return self.call("Submit", request)

    def train_batch(
        self,
        step: int,
        failed_attempt: int = 0,
        missing_node_ids: list[str] = (),
        wait_s: float = 0.0,
        device: str = "",
    ) -> swarm_pb2.TrainBatchReply:
        request = swarm_pb2.TrainBatchRequest(
            step=step,
            failed_attempt=failed_attempt,
            missing_node_ids=list(missing_node_ids),
            wait_s=wait_s,
            device=device,
        )
        return self.call("TrainBatch", request, timeout=60.0 + wait_s)

    def report_step(
        self,
        step: int,
        weight_hash: str,
        metrics: dict[str, float],
        attempt: int = 0,
        weight_hash_fp8: str = "",
        set_aside_prompts: list[int] = (),
        **manifest,
    ) -> swarm_pb2.StepReply:
        """`manifest`: the rest of what the step's workers agree on (StepReport's weight_bytes,
        weight_bytes_fp8, state_hash, state_bytes)."""
        return self.call(
            "ReportStep",
            swarm_pb2.StepReport(
                step=step,
                weight_hash=weight_hash,
                metrics=metrics,
                attempt=attempt,
                weight_hash_fp8=weight_hash_fp8,
                set_aside_prompts=set_aside_prompts,
                **manifest,
            ),
        )

    def leave(self, reason: str) -> swarm_pb2.LeaveReply:
        return self.call("Leave", swarm_pb2.LeaveRequest(reason=reason), timeout=10.0)


def status(address: str, timeout: float = 10.0) -> str:
    """The coordinator's status JSON (unsigned, read-only)."""
    with grpc.insecure_channel(address) as channel:
        try:
            return (
                swarm_pb2_grpc.CoordinatorStub(channel)
                .Status(swarm_pb2.StatusRequest(), timeout=timeout)
                .status_json
            )
        except grpc.RpcError as e:
            raise CoordinatorError(e.code(), e.details() or "") from None
