"""FP8 linear layers with fine-grained scaling (DeepSeek-V3's recipe), and the reference that emulates
them on any device.

The quantisation, for `y = x @ w.T` (x: [N, K] tokens × input features, w: [M, K]):

- forward: x in 1×128 tiles (one scale per token per 128 input features), w in 128×128 blocks;
- input gradient `dx = dy @ w`: dy in 1×128 tiles along M, w in the same 128×128 blocks;
- weight gradient `dw = dy.T @ x`: both operands contracted over tokens, so x and dy in 128×1 tiles
  (one scale per feature per 128 tokens);
- every tile's scale is its largest magnitude / 448 (e4m3's largest finite value), kept in float32;
  the values are rounded to `torch.float8_e4m3fn`; products are accumulated in float32; the master
  weights and the optimizer stay in their own dtype (bf16 or fp32).

Error bound (what the tests assert). e4m3 keeps 3 mantissa bits: rounding to nearest moves a value
by at most u = 2^-4 of itself, or, below e4m3's smallest normal (2^-6 after scaling), by at most
2^-10 of the tile's scale. So each element of a product moves by at most
    (2u + u²) · (|A| @ |B|)  +  the subnormal terms,
elementwise, whatever the data; on Gaussian data the relative Frobenius error is ~0.04 (bf16's is
~0.003), measured in `tests/unit/test_fp8.py`.

`quantize` and `emulated_matmul` are the reference: they round exactly as the FP8 kernels do and
multiply in float32, on any device, so the numerics are tested where there is no FP8 hardware (CI).
A GPU kernel for capable devices (compute capability >= 8.9) plugs in as another `backend` and is
checked against this reference; none is shipped yet (see the README's status of issue 5).
"""

from __future__ import annotations

import torch

TILE = 128
E4M3_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max
UNIT_ROUNDOFF = 2.0**-4  # relative rounding error of a normal e4m3 value
SUBNORMAL_STEP = 2.0**-9  # spacing of e4m3's subnormals, in units of the tile's scale


def _tiles(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """x [R, C] padded with zeros to whole tiles, viewed as [R/rows, rows, C/cols, cols]."""
    r, c = x.shape
    padded = torch.nn.functional.pad(x, (0, -c % cols, 0, -r % rows))
    return padded.view(padded.shape[0] // rows, rows, padded.shape[1] // cols, cols)


def quantize(x: torch.Tensor, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [R, C] in tiles of rows × cols: e4m3 values [R, C] and float32 scales [R/rows, C/cols]
    (rounded up), each tile's largest magnitude mapped to 448. An all-zero tile gets scale 1."""
    if x.dim() != 2:
        raise ValueError(f"quantize takes a matrix, got shape {tuple(x.shape)}")
    tiles = _tiles(x.float(), rows, cols)
    amax = tiles.abs().amax(dim=(1, 3))
    scale = torch.where(amax > 0, amax / E4M3_MAX, 1.0)
    q = (tiles / scale[:, None, :, None]).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    r, c = x.shape
    return q.view(tiles.shape[0] * rows, -1)[:r, :c], scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    r, c = q.shape
    tiles = _tiles(q.float(), rows, cols)
    return (tiles * scale[:, None, :, None]).view(tiles.shape[0] * rows, -1)[:r, :c]


def fake_quantize(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """x rounded as FP8 in tiles of rows × cols, back in float32."""
    return dequantize(*quantize(x, rows, cols), rows, cols)


def emulated_matmul(a: torch.Tensor, a_tile: tuple[int, int], b: torch.Tensor, b_tile: tuple[int, int]):
    """a @ b with both operands rounded as FP8 in their tiles and the products summed in float32."""
    return fake_quantize(a, *a_tile) @ fake_quantize(b, *b_tile)


class _FP8Linear(torch.autograd.Function):
    """y = x @ w.T with DeepSeek-V3's tiles in forward and in both backward products (emulated)."""

    @staticmethod
    def forward(ctx, x2d: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x2d, weight)
        # x: 1×128 along K; w: 128×128 blocks (w.T's tiles are the transposed blocks).
        y = emulated_matmul(x2d, (1, TILE), weight.t(), (TILE, TILE))
        return y.to(x2d.dtype)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x2d, weight = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:  # dy: 1×128 along M; w: its 128×128 blocks
            grad_x = emulated_matmul(grad_y, (1, TILE), weight, (TILE, TILE)).to(x2d.dtype)
        if ctx.needs_input_grad[1]:  # contracted over tokens: dy.T and x in tiles of 128 tokens
            grad_w = emulated_matmul(grad_y.t(), (1, TILE), x2d, (TILE, 1)).to(weight.dtype)
        return grad_x, grad_w


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear` with FP8 products (emulated); x [..., K], weight [M, K]."""
    y = _FP8Linear.apply(x.reshape(-1, x.shape[-1]), weight).view(*x.shape[:-1], weight.shape[0])
    return y + bias if bias is not None else y


class FP8Linear(torch.nn.Linear):
    """A `torch.nn.Linear` whose products run in FP8 (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp8_linear(x, self.weight, self.bias)


def use_fp8_linears(model: torch.nn.Module, skip: tuple[str, ...] = ("lm_head",)) -> int:
    """Turn the model's `nn.Linear` layers into `FP8Linear` in place (same parameters), except those
    whose name ends with one of `skip` (the head stays in high precision, as in DeepSeek-V3).
    Returns how many changed."""
    changed = 0
    for name, module in model.named_modules():
        if type(module) is torch.nn.Linear and not name.endswith(skip):
            module.__class__ = FP8Linear
            changed += 1
    return changed
