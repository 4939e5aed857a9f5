"""Wire codecs for gradient parts: a float32 vector in, bytes out, and back.

    data = encode("uint8", part)        # hivemind's serialized Tensor message, as bytes
    part = decode(data)                 # the codec is read from the message itself

Codecs (the run config's `compression`, see `allreduce`):
- `none`: float32, the raw little-endian values (read back as a view of the received bytes: going
  through hivemind's serializer cost three extra copies of every part, a quarter of the fp32
  all-reduce's time on SmolLM2-sized vectors);
- `fp16`: float16 scaled per block of 1024 values by the block's largest magnitude (sent as float32,
  0.2% of the bytes). Plain float16 flushes values below 6e-8 to zero, and AdamW, which normalises
  every element, turns that into full-size differences: two workers of the tiny model took an
  update 42% (of its norm) away from one worker's with plain float16, 0.1% with scaling
  (tests/integration/test_gradient_workers.py). Per-block rather than per-part scaling (hivemind's
  MEANSTD_16BIT) because PowerSGD sends factors and whole vectors of very different sizes together;
- `uint8`: hivemind's uniform 8-bit quantization (256 buckets over ±3σ around the mean, each sent
  as the mean of its members). PowerSGD is not a codec but a reducer of its own (`powersgd`), which sends
its low-rank factors with `fp16`.

hivemind 1.1.12's 8-bit codecs cannot decode what they encode under NumPy 2: `extract` calls `int()`
on a one-element array, which NumPy 2 refuses ("only 0-dimensional arrays can be converted to Python
scalars"), and a hivemind averager that meets the error keeps its old values without a word.
`install_hivemind_fixes()` registers subclasses with a corrected `extract` in hivemind's codec table,
so our code and any hivemind averager in the process decode 8-bit parts again; this module calls it
on import. The quantizers also divide by zero on a constant part (standard deviation 0); `encode`
sends such a part (and an empty one) as float32, which costs nothing (it is rare and small).
"""

from __future__ import annotations

import numpy as np
import torch
from hivemind.compression import serialization
from hivemind.compression.quantization import Quantile8BitQuantization, Uniform8BitQuantization
from hivemind.proto import runtime_pb2

from swarmgrpo.node.buffers import raw_bytes, readonly_view

CODECS = {"none": None, "fp16": None, "uint8": runtime_pb2.UNIFORM_8BIT}
FP16_BLOCK = 1024
_HIVEMIND, _BLOCK_FP16, _RAW_F32 = b"h", b"b", b"f"  # first byte of every encoding: which format follows


class _NumPy2Extract:
    """hivemind's `Quantization.extract`, reading the codebook size as a scalar."""

    def extract(self, serialized_tensor: runtime_pb2.Tensor) -> torch.Tensor:
        buffer = serialized_tensor.buffer
        codebook_size = int(np.frombuffer(buffer, count=1, dtype=np.int64)[0])
        codebook = np.frombuffer(buffer, offset=8, count=codebook_size, dtype=self.codebook_dtype)
        quantized = np.frombuffer(buffer, offset=8 + codebook.nbytes, dtype=self.indices_dtype)
        indices = torch.as_tensor(quantized, dtype=torch.int64).reshape(tuple(serialized_tensor.size))
        lookup = torch.as_tensor(codebook).to(dtype=getattr(torch, serialized_tensor.dtype))
        return lookup[indices].requires_grad_(serialized_tensor.requires_grad)


class Uniform8Bit(_NumPy2Extract, Uniform8BitQuantization):
    pass


class Quantile8Bit(_NumPy2Extract, Quantile8BitQuantization):
    pass


def install_hivemind_fixes() -> None:
    table = serialization._BASE_COMPRESSION_TYPES
    if not isinstance(table["UNIFORM_8BIT"], Uniform8Bit):
        table["UNIFORM_8BIT"] = Uniform8Bit()
        table["QUANTILE_8BIT"] = Quantile8Bit()


install_hivemind_fixes()


def encode(codec: str, part: torch.Tensor) -> bytes:
    if codec not in CODECS:
        raise ValueError(f"unknown compression '{codec}': use one of {sorted(CODECS)} (or powersgd)")
    part = part.detach().reshape(-1).to(torch.float32).contiguous()
    if codec == "none":
        return b"".join([_RAW_F32, raw_bytes(part)])
    if codec == "fp16":
        return _encode_block_fp16(part)
    kind = CODECS[codec]
    if kind == runtime_pb2.UNIFORM_8BIT and (part.numel() < 2 or bool(part.min() == part.max())):
        kind = runtime_pb2.NONE
    return _HIVEMIND + serialization.serialize_torch_tensor(part, kind).SerializeToString()


def decode(data: bytes) -> torch.Tensor:
    kind = data[:1]
    if kind == _RAW_F32:
        return readonly_view(data, torch.float32, 1) if len(data) > 1 else torch.zeros(0)
    if kind == _BLOCK_FP16:
        return _decode_block_fp16(data)
    if kind != _HIVEMIND:
        raise ValueError(
            f"unknown gradient encoding {kind!r}: is the peer running another swarmgrpo version?"
        )
    message = runtime_pb2.Tensor()
    message.ParseFromString(data[1:])
    return serialization.deserialize_torch_tensor(message).to(torch.float32)


def _encode_block_fp16(x: torch.Tensor) -> bytes:
    n = x.numel()
    blocks = torch.nn.functional.pad(x, (0, -n % FP16_BLOCK)).view(-1, FP16_BLOCK)
    scale = blocks.abs().amax(1)
    scaled = (blocks / torch.where(scale > 0, scale, 1.0)[:, None]).to(torch.float16)
    values = scaled.reshape(-1)[:n].contiguous()
    return b"".join([_BLOCK_FP16, n.to_bytes(8, "little"), raw_bytes(scale), raw_bytes(values)])


def _decode_block_fp16(data: bytes) -> torch.Tensor:
    n = int.from_bytes(data[1:9], "little")
    if n == 0:
        return torch.zeros(0)
    n_blocks = -(-n // FP16_BLOCK)
    if len(data) != 9 + 4 * n_blocks + 2 * n:
        raise ValueError(f"fp16 part of {len(data)} bytes cannot hold the {n} values its header says")
    scale = readonly_view(data, torch.float32, 9, n_blocks)
    values = readonly_view(data, torch.float16, 9 + 4 * n_blocks).to(torch.float32)
    padded = torch.nn.functional.pad(values, (0, -n % FP16_BLOCK)).view(-1, FP16_BLOCK) * scale[:, None]
    return padded.reshape(-1)[:n]
