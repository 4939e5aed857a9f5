"""Wire codecs for gradient parts: a float32 vector in, bytes out, and back.

    data = encode("uint8", part)        # hivemind's serialized Tensor message, as bytes
    part = decode(data)                 # the codec is read from the message itself

Codecs (the run config's `compression`, see `allreduce`): `none` (float32), `fp16`, `uint8`
(hivemind's uniform 8-bit quantization: 256 buckets over ±3σ around the mean, each bucket sent as
the mean of its members). PowerSGD is not a codec but a reducer of its own (`powersgd`), which sends
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

CODECS = {"none": runtime_pb2.NONE, "fp16": runtime_pb2.FLOAT16, "uint8": runtime_pb2.UNIFORM_8BIT}


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
    part = part.detach().reshape(-1).to(torch.float32)
    kind = CODECS[codec]
    if kind == runtime_pb2.UNIFORM_8BIT and (part.numel() < 2 or bool(part.min() == part.max())):
        kind = runtime_pb2.NONE
    return serialization.serialize_torch_tensor(part, kind).SerializeToString()


def decode(data: bytes) -> torch.Tensor:
    message = runtime_pb2.Tensor()
    message.ParseFromString(data)
    return serialization.deserialize_torch_tensor(message).to(torch.float32)
