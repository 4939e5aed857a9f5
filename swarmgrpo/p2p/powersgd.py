"""PowerSGD gradient averaging (Vogels et al., 2019): rank-r factors with error feedback, fp16 on the wire.

    psgd = PowerSGD([p.shape for p in params], rank=1)
    averaged = psgd.reduce(reducer, round_id, members, me, [p.grad for p in params], weight)

Each matrix-shaped gradient G (n × m; embeddings and linear weights) is averaged as a rank-r product
instead of in full: with M = G + e (e: what earlier steps' approximations left out, kept locally)

    P = M Q          all-reduced (fp16)      → P̂ = orthonormal basis of mean(P)
    Q = Mᵀ P̂         all-reduced (fp16)      → Q̂ = mean(Q)
    approximation    P̂ Q̂ᵀ                    (identical on every member: built from all-reduced bytes)
    e ← M − P̂ Qᵀ      (this member's own residual; Q̂ warm-starts the next step)

Vectors (norm weights) and matrices too small to gain ride along in the first all-reduce as fp16.
Bytes per step for a [576, 1536] matrix at rank 1: (576 + 1536) × 2 bytes instead of 576 × 1536 × 4,
838× fewer; the whole of SmolLM2-135M sends ~600× fewer bytes than its float32 all-reduce.

Every member must start from the same Q: it is drawn from `seed`, and a member that joins a running
group must take the group's `state()` (Q and nothing else: the error feedback is each member's own).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from swarmgrpo.p2p.allreduce import AllReduce, Member


class PowerSGD:
    def __init__(self, shapes: Sequence[torch.Size], rank: int = 1, seed: int = 0):
        if rank < 1:
            raise ValueError(f"PowerSGD rank must be >= 1, got {rank}")
        self.rank = rank
        self.shapes = [torch.Size(s) for s in shapes]
        self.matrices: list[int] = []  # indices of the gradients sent as factors
        self.rest: list[int] = []  # indices sent whole (fp16)
        for i, shape in enumerate(self.shapes):
            n, m = (shape[0], shape[1:].numel()) if len(shape) >= 2 else (0, 0)
            (self.matrices if n and (n + m) * rank < n * m else self.rest).append(i)
        gen = torch.Generator().manual_seed(seed)
        self.q = {i: torch.randn(self.shapes[i][1:].numel(), rank, generator=gen) for i in self.matrices}
        self.error = {i: torch.zeros(self.shapes[i][0], self.shapes[i][1:].numel()) for i in self.matrices}
        self.last_bytes_sent = 0

    def state(self) -> dict[int, torch.Tensor]:
        """The shared part of the state (Q per matrix), for a member joining the group."""
        return {i: q.clone() for i, q in self.q.items()}

    def load_state(self, state: dict[int, torch.Tensor]) -> None:
        self.q = {i: state[i].clone() for i in self.matrices}

    def reduce(
        self,
        reducer: AllReduce,
        round_id: str,
        members: Sequence[Member],
        me: int,
        grads: Sequence[torch.Tensor],
        weight: float,
    ) -> list[torch.Tensor]:
        """The group's weighted-mean gradients (low-rank for matrices), identical on every member."""
        if len(grads) != len(self.shapes):
            raise ValueError(f"expected {len(self.shapes)} gradients, got {len(grads)}")
        m_mats = {
            i: grads[i].detach().reshape(self.shapes[i][0], -1).float() + self.error[i] for i in self.matrices
        }
        p_local = [m_mats[i] @ self.q[i] for i in self.matrices]
        rest_local = [grads[i].detach().reshape(-1).float() for i in self.rest]
        first = reducer.run(f"{round_id}/p", members, me, _flat(p_local + rest_local), weight, codec="fp16")
        sent = reducer.last_bytes_sent
        p_mean = _unflat(first, [p.shape for p in p_local])
        rest_mean = _unflat(first[sum(p.numel() for p in p_local) :], [r.shape for r in rest_local])
        p_hat = [torch.linalg.qr(p).Q for p in p_mean]  # orthonormal basis of the averaged column space
        q_local = [m_mats[i].T @ p for i, p in zip(self.matrices, p_hat, strict=True)]
        second = reducer.run(f"{round_id}/q", members, me, _flat(q_local), weight, codec="fp16")
        self.last_bytes_sent = sent + reducer.last_bytes_sent
        q_mean = _unflat(second, [q.shape for q in q_local])
        out: list[torch.Tensor | None] = [None] * len(self.shapes)
        for i, p, q, q_own in zip(self.matrices, p_hat, q_mean, q_local, strict=True):
            # What this member's own compression missed (its M minus its own rank-r projection
            # P̂ P̂ᵀ M); the mean of the members' projections is what the group applies.
            self.error[i] = m_mats[i] - p @ q_own.T
            self.q[i] = q
            out[i] = (p @ q.T).reshape(self.shapes[i])
        for i, r in zip(self.rest, rest_mean, strict=True):
            out[i] = r.reshape(self.shapes[i])
        return out


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors]) if tensors else torch.zeros(0)


def _unflat(vector: torch.Tensor, shapes: list[torch.Size]) -> list[torch.Tensor]:
    out, offset = [], 0
    for shape in shapes:
        size = shape.numel()
        out.append(vector[offset : offset + size].reshape(shape))
        offset += size
    return out
