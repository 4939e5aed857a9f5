"""Policy weights between nodes: one encoding, transports behind one small interface.

The transfer encoding is a safetensors file of the model's state dict in the run's transfer dtype
(bf16 by default: half the bytes of fp32; the trainer keeps fp32 master weights, and the
truncated-importance-sampling weight covers the rounding in the rollout nodes' log-probs). Its
sha256 is the version's `weight_hash`; a fetched file whose hash differs is refused.

Transports: `FileWeights` (a folder every node can read: one machine, or a shared filesystem; the
trivial twin used by tests) and the libp2p transport over hivemind's P2P (peers on any network).
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


class WeightError(Exception):
    pass


def encode(model: torch.nn.Module, dtype: str = "bfloat16") -> tuple[bytes, str]:
    """(safetensors bytes, sha256 hex) of the model's weights in `dtype` (tied weights once)."""
    tensors, seen = {}, set()
    for name, t in sorted(model.state_dict().items()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        tensors[name] = t.detach().to(DTYPES[dtype]).contiguous()
    data = st_save(tensors, metadata={"format": "pt"})
    return data, hashlib.sha256(data).hexdigest()


def load_into(model: torch.nn.Module, data: bytes, expected_sha256: str = "") -> None:
    """Copy the weights in `data` into `model` in place (each tensor cast to the model's dtype)."""
    if expected_sha256 and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise WeightError("weights do not match the published sha256: refused (corrupt or altered transfer)")
    tensors = st_load(data)
    state = model.state_dict()
    loaded = {state[k].data_ptr() for k in tensors if k in state}  # a tied weight is sent once
    missing = [k for k in state if k not in tensors and state[k].data_ptr() not in loaded]
    if missing:
        raise WeightError(
            f"weights lack {len(missing)} tensors of this model (first: {missing[0]}); wrong model?"
        )
    with torch.no_grad():
        for name, t in tensors.items():
            state[name].copy_(t.to(state[name].dtype))


class WeightTransport(ABC):
    @abstractmethod
    def publish(self, version: int, data: bytes, sha256: str) -> None:
        """Make `version` fetchable from this node."""

    @abstractmethod
    def fetch(self, version: int, sha256: str, holders) -> bytes:
        """The bytes of `version` from one of `holders` (WeightHolder messages), checked against sha256."""

    def close(self) -> None:
        return None


class FileWeights(WeightTransport):
    """Versions as files in a folder shared by the nodes: `<dir>/v<version>.safetensors`."""

    def __init__(self, folder: str | Path, keep: int = 4):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.keep = keep

    def _path(self, version: int) -> Path:
        return self.folder / f"v{version:06d}.safetensors"

    def publish(self, version: int, data: bytes, sha256: str) -> None:
        tmp = self._path(version).with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, self._path(version))
        for old in sorted(self.folder.glob("v*.safetensors"))[: -self.keep]:
            old.unlink(missing_ok=True)

    def fetch(self, version: int, sha256: str, holders) -> bytes:
        path = self._path(version)
        if not path.exists():
            raise WeightError(f"{path} does not exist: is every node using the same --weights-dir?")
        data = path.read_bytes()
        if sha256 and hashlib.sha256(data).hexdigest() != sha256:
            raise WeightError(f"{path} does not match the published sha256")
        return data
