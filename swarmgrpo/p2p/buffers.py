"""Tensors over received bytes and bytes of tensors, without copies (weights and gradient parts)."""

from __future__ import annotations

import warnings

import torch


def readonly_view(
    data: bytes | bytearray, dtype: torch.dtype, offset: int = 0, count: int = -1
) -> torch.Tensor:
    """`count` values of `dtype` at byte `offset` of `data`, as a view (no copy). Over `bytes` the
    view is read-only memory: callers only read from it (torch warns about that; the warning is
    silenced here, where it is known to hold)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.frombuffer(data, dtype=dtype, offset=offset, count=count)


def raw_bytes(t: torch.Tensor) -> memoryview:
    """A contiguous CPU tensor's bytes, little-endian (as on every platform torch runs on), no copy."""
    return memoryview(t.numpy()).cast("B")
