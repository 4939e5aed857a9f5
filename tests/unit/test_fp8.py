"""FP8 with fine-grained scaling, emulated: tiles and scales, the error bound, and the layer's gradients."""

import pytest
import torch

from swarmgrpo.trainer import fp8 as fp8_module
from swarmgrpo.trainer.fp8 import (
    BLOCKWISE_CAPABILITY,
    E4M3_MAX,
    TILE,
    UNIT_ROUNDOFF,
    FP8Linear,
    dequantize,
    emulated_matmul,
    fake_quantize,
    fp8_linear,
    quantize,
    scaled_matmul,
    use_fp8_linears,
)

U = UNIT_ROUNDOFF


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _subnormal_error(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Per element: the largest rounding error below e4m3's normals, half a subnormal step of its tile."""
    _, scale = quantize(x, rows, cols)
    return 2.0**-10 * dequantize(torch.ones_like(x), scale, rows, cols)


def matmul_bound(a, a_tile, b, b_tile) -> torch.Tensor:
    """|fp8(a) @ fp8(b) - a @ b| elementwise, at most (the module docstring's derivation, with each
    operand's error u·|x| + the subnormal term, and both float32 accumulations)."""
    ea, eb = _subnormal_error(a, *a_tile), _subnormal_error(b, *b_tile)
    abs_ab = a.abs() @ b.abs()
    k = a.shape[1]
    return (
        (2 * U + U * U) * abs_ab
        + (1 + U) * (ea @ b.abs() + a.abs() @ eb)
        + ea @ eb
        + 2 * k * 2.0**-24 * (1 + U) ** 2 * abs_ab
    )


def test_each_tile_gets_its_own_scale_and_its_largest_value_maps_to_448():
    x = torch.randn(3, 300, generator=_gen())  # 3 rows, tiles of 128 + 128 + 44 columns
    x[1, 130] = 1000.0  # row 1's second tile
    q, scale = quantize(x, 1, TILE)
    assert q.dtype == torch.float8_e4m3fn and q.shape == x.shape and scale.shape == (3, 3)
    assert scale[1, 1] == pytest.approx(1000.0 / E4M3_MAX)
    assert scale[1, 0] == pytest.approx(x[1, :128].abs().max().item() / E4M3_MAX)
    assert q[1, 130].float() == E4M3_MAX
    back = dequantize(q, scale, 1, TILE)
    assert back[1, 130] == pytest.approx(1000.0)


def test_rounding_error_is_within_the_unit_roundoff_or_half_a_subnormal_step():
    x = torch.randn(256, 384, generator=_gen(1)) * torch.logspace(-8, 1, 384)  # columns of every size
    for tile in [(1, TILE), (TILE, 1), (TILE, TILE)]:
        err = (fake_quantize(x, *tile) - x).abs()
        assert (err <= U * x.abs() + _subnormal_error(x, *tile)).all(), tile


def test_a_zero_tile_and_ragged_edges_round_trip():
    x = torch.zeros(130, 129)
    x[129, 128] = 3.0
    q, scale = quantize(x, TILE, TILE)
    assert scale.shape == (2, 2) and scale[0, 0] == 1.0
    assert torch.equal(dequantize(q, scale, TILE, TILE), x)
    with pytest.raises(ValueError, match="takes a matrix"):
        quantize(torch.ones(2, 2, 2), 1, TILE)


def test_fp8_products_stay_within_the_derived_bound_and_really_round():
    a = torch.randn(300, 576, generator=_gen(2))
    b = torch.randn(576, 1536, generator=_gen(3)) * 0.05
    exact = a @ b
    fp8 = emulated_matmul(a, (1, TILE), b, (TILE, TILE))
    assert ((fp8 - exact).abs() <= matmul_bound(a, (1, TILE), b, (TILE, TILE))).all()
    rel = ((fp8 - exact).norm() / exact.norm()).item()
    bf16 = ((a.bfloat16() @ b.bfloat16()).float() - exact).norm() / exact.norm()
    # Measured 0.037 vs bf16's 0.003; the expected value for Gaussian data is ~sqrt(2) · 0.026.
    assert 0.02 < rel < 0.06, rel
    assert bf16 < 0.01


def test_fp8_linear_gradients_use_the_backward_tiles_and_stay_within_the_bound():
    layer = torch.nn.Linear(256, 384, bias=True)
    torch.nn.init.normal_(layer.weight, std=0.05, generator=_gen(4))
    fp8 = FP8Linear(256, 384, bias=True)
    fp8.load_state_dict(layer.state_dict())
    x = torch.randn(2, 150, 256, generator=_gen(5))  # 300 tokens: tiles of 128 + 128 + 44
    dy = torch.randn(2, 150, 384, generator=_gen(6))
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    (layer(xs[0]) * dy).sum().backward()
    (fp8(xs[1]) * dy).sum().backward()
    x2, dy2, w = x.reshape(-1, 256), dy.reshape(-1, 384), layer.weight.detach()
    # Exactly the products the module docstring names, with their tiles...
    torch.testing.assert_close(
        xs[1].grad.reshape(-1, 256), emulated_matmul(dy2, (1, TILE), w, (TILE, TILE)), rtol=0, atol=0
    )
    torch.testing.assert_close(
        fp8.weight.grad, emulated_matmul(dy2.t(), (1, TILE), x2, (TILE, 1)), rtol=0, atol=0
    )
    # ...so within the bound of the exact gradients; the bias is not quantised.
    gx_err = (xs[1].grad - xs[0].grad).abs().reshape(-1, 256)
    assert (gx_err <= matmul_bound(dy2, (1, TILE), w, (TILE, TILE))).all()
    gw_err = (fp8.weight.grad - layer.weight.grad).abs()
    assert (gw_err <= matmul_bound(dy2.t(), (1, TILE), x2, (TILE, 1))).all()
    torch.testing.assert_close(fp8.bias.grad, layer.bias.grad)


def test_a_model_s_linears_turn_fp8_except_the_head_and_its_loss_stays_close():
    from swarmgrpo.trainer.models import load_model

    model, _ = load_model("tiny", seed=0)
    ids = torch.randint(0, model.config.vocab_size, (2, 40), generator=_gen(7))
    with torch.no_grad():
        base = model(ids, labels=ids).loss
    n_linear = sum(type(m) is torch.nn.Linear for m in model.modules())
    assert use_fp8_linears(model) == n_linear - 1  # all but lm_head
    assert type(model.lm_head) is torch.nn.Linear
    with torch.no_grad():
        fp8 = model(ids, labels=ids).loss
    assert fp8 != base and abs(fp8 - base) / base < 0.02, (fp8, base)


def sum_order_bound(a, bt, bt_rows: int) -> torch.Tensor:
    """Two float32 sums of the same FP8 products in different orders differ by at most 2·C·2^-24 of
    the sum of their magnitudes, elementwise."""
    fa, fb = fake_quantize(a, 1, TILE), fake_quantize(bt, bt_rows, TILE)
    return 2 * a.shape[1] * 2.0**-24 * (fa.abs() @ fb.abs().t())


# a [R, C] @ bt [S, C].T for the layer's three products: forward (x, w), input gradient (dy, w.T) and
# weight gradient (dy.T, x.T), with ragged edges (576 = 4.5 tiles; 300 and 37 tokens).
PRODUCTS = [(300, 576, 384, TILE), (300, 384, 576, TILE), (384, 300, 576, 1), (37, 256, 50, 1)]


@pytest.mark.parametrize(("r", "c", "s", "bt_rows"), PRODUCTS)
def test_scaled_mm_backend_multiplies_real_fp8_operands_to_the_reference(r, c, s, bt_rows):
    a = torch.randn(r, c, generator=_gen(8))
    bt = torch.randn(s, c, generator=_gen(9)) * 0.05
    ref = emulated_matmul(a, (1, TILE), bt.t(), (TILE, bt_rows))
    got = scaled_matmul(a, bt, bt_rows)
    assert got.shape == (r, s) and got.dtype == torch.float32
    assert ((got - ref).abs() <= sum_order_bound(a, bt, bt_rows)).all()
    assert (got - a @ bt.t()).abs().max() > 100 * (got - ref).abs().max()  # it rounded, as FP8 does


def test_fp8_linear_on_scaled_mm_gives_the_reference_layer_and_gradients():
    weight = torch.randn(384, 576, generator=_gen(10)) * 0.05
    x = torch.randn(300, 576, generator=_gen(11))
    dy = torch.randn(300, 384, generator=_gen(12))
    grads = {}
    for backend in fp8_module.BACKENDS:
        xb, wb = x.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        y = fp8_linear(xb, wb, backend=backend)
        (y * dy).sum().backward()
        grads[backend] = (y.detach(), xb.grad, wb.grad)
    (y_e, gx_e, gw_e), (y_s, gx_s, gw_s) = grads["emulated"], grads["scaled_mm"]
    assert ((y_s - y_e).abs() <= sum_order_bound(x, weight, TILE)).all()
    assert ((gx_s - gx_e).abs() <= sum_order_bound(dy, weight.t(), TILE)).all()
    assert ((gw_s - gw_e).abs() <= sum_order_bound(dy.t(), x.t(), 1)).all()


def test_an_unknown_backend_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="unknown FP8 backend 'cublas': choose one of emulated, scaled_mm"):
        fp8_linear(torch.ones(2, 4), torch.ones(3, 4), backend="cublas")
    with pytest.raises(ValueError, match="choose one of"):
        use_fp8_linears(torch.nn.Linear(4, 4), backend="te")


def test_scaled_operands_are_row_major_whatever_the_input_strides():
    """F.pad keeps a transposed input's strides; the CUDA kernels refuse (or misread) such operands."""
    a, bt = torch.randn(256, 512).t(), torch.randn(384, 256).t()  # the backward's transposed inputs
    for operand in fp8_module.scaled_operands(a, bt, 1):
        assert operand.is_contiguous()


def _gpu_bound(a, bt, bt_rows):
    """The sum-order bound, plus: Hopper's FP8 tensor cores accumulate with fewer bits than float32
    between promotions (DeepSeek-V3), allowed 2^-12 of the magnitudes; on the slices each 128-wide
    sum comes back rounded to bf16, 2^-9 of them."""
    extra = 2.0**-12 if fp8_module._uses_blockwise(a.device) else 2.0**-9
    magnitudes = fake_quantize(a, 1, TILE).abs() @ fake_quantize(bt, bt_rows, TILE).abs().t()
    return sum_order_bound(a, bt, bt_rows) + extra * magnitudes


@pytest.fixture
def fp8_gpu(monkeypatch):
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("this GPU has no FP8 matmul")
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # references in full float32
    return torch.device("cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize(("r", "c", "s", "bt_rows"), [*PRODUCTS, (4096, 4096, 11008, TILE)])
def test_on_a_gpu_scaled_mm_gives_the_reference(fp8_gpu, r, c, s, bt_rows, transposed):
    """The CUDA path: one block-scaled call on Hopper, 128-wide row-wise slices on Ada and Blackwell;
    inputs as they come (row-major) and as the backward passes them (transposed views)."""
    if transposed:
        a, bt = torch.randn(c, r, device=fp8_gpu).t(), (torch.randn(c, s, device=fp8_gpu) * 0.05).t()
    else:
        a, bt = torch.randn(r, c, device=fp8_gpu), torch.randn(s, c, device=fp8_gpu) * 0.05
    ref = emulated_matmul(a, (1, TILE), bt.t(), (TILE, bt_rows))
    got = scaled_matmul(a, bt, bt_rows)
    assert ((got - ref).abs() <= _gpu_bound(a, bt, bt_rows)).all()
    if torch.cuda.get_device_capability() == BLOCKWISE_CAPABILITY:
        assert not fp8_module._blockwise_failed, "Hopper should take the one-call block-scaled path"


@pytest.mark.gpu
def test_on_a_gpu_the_fp8_layer_gives_the_reference_layer_and_gradients(fp8_gpu):
    weight = torch.randn(512, 1024, device=fp8_gpu) * 0.05
    x = torch.randn(2048, 1024, device=fp8_gpu)
    dy = torch.randn(2048, 512, device=fp8_gpu)
    grads = {}
    for backend in fp8_module.BACKENDS:
        xb, wb = x.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        y = fp8_linear(xb.bfloat16(), wb, backend=backend)
        (y.float() * dy).sum().backward()
        grads[backend] = (y.detach().float(), xb.grad, wb.grad)
    (y_e, gx_e, gw_e), (y_s, gx_s, gw_s) = grads["emulated"], grads["scaled_mm"]
    assert ((y_s - y_e).abs() <= _gpu_bound(x, weight, TILE) + 2.0**-8 * y_e.abs()).all()  # bf16 out
    assert ((gx_s - gx_e).abs() <= _gpu_bound(dy, weight.t(), TILE) + 2.0**-8 * gx_e.abs()).all()
    assert ((gw_s - gw_e).abs() <= _gpu_bound(dy.t(), x.t(), 1)).all()
