"""Wire codecs for gradient parts: a float32 vector in, bytes out, and back.

    data = encode_part("int8", part)    # bytes-like: a tag byte, then the codec's own layout
    part = decode_part(data)            # the codec is read from the data itself
    decode_part_into(data, out)         # or straight into a float32 tensor of the part's size

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
- `int8`: the same blocks, each scaled to ±127 and rounded to an integer (error at most half a step,
  1/254 of the block's largest magnitude): a quarter of float32's bytes, like `uint8`, with errors
  bounded per block instead of clipped at ±3σ, and far less CPU time than hivemind's quantizer
  (67 M values on one core: encode 0.28 s against 1.2 s, decode 0.03 s against 0.7 s);
- `fp8`: the same blocks, each scaled so its largest magnitude is 448 and stored as float8 e4m3
  (`torch.float8_e4m3fn`, round to nearest even): the bytes of `int8`, but every value keeps ~6% of
  relative precision down to 2^-15 of its block's largest (subnormals to 2^-17) where `int8` sends
  everything below 1/254 of it as 0. AdamW normalises each element, so a small gradient matters as
  much as a large one; measured, `int8` slowed learning even with error feedback, where this one
  keeps up with float32 (benchmarks/results/compression_parity.md). 67 M values on one core:
  encode 0.51 s, decode 0.16 s (int8: 0.46 s, 0.08 s in the same run);
- `uint8`: hivemind's uniform 8-bit quantization (256 buckets over ±3σ around the mean, each sent
  as the mean of its members). PowerSGD is not a codec but a reducer of its own (`powersgd`), which sends
its low-rank factors with `fp16`.

hivemind 1.1.12's 8-bit codecs cannot decode what they encode under NumPy 2: `extract` calls `int()`
on a one-element array, which NumPy 2 refuses ("only 0-dimensional arrays can be converted to Python
scalars"), and a hivemind averager that meets the error keeps its old values without a word.
`install_hivemind_fixes()` registers subclasses with a corrected `extract` in hivemind's codec table,
so our code and any hivemind averager in the process decode 8-bit parts again; this module calls it
on import. The quantizers also divide by zero on a constant part (standard deviation 0); `encode_part`
sends such a part (and an empty one) as float32, which costs nothing (it is rare and small).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from hivemind.compression import serialization
from hivemind.compression.quantization import Quantile8BitQuantization, Uniform8BitQuantization
from hivemind.proto import runtime_pb2

from swarmgrpo.p2p.buffers import raw_bytes, readonly_view
from swarmgrpo.trainer.config import GRAD_COMPRESSIONS

# The run config names them (`grad_compression`); PowerSGD is a reducer of its own, not a codec.
CODECS = tuple(c for c in GRAD_COMPRESSIONS if c != "powersgd")
BLOCK_VALUES = 1024  # values per scale, for fp16, int8 and fp8
CHUNK_VALUES = 256 * BLOCK_VALUES  # block codecs work a chunk at a time (1 MB of float32 temporaries)
# First byte of every encoding: which format follows (the block codecs' tags are in _BLOCK_CODECS).
_HIVEMIND, _RAW_F32 = b"h", b"f"
# hivemind kinds `encode_part` makes; a part of another kind (bitsandbytes, 16-bit, ...) is refused.
_HIVEMIND_KINDS = (runtime_pb2.UNIFORM_8BIT, runtime_pb2.NONE)
_PROTOBUF_FIELDS_BYTES = 64  # a hivemind Tensor message's fields around its buffer (21 for 2M values)


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


def encode_part(codec: str, part: torch.Tensor) -> bytes | bytearray:
    if codec not in CODECS:
        raise ValueError(f"unknown compression '{codec}': use one of {sorted(CODECS)} (or powersgd)")
    part = part.detach().reshape(-1).to(torch.float32).contiguous()
    if codec == "none":
        return b"".join([_RAW_F32, raw_bytes(part)])
    if codec in _BLOCK_CODECS:
        return _BLOCK_CODECS[codec].encode(part)
    kind = runtime_pb2.UNIFORM_8BIT  # uint8
    if part.numel() < 2 or bool(part.min() == part.max()):
        kind = runtime_pb2.NONE
    return _HIVEMIND + serialization.serialize_torch_tensor(part, kind).SerializeToString()


def encoded_size(codec: str, n: int) -> tuple[int, int]:
    """The fewest and most bytes `encode_part(codec, part)` makes of a part of `n` values: a receiver
    refuses a part announced with any other size before it takes memory for it. Exact for every
    codec but `uint8`, whose hivemind message is either a codebook and a byte per value or, for a
    constant part, float32 (see `encode_part`), framed by a few protobuf fields."""
    if codec == "none":
        return 1 + 4 * n, 1 + 4 * n
    if codec in _BLOCK_CODECS:
        size = 9 + 4 * -(-n // BLOCK_VALUES) + _BLOCK_CODECS[codec].dtype.itemsize * n
        return size, size
    if codec == "uint8":
        quantized, constant = n + 8 + 4 * 256, 4 * n
        return 1 + min(quantized, constant), 1 + max(quantized, constant) + _PROTOBUF_FIELDS_BYTES
    raise ValueError(f"unknown compression '{codec}': use one of {sorted(CODECS)}")


def decode_part(data: bytes | bytearray) -> torch.Tensor:
    """The float32 values of an encoded part (for a raw float32 part, a read-only view of `data`)."""
    kind = bytes(data[:1])
    if kind == _RAW_F32:
        return readonly_view(data, torch.float32, 1) if len(data) > 1 else torch.zeros(0)
    if kind in _BY_TAG:
        out = torch.empty(int.from_bytes(data[1:9], "little"))
        _BY_TAG[kind].decode_into(data, out)
        return out
    return _decode_hivemind(data)


def decode_part_into(data: bytes | bytearray, out: torch.Tensor) -> None:
    """Write an encoded part's values into `out` (float32, contiguous, as many values as the part)."""
    kind = bytes(data[:1])
    if kind in _BY_TAG:
        _BY_TAG[kind].decode_into(data, out)
        return
    values = decode_part(data)
    _check_size(values.numel(), out)
    out.copy_(values)


def _decode_hivemind(data: bytes | bytearray) -> torch.Tensor:
    kind = bytes(data[:1])
    if kind != _HIVEMIND:
        raise ValueError(
            f"unknown gradient encoding {kind!r}: is the peer running another swarmgrpo version?"
        )
    message = runtime_pb2.Tensor()
    message.ParseFromString(bytes(data[1:]))
    if message.compression not in _HIVEMIND_KINDS:
        raise ValueError(
            f"hivemind encoding {runtime_pb2.CompressionType.Name(message.compression)} is not one that "
            "swarmgrpo sends (uint8 parts are UNIFORM_8BIT or NONE)"
        )
    return serialization.deserialize_torch_tensor(message).to(torch.float32)


@dataclass(frozen=True)
class _BlockCodec:
    """Values scaled per block of BLOCK_VALUES so the block's largest magnitude is `top`, then stored
    as `dtype` (rounded to integers first when `integer`; a float dtype's cast rounds to nearest).

    Layout: tag (1 byte), n (8 bytes, little-endian), one float32 scale per block, n values. Encoding
    writes straight into the output buffer and decoding straight into the caller's tensor, a chunk of
    CHUNK_VALUES at a time: two passes over the input (largest magnitudes, then scale-and-store) and
    one over the output, where whole-vector torch expressions made about eight."""

    tag: bytes
    dtype: torch.dtype
    top: float
    integer: bool = False

    def encode(self, x: torch.Tensor) -> bytearray:
        n, itemsize = x.numel(), self.dtype.itemsize
        n_blocks = -(-n // BLOCK_VALUES)
        out = bytearray(9 + 4 * n_blocks + itemsize * n)
        out[:9] = self.tag + n.to_bytes(8, "little")
        if n == 0:
            return out
        scale = torch.frombuffer(out, dtype=torch.float32, offset=9, count=n_blocks)
        values = torch.frombuffer(out, dtype=self.dtype, offset=9 + 4 * n_blocks, count=n)
        for s in range(0, n, CHUNK_VALUES):
            xs, b = x[s : s + CHUNK_VALUES], s // BLOCK_VALUES
            full = xs.numel() // BLOCK_VALUES
            pieces = (
                [(xs[: full * BLOCK_VALUES].view(full, BLOCK_VALUES), slice(b, b + full))] if full else []
            )
            if xs.numel() % BLOCK_VALUES:  # the vector's last, shorter block
                pieces.append((xs[full * BLOCK_VALUES :].view(1, -1), slice(b + full, b + full + 1)))
            for blocks, rows in pieces:
                block_scale = scale[rows]
                torch.linalg.vector_norm(blocks, ord=float("inf"), dim=1, out=block_scale)
                step = torch.where(block_scale > 0, block_scale / self.top, 1.0)
                scaled = blocks / step[:, None]  # a division, correctly rounded (a reciprocal is not)
                if self.integer:
                    scaled.round_()
                first = rows.start * BLOCK_VALUES
                values[first : first + blocks.numel()].view_as(blocks).copy_(scaled)
        return out

    def decode_into(self, data: bytes | bytearray, out: torch.Tensor) -> None:
        n = int.from_bytes(data[1:9], "little")
        n_blocks = -(-n // BLOCK_VALUES)
        if len(data) != 9 + 4 * n_blocks + self.dtype.itemsize * n:
            raise ValueError(
                f"{self.dtype} part of {len(data)} bytes cannot hold the {n} values its header says"
            )
        _check_size(n, out)
        if n == 0:
            return
        scale = readonly_view(data, torch.float32, 9, n_blocks)
        if self.top != 1.0:
            scale = scale / self.top
        values = readonly_view(data, self.dtype, 9 + 4 * n_blocks)
        full = n // BLOCK_VALUES
        for b in range(0, full, CHUNK_VALUES // BLOCK_VALUES):
            e = min(b + CHUNK_VALUES // BLOCK_VALUES, full)
            span = slice(b * BLOCK_VALUES, e * BLOCK_VALUES)
            self._scale_into(
                values[span].view(-1, BLOCK_VALUES), scale[b:e, None], out[span].view(-1, BLOCK_VALUES)
            )
        if n % BLOCK_VALUES:
            # scale[full:] not scale[full]: a 0-d tensor would not promote float16 values to float32
            self._scale_into(values[full * BLOCK_VALUES :], scale[full:], out[full * BLOCK_VALUES :])

    def _scale_into(self, values: torch.Tensor, scale: torch.Tensor, out: torch.Tensor) -> None:
        if self.dtype == torch.float8_e4m3fn:
            # float8 does not promote in mul, and its cast to float32 runs ~7 ns a value on this CPU;
            # a lookup in the table of all 256 codes takes a quarter of that
            codes = values.reshape(-1).view(torch.uint8).to(torch.int32)
            torch.index_select(_E4M3_VALUES, 0, codes, out=out.view(-1))
            out.mul_(scale)
        else:
            torch.mul(values, scale, out=out)


_E4M3_VALUES = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).to(torch.float32)


_BLOCK_CODECS = {
    "fp16": _BlockCodec(b"b", torch.float16, 1.0),
    "int8": _BlockCodec(b"i", torch.int8, 127.0, integer=True),
    "fp8": _BlockCodec(b"8", torch.float8_e4m3fn, 448.0),
}
_BY_TAG = {c.tag: c for c in _BLOCK_CODECS.values()}


def _check_size(n: int, out: torch.Tensor) -> None:
    if n != out.numel():
        raise ValueError(f"a gradient part of {n} values arrived where {out.numel()} were expected")
