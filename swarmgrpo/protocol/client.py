"""The node's side of the Coordinator service: every call signed, outages ridden out.

A coordinator that restarts (even after kill -9) comes back with its state, so a call that gets no
answer (UNAVAILABLE, or no reply before its deadline) is sent again, with a fresh nonce, every
RETRY_CAP_S at most, for `patience_s` (default: as long as it takes) or until `stop` is set; the
first miss logs one line saying what the node waits for, and every MINUTE another. A refusal that
says when to retry (RESOURCE_EXHAUSTED "... retry in N s": the coordinator's rate limits) is sent again
after that long, for `busy_patience_s` (0 by default: raised at once; the daemon waits as long as it
takes). Every other error is raised as `CoordinatorError` with the coordinator's sentence.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time

import grpc

from swarmgrpo.protocol import swarm_pb2, swarm_pb2_grpc
from swarmgrpo.protocol.signing import NodeKey

log = logging.getLogger("swarmgrpo.node")
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
RETRY_CAP_S = 5.0
NO_ANSWER = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
REMIND_S = 60.0
RETRY_IN = re.compile(r"retry in ([0-9]+(?:\.[0-9]+)?) s")


class CoordinatorError(Exception):
    def __init__(self, code: grpc.StatusCode, details: str):
        self.code = code
        super().__init__(f"coordinator refused ({code.name}): {details}")


class CoordinatorUnreachable(CoordinatorError):
    """No answer within the node's patience, or the node was stopped while it waited."""

    def __init__(self, message: str, stopped: bool = False):
        self.code = grpc.StatusCode.UNAVAILABLE
        self.stopped = stopped
        Exception.__init__(self, message)


class CoordinatorClient:
    def __init__(
        self,
        address: str,
        key: NodeKey,
        patience_s: float = math.inf,
        stop: threading.Event | None = None,
        busy_patience_s: float = 0.0,
    ):
        self.address = address
        self.key = key
        self.patience_s = patience_s
        self.busy_patience_s = busy_patience_s
        self.stop = stop or threading.Event()
        self._outage = threading.Lock()
        self._down_since: float | None = None  # wall clock of the first unanswered call
        self._reminded = 0.0
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
        started = time.monotonic()
        delay = 0.2
        while True:
            self.key.sign(method, request, include_public_key=include_public_key)  # fresh nonce per try
            try:
                reply = getattr(self.stub, method)(request, timeout=timeout)
            except grpc.RpcError as e:
                busy = self._busy_wait(e, time.monotonic() - started)
                if busy is not None:
                    if self.stop.wait(busy):
                        raise CoordinatorUnreachable(
                            f"stopped while the coordinator at {self.address} asked to wait", stopped=True
                        ) from None
                    continue
                if e.code() not in NO_ANSWER:
                    raise CoordinatorError(e.code(), e.details() or "") from None
                self._unanswered(method, e, time.monotonic() - started, delay)
                if self.stop.wait(delay):
                    raise CoordinatorUnreachable(
                        f"stopped while waiting for the coordinator at {self.address}", stopped=True
                    ) from None
                delay = min(delay * 2, RETRY_CAP_S)
                continue
            self._answered()
            return reply

    def _busy_wait(self, error: grpc.RpcError, waited: float) -> float | None:
        """Seconds to wait before sending again a request the coordinator's rate limit refused, or
        None to raise it (not a rate limit, or `busy_patience_s` spent)."""
        if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
            return None
        found = RETRY_IN.search(error.details() or "")
        if found is None:
            return None
        wait = min(float(found.group(1)), RETRY_CAP_S)
        if waited + wait > self.busy_patience_s:
            return None
        log.info(
            "the coordinator asks this node to slow down (%s); sending again in %.1f s", error.details(), wait
        )
        return wait

    def _unanswered(self, method: str, error: grpc.RpcError, waited: float, delay: float) -> None:
        """Log the outage (once, then every REMIND_S); raise when the node's patience is spent."""
        if waited + delay > self.patience_s:
            raise CoordinatorUnreachable(
                f"the coordinator at {self.address} gave no answer for {waited:.0f} s "
                f"(--coordinator-patience {self.patience_s:g}); start the node again when it is back: "
                "its key and checkpoints are kept"
            ) from None
        now = time.time()
        with self._outage:
            first = self._down_since is None
            if first:
                self._down_since = now
            elif now - self._reminded < REMIND_S:
                return
            self._reminded = now
            since = time.strftime("%H:%M:%S", time.localtime(self._down_since))
        until = "as long as it takes" if math.isinf(self.patience_s) else f"up to {self.patience_s:g} s"
        log.warning(
            "coordinator %s unreachable since %s (%s: %s), retrying every %g s at most for %s "
            "(key and cached weights kept)",
            self.address,
            since,
            method,
            error.code().name,
            RETRY_CAP_S,
            until,
        )

    def _answered(self) -> None:
        with self._outage:
            down, self._down_since = self._down_since, None
        if down is not None:
            log.info("coordinator %s answers again after %.0f s without it", self.address, time.time() - down)

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
