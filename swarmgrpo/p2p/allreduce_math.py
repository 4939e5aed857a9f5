"""The arithmetic of an all-reduce round (`allreduce`), apart from the network: encoding a part with
error feedback, an owner's weighted mean of one segment, decoding a mean, and the checks that
blame a member whose bytes do not decode to finite values (`AllReduceError.culprits`).

Error feedback (`ErrorFeedback`, for the lossy codecs): what a member's encodings lost in one round
is added to what it encodes in the next, so rounding errors are delayed, not dropped (the remedy of
1-bit SGD and EF-SGD; PowerSGD carries its own). A member keeps two residuals: that of the parts it
sends in the reduce phase (its whole vector), and that of the mean slice it owns and sends in the
gather phase. Both are per member and never travel, so every member still decodes the same bytes.
Over rounds the decoded means sum to the exact means up to the last residual. They are zeroed when
the round's layout (members, own index, length) changes, and after a failed round.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from swarmgrpo.p2p import compression


class AllReduceError(RuntimeError):
    """`missing`: the members the caller should go on without: those not heard from in time, and
    `culprits`, those whose parts this member refused (the message says why)."""

    def __init__(self, message: str, missing: Sequence[int] = (), culprits: Sequence[int] = ()):
        super().__init__(message)
        self.culprits = sorted(set(culprits))
        self.missing = sorted(set(missing) | set(culprits))


class ErrorFeedback:
    """One member's residuals, carried from round to round (see the module docstring)."""

    def __init__(self):
        self.layout: tuple[int, int, int] | None = None
        self.sent = torch.empty(0)
        self.mean = torch.empty(0)

    def prepare(self, n: int, me: int, numel: int) -> None:
        """Zero the residuals unless the last round had this layout."""
        if self.layout != (n, me, numel):
            self.layout = (n, me, numel)
            self.sent = torch.zeros(numel)
            self.mean = torch.zeros(numel // n + (me < numel % n))  # slice me of torch.tensor_split

    def reset(self) -> None:
        self.layout = None


def encode_with_feedback(
    codec: str, values: torch.Tensor, residual: torch.Tensor | None
) -> bytes | bytearray:
    """Encode `values`; with a residual, add it first and leave in it what the encoding lost."""
    if residual is None:
        return compression.encode_part(codec, values)
    values = values + residual
    data = compression.encode_part(codec, values)
    compression.decode_part_into(data, residual)
    residual.sub_(values).neg_()
    return data


def weighted_mean(codec, inputs, numel: int, residual: torch.Tensor | None, me: int) -> bytes | bytearray:
    """The owner's encoded weighted mean of one segment, summed in float32 in member order (so the
    arithmetic does not depend on arrival order; float64 sums, cast back, once made this the slowest
    local step of a float32 round). A member's part that does not decode to `numel` finite values
    fails the round naming it, and so does the one that takes a finite sum past float32."""
    total, weights, peaks = None, 0.0, []
    for i, (w, data) in enumerate(inputs):
        values = decoded(data, numel, f"member {i}'s part of slice {me}", i)
        peaks.append(w * peak(values, f"member {i}'s part of slice {me}", i))
        total = values * w if total is None else total.add_(values, alpha=w)
        weights += w
    mean = total.div_(weights)
    if not math.isfinite(peak(mean)):
        culprit = max(range(len(peaks)), key=peaks.__getitem__)
        raise AllReduceError(
            f"the weighted sum of slice {me} overflows float32: member {culprit}'s part is "
            f"{peaks[culprit]:.3g} at its largest (weight included)",
            culprits=[culprit],
        )
    return encode_with_feedback(codec, mean, residual)


def decode_mean(data: bytes | bytearray, out: torch.Tensor, key: tuple) -> None:
    """A mean from its owner into `out`, refused (naming the owner) unless it is finite."""
    owner = key[2]
    what = f"the mean of segment {key[4]} of slice {owner} from its owner"
    try:
        compression.decode_part_into(data, out)
    except Exception as e:  # the bytes are the owner's: whatever fails in decoding them is their fault
        raise AllReduceError(f"{what} does not decode: {e}", culprits=[owner]) from e
    peak(out, what, owner)


def decoded(data: bytes | bytearray, numel: int, what: str, sender: int) -> torch.Tensor:
    try:
        values = compression.decode_part(data)  # float32 parts: a view of the received bytes
    except Exception as e:  # the bytes are the sender's: whatever fails in decoding them is their fault
        raise AllReduceError(f"{what} does not decode: {e}", culprits=[sender]) from e
    if values.numel() != numel:
        raise AllReduceError(f"{what} has {values.numel()} values, not {numel}", culprits=[sender])
    return values


def peak(values: torch.Tensor, what: str = "", sender: int | None = None) -> float:
    """The largest magnitude in `values` (NaN if any is NaN); with `sender`, a part that is not all
    finite fails the round naming its sender."""
    if not values.numel():
        return 0.0
    low, high = torch.aminmax(values)  # NaN if any value is; 9x faster than vector_norm(inf) here
    largest = float(torch.maximum(-low, high))  # maximum, unlike max(), keeps a NaN
    if sender is not None and not math.isfinite(largest):
        raise AllReduceError(f"{what} holds non-finite values (NaN or infinity)", culprits=[sender])
    return largest
