"""Data-parallel GRPO: the gradient workers of a step average their `.grad` and step identically.

    averager = GradientAverager(host, model, compression="powersgd", powersgd_rank=1)
    step.compute_gradients(shard)                       # own-normalised gradient of this shard
    stats = averager.average(round_id, members, me, step.shard_weight(shard))
    step.apply()                                        # same AdamW step on every member

Each worker's gradient is normalised by its own shard's counts; the average weighted by those counts
(`LossNorm.denominator`) is the gradient of the union of the shards, so N workers take the step one
worker would take on the whole batch. After `average`, every member's `.grad` holds bitwise-identical
values (see `allreduce`), so replicas that started identical stay identical.

Compression (`compression`): none | fp16 | int8 | fp8 | uint8 (codecs of `compression`, through `allreduce`,
with error feedback unless `error_feedback=False`) | powersgd (rank `powersgd_rank`, fp16 factors,
error feedback; see `powersgd`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from swarmgrpo.p2p.allreduce import AllReduce, ErrorFeedback, Member
from swarmgrpo.p2p.compression import CODECS
from swarmgrpo.p2p.host import PeerHost
from swarmgrpo.p2p.powersgd import PowerSGD

COMPRESSIONS = (*CODECS, "powersgd")


class GradientAverager:
    def __init__(
        self,
        host: PeerHost,
        model: torch.nn.Module,
        compression: str = "none",
        powersgd_rank: int = 1,
        timeout: float = 120.0,
        seed: int = 0,
        error_feedback: bool = True,
    ):
        if compression not in COMPRESSIONS:
            raise ValueError(f"unknown compression '{compression}': use one of {', '.join(COMPRESSIONS)}")
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.compression = compression
        self.reducer = AllReduce(host, timeout=timeout)
        lossy = compression not in ("none", "powersgd")  # PowerSGD keeps its own error feedback
        self.feedback = ErrorFeedback() if error_feedback and lossy else None
        self.powersgd = (
            PowerSGD([p.shape for p in self.params], powersgd_rank, seed)
            if compression == "powersgd"
            else None
        )

    def average(self, round_id: str, members: Sequence[Member], me: int, weight: float) -> dict[str, float]:
        """Replace every parameter's `.grad` by the members' weighted mean; returns bytes sent and seconds
        (in all, and per phase of the all-reduce for the codecs, with the streams opened and the
        byte ranges sent again)."""
        t0 = time.perf_counter()
        phases: dict[str, float] = {}
        # The all-reduce encodes bytes in host memory: a GPU's gradients come over once, and back below.
        grads = [(p.grad if p.grad is not None else torch.zeros_like(p)).cpu() for p in self.params]
        if self.powersgd is not None:
            averaged = self.powersgd.reduce(self.reducer, round_id, members, me, grads, weight)
            sent = self.powersgd.last_bytes_sent
        else:
            flat = torch.cat([g.detach().reshape(-1).float() for g in grads])
            vector = self.reducer.run(
                round_id, members, me, flat, weight, codec=self.compression, feedback=self.feedback
            )
            averaged, offset = [], 0
            for p in self.params:
                averaged.append(vector[offset : offset + p.numel()].view(p.shape))
                offset += p.numel()
            sent = self.reducer.last_bytes_sent
            phases = {f"allreduce_{k}_s": v for k, v in self.reducer.last_phases.items()}
            phases["allreduce_streams"] = float(self.reducer.last_streams)
            phases["allreduce_resent"] = float(self.reducer.last_resent)  # byte ranges sent again
        with torch.no_grad():
            for p, g in zip(self.params, averaged, strict=True):
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                p.grad.copy_(g)
        return {"allreduce_bytes": float(sent), "allreduce_s": time.perf_counter() - t0, **phases}

    def close(self) -> None:
        self.reducer.close()
