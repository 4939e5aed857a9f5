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

Two backends compute the same products (`BACKENDS`):

- `emulated`, the reference: `quantize` and `emulated_matmul` round exactly as the FP8 kernels do and
  multiply in float32 on any device, so the numerics are tested where there is no FP8 hardware (CI);
- `scaled_mm`: real e4m3 operands through PyTorch's scaled matmul. On Hopper (compute capability 9.0)
  one call takes the tiles as they are (`BlockWise1x128` / `BlockWise128x128` scales). Elsewhere
  (CPU, Ada, Blackwell) the contraction runs in 128-wide slices, each a row-wise scaled matmul whose
  row and column scales are that slice's tile scales, summed in float32. Both give the reference's
  result up to the order of float32 sums; on Ada and Blackwell, whose row-wise kernels return bf16
  only, each slice's sum is also rounded to bf16 (2^-9 of it, next to FP8's 2^-3 bound). The tests
  compare the backends on CPU; the `gpu` tests check the CUDA paths against the reference. On CPU the
  slices are slower than plain matmuls: that path is for tests, a CPU trainer keeps its float32 or
  bf16 linears (`TrainConfig.fp8 = "auto"`).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

TILE = 128
E4M3_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max
UNIT_ROUNDOFF = 2.0**-4  # relative rounding error of a normal e4m3 value
SUBNORMAL_STEP = 2.0**-9  # spacing of e4m3's subnormals, in units of the tile's scale
BACKENDS = ("emulated", "scaled_mm")
BLOCKWISE_CAPABILITY = (9, 0)  # PyTorch's BlockWise1x128 / 128x128 scaled matmul runs on Hopper only


def _pad(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """x [R, C] with zero rows and columns added up to multiples of rows and cols, row-major (F.pad
    keeps a transposed input's strides, and the FP8 kernels want row-major operands)."""
    return F.pad(x, (0, -x.shape[1] % cols, 0, -x.shape[0] % rows)).contiguous()


def _tiles(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """x [R, C] padded with zeros to whole tiles, viewed as [R/rows, rows, C/cols, cols]."""
    padded = _pad(x, rows, cols)
    return padded.view(padded.shape[0] // rows, rows, padded.shape[1] // cols, cols)


def quantize(x: torch.Tensor, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [R, C] in tiles of rows × cols: e4m3 values [R, C] (row-major) and float32 scales
    [R/rows, C/cols] (rounded up), each tile's largest magnitude mapped to 448. An all-zero tile gets
    scale 1."""
    if x.dim() != 2:
        raise ValueError(f"quantize takes a matrix, got shape {tuple(x.shape)}")
    tiles = _tiles(x.float(), rows, cols)
    amax = tiles.abs().amax(dim=(1, 3))
    scale = torch.where(amax > 0, amax / E4M3_MAX, 1.0)
    q = (tiles / scale[:, None, :, None]).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    r, c = x.shape
    return q.view(tiles.shape[0] * rows, -1)[:r, :c].contiguous(), scale


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


def _slice_dtype(device: torch.device) -> torch.dtype:
    """What a row-wise scaled matmul may return: float32 on CPU and on Hopper with cuBLAS's block
    scaling; bf16 on other GPUs, whose kernels take no other (each slice's sum is then rounded to
    bf16 before the float32 total)."""
    if device.type == "cuda" and not _uses_blockwise(device):
        return torch.bfloat16
    return torch.float32


def _sliced_scaled_mm(qa, sa, qbt, sbt, bt_rows: int) -> torch.Tensor:
    """sum over 128-wide slices k of (qa[:, k] · sa[:, k]) @ (qbt[:, k] · sbt[:, k]).T, each slice one
    row-wise scaled matmul (scales per row of a, per row of bt), summed in float32."""
    out_dtype = _slice_dtype(qa.device)
    out = None
    for k in range(sa.shape[1]):
        cols = slice(k * TILE, (k + 1) * TILE)
        scale_bt = sbt[:, k].repeat_interleave(bt_rows)[: qbt.shape[0]]
        part = torch._scaled_mm(
            qa[:, cols].contiguous(),  # row-major with its own width: a kernel may take K as the stride
            qbt[:, cols].contiguous().t(),  # column-major, as the kernels want their second operand
            scale_a=sa[:, k : k + 1].contiguous(),
            scale_b=scale_bt[None, :].contiguous(),
            out_dtype=out_dtype,
        ).float()
        out = part if out is None else out.add_(part)
    return out


def _blockwise_scaled_mm(qa, sa, qbt, sbt, bt_rows: int) -> torch.Tensor:
    """One Hopper scaled matmul with the tiles as they are: 1×128 scales outer-dim-major, 128×128
    scales transposed with their contraction blocks padded to a multiple of 4."""
    if bt_rows == TILE:  # weight blocks
        recipe_b, scale_b = F.ScalingType.BlockWise128x128, F.pad(sbt, (0, -sbt.shape[1] % 4)).t()
    else:  # activations contracted over tokens
        recipe_b, scale_b = F.ScalingType.BlockWise1x128, sbt.t().contiguous().t()
    return F.scaled_mm(
        qa,
        qbt.t(),
        sa.t().contiguous().t(),
        F.ScalingType.BlockWise1x128,
        scale_b,
        recipe_b,
        output_dtype=torch.float32,
    )


_blockwise_failed = False  # set once a device refused the one-call path; the slices are used after


def _uses_blockwise(device: torch.device) -> bool:
    return (
        device.type == "cuda"
        and not _blockwise_failed
        and torch.cuda.get_device_capability(device) == BLOCKWISE_CAPABILITY
    )


def scaled_operands(a: torch.Tensor, bt: torch.Tensor, bt_rows: int):
    """(qa, sa, qbt, sbt): the e4m3 operands of `scaled_matmul` and their scales. Zero padding leaves
    every tile's scale and every sum as it was; the kernels want dimensions in multiples of 16 (of
    128 for the one-call path)."""
    align = TILE if _uses_blockwise(a.device) else 16
    return (*quantize(_pad(a, align, TILE), 1, TILE), *quantize(_pad(bt, align, TILE), bt_rows, TILE))


def scaled_product(qa, sa, qbt, sbt, bt_rows: int) -> torch.Tensor:
    """The float32 product of `scaled_operands` (padded): one call on Hopper, else the slices."""
    global _blockwise_failed
    if _uses_blockwise(qa.device):
        try:
            return _blockwise_scaled_mm(qa, sa, qbt, sbt, bt_rows)
        except torch.cuda.OutOfMemoryError:
            raise
        except RuntimeError as e:  # a cuBLAS without block scaling: the slices, in bf16 slice sums
            _blockwise_failed = True
            log.warning("FP8: the one-call block-scaled matmul failed (%s); using 128-wide slices", e)
    return _sliced_scaled_mm(qa, sa, qbt, sbt, bt_rows)


def scaled_matmul(a: torch.Tensor, bt: torch.Tensor, bt_rows: int) -> torch.Tensor:
    """a @ bt.T in FP8 through PyTorch's scaled matmul, float32 out. Both operands are contracted along
    their last dimension: a [R, C] in 1×128 tiles, bt [S, C] in bt_rows×128 tiles (128: weight blocks;
    1: activations contracted over tokens). Equals `emulated_matmul(a, (1, 128), bt.T, (128, bt_rows))`
    up to the order of float32 sums."""
    return scaled_product(*scaled_operands(a, bt, bt_rows), bt_rows)[: a.shape[0], : bt.shape[0]]


def _matmul(backend: str, a: torch.Tensor, bt: torch.Tensor, bt_rows: int) -> torch.Tensor:
    """a @ bt.T, a in 1×128 tiles and bt in bt_rows×128 tiles, by `backend`."""
    if backend == "scaled_mm":
        return scaled_matmul(a, bt, bt_rows)
    return emulated_matmul(a, (1, TILE), bt.t(), (TILE, bt_rows))


class _FP8Linear(torch.autograd.Function):
    """y = x @ w.T with DeepSeek-V3's tiles in forward and in both backward products."""

    @staticmethod
    def forward(ctx, x2d: torch.Tensor, weight: torch.Tensor, backend: str) -> torch.Tensor:
        ctx.save_for_backward(x2d, weight)
        ctx.backend = backend
        # x: 1×128 along K; w: 128×128 blocks.
        return _matmul(backend, x2d, weight, TILE).to(x2d.dtype)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x2d, weight = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:  # dy: 1×128 along M; w.T: w's 128×128 blocks, transposed
            grad_x = _matmul(ctx.backend, grad_y, weight.t(), TILE).to(x2d.dtype)
        if ctx.needs_input_grad[1]:  # contracted over tokens: dy.T and x.T in tiles of 128 tokens
            grad_w = _matmul(ctx.backend, grad_y.t(), x2d.t(), 1).to(weight.dtype)
        return grad_x, grad_w, None


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown FP8 backend '{backend}': choose one of {', '.join(BACKENDS)}")


def fp8_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, backend: str = "emulated"
) -> torch.Tensor:
    """`F.linear` with FP8 products; x [..., K], weight [M, K]; `backend` one of `BACKENDS`."""
    _check_backend(backend)
    y = _FP8Linear.apply(x.reshape(-1, x.shape[-1]), weight, backend).view(*x.shape[:-1], weight.shape[0])
    return y + bias if bias is not None else y


class FP8Linear(torch.nn.Linear):
    """A `torch.nn.Linear` whose products run in FP8 (see the module docstring)."""

    fp8_backend = "emulated"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp8_linear(x, self.weight, self.bias, self.fp8_backend)


def use_fp8_linears(
    model: torch.nn.Module, skip: tuple[str, ...] = ("lm_head",), backend: str = "emulated"
) -> int:
    """Turn the model's `nn.Linear` layers into `FP8Linear` in place (same parameters), except those
    whose name ends with one of `skip` (the head stays in high precision, as in DeepSeek-V3).
    Returns how many changed."""
    _check_backend(backend)
    changed = 0
    for name, module in model.named_modules():
        if type(module) is torch.nn.Linear and not name.endswith(skip):
            module.__class__ = FP8Linear
            module.fp8_backend = backend
            changed += 1
    return changed


def fp8_training_pays(device: torch.device) -> bool:
    """Whether FP8 training is the default (`fp8 = "auto"`) on `device`: where the one-call
    block-scaled matmul runs (Hopper). On Ada and Blackwell the 128-wide slices, each adding a full
    float32 product, are likely slower than bf16 (not measured yet); `fp8 = "on"` still uses them."""
    return _uses_blockwise(device)
