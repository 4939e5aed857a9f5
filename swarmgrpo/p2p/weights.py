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
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load as st_load

from swarmgrpo.p2p.buffers import readonly_view

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


class WeightError(Exception):
    pass


_ST_DTYPES = {
    torch.bfloat16: "BF16",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.float8_e4m3fn: "F8_E4M3",
}
FP8 = "fp8"
"""The block-FP8 transfer format (`to_fp8`): what nodes that roll out in FP8 may fetch instead."""
SCALE_SUFFIX = "_scale_inv"  # DeepSeek-V3's and vLLM's name for a block-FP8 weight's scales
NOT_FP8 = ("embed", "lm_head", "wte", "wpe")  # embeddings and the head stay in the transfer dtype


def encode_model(model: torch.nn.Module, dtype: str = "bfloat16") -> tuple[bytes, str]:
    """(safetensors bytes, sha256 hex) of the model's weights in `dtype` (tied weights once).

    Written straight into one buffer: each tensor is cast into its place (safetensors' own `save`
    converts, copies each tensor to bytes and joins them: 2-7x slower on SmolLM2-135M, 0.8-2.7 s
    against 0.4 s on one core, and this runs between every two training steps). The bytes are the
    same as `safetensors.torch.save`'s (sorted names, compact JSON header padded to 8 bytes).
    """
    target = DTYPES[dtype]
    tensors, seen = [], set()
    for name, t in sorted(model.state_dict().items()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            tensors.append((name, t, target))
    return safetensors_bytes(tensors)


def safetensors_bytes(
    tensors: list[tuple[str, torch.Tensor, torch.dtype]], metadata: dict[str, str] | None = None
) -> tuple[bytes, str]:
    """A safetensors file of (name, tensor, dtype) in name order, each tensor cast into its place."""
    tensors, prefix, header = _layout(tensors, metadata)
    buf = bytearray(len(prefix) + _body_size(header))
    buf[: len(prefix)] = prefix
    body = torch.frombuffer(buf, dtype=torch.uint8)[len(prefix) :]
    with torch.no_grad():
        for name, t, dtype in tensors:
            start, end = header[name]["data_offsets"]
            body[start:end].view(dtype).copy_(t.detach().reshape(-1))
    data = bytes(buf)
    return data, hashlib.sha256(data).hexdigest()


def safetensors_digest(
    tensors: list[tuple[str, torch.Tensor, torch.dtype]], metadata: dict[str, str] | None = None
) -> tuple[str, int]:
    """(sha256, size) of the file `safetensors_bytes` would make, without making it: one tensor at a
    time is hashed where it lies (a copy only for one in another dtype or on a GPU)."""
    tensors, prefix, header = _layout(tensors, metadata)
    hasher = hashlib.sha256(prefix)
    with torch.no_grad():
        for _, t, dtype in tensors:
            flat = t.detach().reshape(-1).to("cpu", dtype).contiguous()
            hasher.update(flat.view(torch.uint8).numpy())
    return hasher.hexdigest(), len(prefix) + _body_size(header)


def _layout(tensors, metadata: dict[str, str] | None):
    """The tensors in name order, the file's bytes before the first tensor, and its header."""
    tensors = sorted(tensors, key=lambda e: e[0])
    header: dict = {"__metadata__": {"format": "pt", **(metadata or {})}}
    size = 0
    for name, t, dtype in tensors:
        nbytes = t.numel() * torch.empty((), dtype=dtype).element_size()
        header[name] = {
            "dtype": _ST_DTYPES[dtype],
            "shape": list(t.shape),
            "data_offsets": [size, size + nbytes],
        }
        size += nbytes
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return tensors, len(head).to_bytes(8, "little") + head, header


def _body_size(header: dict) -> int:
    return max((h["data_offsets"][1] for k, h in header.items() if k != "__metadata__"), default=0)


def to_fp8(data: bytes) -> tuple[bytes, str]:
    """(bytes, sha256) of weights file `data` in block FP8: every 2-D weight but the embeddings and
    the head (the linear layers) as e4m3 in 128×128 blocks, DeepSeek-V3's weight tiles, with their
    float32 scales as `<name>_scale_inv` (the multiplier, as DeepSeek-V3's and vLLM's FP8 files name
    it); every other tensor as it was. A function of the bytes alone, so any holder of a version's
    file makes the same FP8 file, and its hash can be published with the version's."""
    from swarmgrpo.trainer.fp8 import TILE, quantize

    out = []
    for name, t in views(data).items():
        if t.dim() == 2 and name.endswith(".weight") and not any(s in name for s in NOT_FP8):
            q, scale = quantize(t, TILE, TILE)
            out += [(name, q, q.dtype), (name + SCALE_SUFFIX, scale, scale.dtype)]
        else:
            out.append((name, t, t.dtype))
    return safetensors_bytes(out)


def check_format(fmt: str) -> None:
    """Refuses a weights format other than "" (the transfer encoding) and FP8."""
    if fmt not in ("", FP8):
        raise WeightError(f"unknown weights format '{fmt}': ask for '' (the transfer encoding) or '{FP8}'")


def is_fp8(data: bytes) -> bool:
    """Whether `data` is a block-FP8 weights file (False for anything unreadable)."""
    try:
        return any(name.endswith(SCALE_SUFFIX) for name in _header(data))
    except (WeightError, AttributeError, UnicodeDecodeError):
        return False


def dequantized(tensors: dict[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """The tensors of a weights file with each block-FP8 weight multiplied back by its scales (in
    float32, one tensor at a time as it is read: a whole model of float32 copies is never held);
    tensors of any other file pass through unchanged."""
    if not any(name.endswith(SCALE_SUFFIX) for name in tensors):
        return tensors
    return _Dequantized(tensors)


class _Dequantized(Mapping):
    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors
        self.names = [n for n in tensors if not n.endswith(SCALE_SUFFIX)]

    def __getitem__(self, name: str) -> torch.Tensor:
        from swarmgrpo.trainer.fp8 import TILE, dequantize

        if name.endswith(SCALE_SUFFIX):
            raise KeyError(name)
        t, scale = self.tensors[name], self.tensors.get(name + SCALE_SUFFIX)
        return t if scale is None else dequantize(t, scale, TILE, TILE)

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def _header(data: bytes) -> dict:
    header = _full_header(data)
    header.pop("__metadata__", None)
    return header


def metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` strings of safetensors `data`."""
    return _full_header(data).get("__metadata__", {})


def _full_header(data: bytes) -> dict:
    if len(data) < 8:
        raise WeightError(f"weights of {len(data)} bytes are not a safetensors file")
    n = int.from_bytes(data[:8], "little")
    try:
        return json.loads(data[8 : 8 + n])
    except ValueError as e:
        raise WeightError(f"weights have an unreadable safetensors header: {e}") from None


def views(data: bytes) -> dict[str, torch.Tensor]:
    """The tensors of safetensors `data` as read-only views into it (no copy; don't write to them)."""
    header = _header(data)
    n = int.from_bytes(data[:8], "little")
    by_name = {v: k for k, v in _ST_DTYPES.items()}
    if any(h["dtype"] not in by_name for h in header.values()):
        return st_load(data)  # a dtype we do not write: let safetensors copy it
    out = {}
    for name, h in header.items():
        start, end = h["data_offsets"]
        raw = readonly_view(data, torch.uint8, 8 + n + start, end - start)
        out[name] = raw.view(by_name[h["dtype"]]).view(h["shape"])
    return out


def load_into(model: torch.nn.Module, data: bytes, expected_sha256: str = "") -> None:
    """Copy the weights in `data` into `model` in place (each tensor cast to the model's dtype)."""
    if expected_sha256 and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise WeightError("weights do not match the published sha256: refused (corrupt or altered transfer)")
    copy_weights(model, dequantized(views(data)))


def copy_weights(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    """Copy `tensors` (state-dict names) into `model` in place; refuses a set that is not this model's."""
    state = model.state_dict()
    loaded = {state[k].data_ptr() for k in tensors if k in state}  # a tied weight is sent once
    missing = [k for k in state if k not in tensors and state[k].data_ptr() not in loaded]
    if missing:
        raise WeightError(
            f"weights lack {len(missing)} tensors of this model (first: {missing[0]}); wrong model?"
        )
    extra = [k for k in tensors if k not in state]
    if extra:
        raise WeightError(
            f"weights carry {len(extra)} tensors this model lacks (first: {extra[0]}); wrong model?"
        )
    with torch.no_grad():
        for name, t in tensors.items():
            state[name].copy_(t)  # copy_ casts to the model's dtype


class WeightTransport(ABC):
    @abstractmethod
    def publish(self, version: int, data: bytes, sha256: str, fp8: tuple[bytes, str] | None = None) -> None:
        """Make `version` fetchable from this node: `data` is the file it holds (in the transfer
        encoding, or block FP8 if that is what it fetched); `fp8`, the FP8 file when already made."""

    @abstractmethod
    def fetch(self, version: int, sha256: str, holders, fmt: str = "", size: int = 0) -> bytes:
        """The bytes of `version` from one of `holders` (WeightHolder messages), checked against sha256;
        `fmt` FP8 asks for the block-FP8 file (`to_fp8`) instead of the transfer encoding; `size`, the
        file's size as the version's manifest gives it (0: not known)."""

    def close(self) -> None:
        return None


class FileWeights(WeightTransport):
    """Versions as files in a folder shared by the nodes: `<dir>/v<version>.safetensors`."""

    def __init__(self, folder: str | Path, keep: int = 4):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self._fetched: tuple[int, str] | None = None  # (version, sha256) of the file last read and checked

    def _path(self, version: int) -> Path:
        return self.folder / f"v{version:06d}.safetensors"

    def publish(self, version: int, data: bytes, sha256: str, fp8: tuple[bytes, str] | None = None) -> None:
        if self._fetched == (version, sha256) and self._path(version).exists():
            return  # this node just fetched that very file: writing it again would only cost time
        if is_fp8(data):
            return  # the folder holds the transfer encoding; FP8 files are made from it
        tmp = self._path(version).with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, self._path(version))
        for old in sorted(self.folder.glob("v*.safetensors"))[: -self.keep]:
            old.unlink(missing_ok=True)

    def fetch(self, version: int, sha256: str, holders, fmt: str = "", size: int = 0) -> bytes:
        """The folder holds the transfer encoding only: an FP8 file is made here from it (a shared
        folder saves no bytes by shipping FP8)."""
        path = self._path(version)
        if not path.exists():
            raise WeightError(f"{path} does not exist: is every node using the same --weights-dir?")
        check_format(fmt)
        data = path.read_bytes()
        if fmt == FP8:
            data, _ = to_fp8(data)
        if sha256 and hashlib.sha256(data).hexdigest() != sha256:
            raise WeightError(f"{path} does not match the published sha256" + (" (as FP8)" if fmt else ""))
        if sha256:
            self._fetched = (version, sha256)
        return data
