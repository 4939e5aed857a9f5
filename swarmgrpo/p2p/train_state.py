"""A gradient worker's exact training state, served to a worker that joins (or re-syncs) mid-run.

Gradient workers stay identical by taking identical steps from identical states, so a new worker
needs more than the bf16 weights rollout nodes fetch: the float32 weights, AdamW's moments and step
counts, and PowerSGD's shared Q. A worker serves that state on the stream protocol
`swarmgrpo.trainstate` between steps (`snapshot` returns None while it is mid-step or holds another
version), as `WeightChunk`s of one safetensors file (`pack`).

The file is a function of the state alone (names in order, no pickle), so every worker of a step
holds the same bytes: each reports their sha256 and size with its weights (`digest`, without making
the file), the team agrees on them as on the weight hash, and the coordinator publishes them with
the version. A joiner takes a peer's state only if it hashes to that agreed `state_hash`: a peer that
serves the true weights with moments of its choosing (exp_avg = 1, exp_avg_sq = 0 would wreck the
next step) is refused before anything is read from it, and the joiner asks the next holder.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable

import torch
from hivemind.p2p import P2PContext

from swarmgrpo.p2p.holders import transfer_deadline
from swarmgrpo.p2p.host import PeerHost
from swarmgrpo.p2p.weight_transfer import NotHeld, chunks, fetch_file
from swarmgrpo.p2p.weights import WeightError, metadata, safetensors_bytes, safetensors_digest, views
from swarmgrpo.protocol import swarm_pb2

log = logging.getLogger(__name__)
PROTOCOL = "swarmgrpo.trainstate"


def _entries(state: dict) -> tuple[list, dict[str, str]]:
    """The state's tensors as (name, tensor, dtype) and the rest as metadata strings.

    `state`: {"version": int, "model": state dict, "optimizer": optimizer.state_dict(),
    "powersgd": {matrix index: Q} or None}. A weight tied to another is stored once.
    """
    tensors, seen = [], set()
    for name, t in state["model"].items():
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            tensors.append((f"model.{name}", t, t.dtype))
    optimizer = state["optimizer"]
    for index, per_param in optimizer["state"].items():
        for key, t in per_param.items():
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"optimizer state {index}.{key} is not a tensor: cannot pack it")
            tensors.append((f"optimizer.{index}.{key}", t, t.dtype))
    for index, q in (state["powersgd"] or {}).items():
        tensors.append((f"powersgd.{index}", q, q.dtype))
    meta = {
        "version": str(state["version"]),
        "param_groups": json.dumps(optimizer["param_groups"], sort_keys=True),
        "powersgd": "1" if state["powersgd"] is not None else "0",
    }
    return tensors, meta


def pack(state: dict) -> bytes:
    return safetensors_bytes(*_entries(state))[0]


def state_digest(state: dict) -> tuple[str, int]:
    """(sha256, size) of `pack(state)`, without making it: what a worker reports with its step."""
    return safetensors_digest(*_entries(state))


def unpack(data: bytes) -> dict:
    """The state dict `pack` was given (tensors copied out of `data`, on the CPU)."""
    meta = metadata(data)
    state = {"model": {}, "optimizer": {"state": {}}, "powersgd": {} if meta.get("powersgd") == "1" else None}
    try:
        state["version"] = int(meta["version"])
        state["optimizer"]["param_groups"] = json.loads(meta["param_groups"])
    except (KeyError, ValueError) as e:
        raise WeightError(f"training state without a readable version or param_groups: {e}") from None
    for name, t in views(data).items():
        kind, _, rest = name.partition(".")
        if kind == "model":
            state["model"][rest] = t.clone()
        elif kind == "optimizer":
            index, _, key = rest.partition(".")
            state["optimizer"]["state"].setdefault(int(index), {})[key] = t.clone()
        elif kind == "powersgd" and state["powersgd"] is not None:
            state["powersgd"][int(rest)] = t.clone()
        else:
            raise WeightError(f"training state holds an unknown tensor '{name}'")
    return state


class TrainStateServer:
    def __init__(self, host: PeerHost, snapshot: Callable[[int], bytes | None], chunk_bytes: int = 1 << 20):
        self.host, self.snapshot, self.chunk_bytes = host, snapshot, chunk_bytes
        host.call(
            host.p2p.add_protobuf_handler(PROTOCOL, self._serve, swarm_pb2.WeightRequest, stream_output=True)
        )

    async def _serve(self, request: swarm_pb2.WeightRequest, context: P2PContext):
        version = request.policy_version
        data = await asyncio.to_thread(self.snapshot, version)
        if data is None:
            yield swarm_pb2.WeightChunk(
                policy_version=version, error=f"no training state of version {version} here now"
            )
            return
        for chunk in chunks(version, data, hashlib.sha256(data).hexdigest(), self.chunk_bytes):
            yield chunk

    def close(self) -> None:
        if self.host.p2p is not None:
            try:
                self.host.call(
                    self.host.p2p.remove_protobuf_handler(PROTOCOL, stream_output=True), timeout=10
                )
            except Exception as e:
                log.warning("removing the training-state handler: %s", e)


def fetch(
    host: PeerHost,
    holders,
    version: int,
    sha256: str,
    size: int,
    timeout: float = 60.0,
    min_bytes_per_s: float = 1 << 20,
) -> dict:
    """The training state of `version` from the first of `holders` (WeightHolder, best first by the
    host's ranking) that serves a file of at most `size` bytes hashing to `sha256`, within the
    transfer deadline; WeightError names each holder's failure."""
    if not sha256 or not size:
        raise WeightError(f"no training state of version {version} was agreed: nothing to check one against")
    deadline = transfer_deadline(size, timeout, min_bytes_per_s)
    request = swarm_pb2.WeightRequest(policy_version=version)
    problems = []
    for holder in host.ranking.order([h for h in holders if h.peer_id != host.peer_id]):
        try:
            data = host.call(
                asyncio.wait_for(fetch_file(host, holder, PROTOCOL, request, sha256, size, timeout), deadline)
            )
            state = unpack(data)
        except Exception as e:
            # a holder that does not hold it, or a rollout node (it serves no training state), has not
            # failed this node: its rank for weight files stays as it was
            if not isinstance(e, NotHeld) and "protocols not supported" not in str(e):
                host.ranking.failed(holder.peer_id)
            reason = (
                f"did not send the file within {deadline:.0f} s" if isinstance(e, TimeoutError) else str(e)
            )
            problems.append(f"{holder.node_id[:8] or '?'} ({holder.peer_id}): {reason}")
            log.warning("training state v%d: holder %s", version, problems[-1])
            continue
        host.ranking.served(holder.peer_id)
        return state
    raise WeightError(
        f"no peer served the agreed training state of version {version}: "
        + "; ".join(problems or ["none asked"])
    )
