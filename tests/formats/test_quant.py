"""quantize_nvfp4 / dequantize_nvfp4: hand-computed blocks, error bounds, zeros, bad input, shapes, dtypes."""
import pytest
import torch

from nvfp4_compile.formats import dequantize_nvfp4, quantize_nvfp4, quantize_nvfp4_encoded, unpack_fp4

# One 16-element block with amax 12, worked out by hand at decode scale d (encode g = 1/d):
#   s_b = e4m3(12 / 6 * g) = 2g (exact for the d below), so x * g / s_b = x / 2:
#   x/2   = 0  .5  1  1.5  2  3  4  6  -.25 -.75 -1.25 -1.75  2.5  3.5  5  -6
#   code  = 0  1   2  3    4  5  6  7  8    10   10    12     4    6    6  15   (ties to even; -0.25 -> -0)
HAND_BLOCK = [0, 1, 2, 3, 4, 6, 8, 12, -0.5, -1.5, -2.5, -3.5, 5, 7, 10, -12]
HAND_CODES = [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 10, 12, 4, 6, 6, 15]
HAND_BYTES = [0x10, 0x32, 0x54, 0x76, 0xA8, 0xCA, 0x64, 0xF6]  # element 2i low nibble, 2i+1 high
HAND_DEQUANT = [0, 1, 2, 3, 4, 6, 8, 12, -0.0, -2, -2, -4, 4, 8, 8, -12]


@pytest.mark.parametrize("d", [1.0, 0.5, 0.125])
def test_hand_computed_block(d):
    x = torch.tensor(HAND_BLOCK, dtype=torch.float32)
    packed, sf, gs = quantize_nvfp4(x, torch.tensor(d))
    assert float(gs) == d
    assert sf.dtype == torch.float8_e4m3fn and sf.shape == (1,)
    assert float(sf[0]) == 2.0 / d
    assert unpack_fp4(packed).tolist() == HAND_CODES
    assert packed.tolist() == HAND_BYTES
    deq = dequantize_nvfp4(packed, sf, gs, torch.float32)
    assert deq.tolist() == HAND_DEQUANT
    assert torch.signbit(deq[8])


def test_hand_computed_block_with_a_rounded_scale():
    # amax 7: 7/6 = 1.1667 rounds to E4M3 1.125 (steps of 0.125 in [1, 2)); 7/1.125 = 6.22 saturates to 6,
    # 1/1.125 = 0.889 rounds to 1.0, -0.3/1.125 = -0.267 rounds to -0.5 (just above the 0.25 tie).
    x = torch.zeros(16)
    x[0], x[1], x[2] = 7.0, 1.0, -0.3
    packed, sf, gs = quantize_nvfp4(x, torch.tensor(1.0))
    assert float(sf[0]) == 1.125
    assert unpack_fp4(packed)[:4].tolist() == [7, 2, 9, 0]
    assert dequantize_nvfp4(packed, sf, gs, torch.float32)[:3].tolist() == [6.75, 1.125, -0.5625]


def test_global_scale_defaults_to_amax_over_2688(randn):
    x = randn(4, 32)
    _, _, gs = quantize_nvfp4(x)
    assert float(gs) == pytest.approx(float(x.abs().max()) / 2688.0, rel=1e-7)


def _half_gap(v: torch.Tensor) -> torch.Tensor:
    """Half the spacing of the E2M1 grid around |v| (v in code units; above 6 counts as the top interval)."""
    return torch.where(v < 2, 0.25, torch.where(v < 4, 0.5, 1.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_round_trip_error_is_within_half_a_grid_step(randn, dtype):
    x = randn(8, 256, scale=3.0, dtype=dtype)
    packed, sf, d = quantize_nvfp4(x)
    deq = dequantize_nvfp4(packed, sf, d, torch.float32)
    step = (sf.float() * d).repeat_interleave(16, dim=-1)  # one code unit in real values, per element
    assert (sf.float() > 0).all()
    xf = x.float()
    err = (deq - xf).abs()
    # RNE puts every value within half a grid step; the block max may sit up to 1/16 above 6 code units
    # (the E4M3 scale rounds down by at most half an ulp), which is still inside the top half-gap of 1.
    assert (err <= _half_gap(xf.abs() / step) * step * (1 + 1e-6)).all()
    assert float(err.max()) > 0  # the data really was rounded
    # and the whole-tensor relative error is what 4-bit elements give (about 10%), not garbage
    assert float(err.norm() / xf.norm()) < 0.15


def test_all_zero_block_gets_zero_scale_and_zero_codes(randn):
    x = randn(2, 48)
    x[1, 16:32] = 0.0
    packed, sf, d = quantize_nvfp4(x)
    assert float(sf[1, 1]) == 0.0
    assert (unpack_fp4(packed)[1, 16:32] == 0).all()
    deq = dequantize_nvfp4(packed, sf, d, torch.float32)
    assert (deq[1, 16:32] == 0).all()
    assert (sf.float()[[0, 0, 0, 1, 1], [0, 1, 2, 0, 2]] > 0).all()


def test_all_zero_tensor_uses_global_scale_one():
    packed, sf, d = quantize_nvfp4(torch.zeros(3, 32, dtype=torch.bfloat16))
    assert float(d) == 1.0
    assert (packed == 0).all() and (sf.float() == 0).all()
    assert (dequantize_nvfp4(packed, sf, d) == 0).all()


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_inf_and_nan_raise(bad):
    x = torch.ones(2, 16)
    x[1, 3] = bad
    with pytest.raises(ValueError, match="inf or NaN"):
        quantize_nvfp4(x)
    with pytest.raises(ValueError, match="inf or NaN"):
        quantize_nvfp4(x, torch.tensor(1.0))
    with pytest.raises(ValueError, match="inf or NaN"):
        quantize_nvfp4_encoded(x, torch.tensor(1.0))


def test_k_not_a_multiple_of_16_raises():
    with pytest.raises(ValueError, match="multiple of 16"):
        quantize_nvfp4(torch.ones(2, 24))
    with pytest.raises(ValueError, match="multiple of 16"):
        dequantize_nvfp4(torch.zeros(2, 12, dtype=torch.uint8), torch.zeros(2, 1, dtype=torch.float8_e4m3fn), 1.0)


def test_bad_global_scale_and_dtypes_raise():
    with pytest.raises(ValueError, match="positive"):
        quantize_nvfp4(torch.ones(16), torch.tensor(0.0))
    with pytest.raises(TypeError, match="floating"):
        quantize_nvfp4(torch.ones(16, dtype=torch.int32))
    with pytest.raises(TypeError, match="uint8"):
        dequantize_nvfp4(torch.zeros(8, dtype=torch.int8), torch.zeros(1, dtype=torch.float8_e4m3fn), 1.0)
    with pytest.raises(TypeError, match="float8_e4m3fn"):
        dequantize_nvfp4(torch.zeros(8, dtype=torch.uint8), torch.zeros(1), 1.0)
    with pytest.raises(ValueError, match="block_scale shape"):
        dequantize_nvfp4(torch.zeros(2, 8, dtype=torch.uint8), torch.zeros(2, 2, dtype=torch.float8_e4m3fn), 1.0)


def test_leading_dims_quantize_like_each_slice(randn):
    x = randn(2, 3, 4, 32, dtype=torch.bfloat16)
    d = torch.tensor(0.01)
    packed, sf, _ = quantize_nvfp4(x, d)
    assert packed.shape == (2, 3, 4, 16) and sf.shape == (2, 3, 4, 2)
    for i in range(2):
        for j in range(3):
            p_ij, sf_ij, _ = quantize_nvfp4(x[i, j], d)
            assert torch.equal(packed[i, j], p_ij)
            assert torch.equal(sf[i, j].view(torch.uint8), sf_ij.view(torch.uint8))
    assert dequantize_nvfp4(packed, sf, d).shape == x.shape


def test_per_expert_global_scales_broadcast_in_dequantize(randn):
    w = randn(3, 8, 32) * torch.tensor([1.0, 10.0, 0.1]).view(3, 1, 1)
    per_expert = [quantize_nvfp4(w[e]) for e in range(3)]
    packed = torch.stack([p for p, _, _ in per_expert])
    sf = torch.stack([s for _, s, _ in per_expert])
    d = torch.stack([g for _, _, g in per_expert])
    stacked = dequantize_nvfp4(packed, sf, d.view(3, 1, 1), torch.float32)
    for e in range(3):
        assert torch.equal(stacked[e], dequantize_nvfp4(*per_expert[e], torch.float32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_input_dtypes_quantize_their_exact_values(randn, dtype):
    x = randn(4, 64, dtype=dtype)
    d = torch.tensor(0.002)
    packed, sf, _ = quantize_nvfp4(x, d)
    packed32, sf32, _ = quantize_nvfp4(x.float(), d)
    assert torch.equal(packed, packed32)
    assert torch.equal(sf.view(torch.uint8), sf32.view(torch.uint8))
    assert dequantize_nvfp4(packed, sf, d, dtype).dtype == dtype


def test_dequantize_rounds_once_to_the_output_dtype(randn):
    packed, sf, d = quantize_nvfp4(randn(4, 64), torch.tensor(0.00137))
    exact = dequantize_nvfp4(packed, sf, d, torch.float64)
    for dtype in (torch.bfloat16, torch.float16):
        assert torch.equal(dequantize_nvfp4(packed, sf, d, dtype), exact.to(dtype))


def test_encoded_and_decoded_entry_points_agree(randn):
    x = randn(4, 32)
    d = torch.tensor(0.004)
    packed, sf, _ = quantize_nvfp4(x, d)
    packed_e, sf_e = quantize_nvfp4_encoded(x, 1.0 / d)
    assert torch.equal(packed, packed_e) and torch.equal(sf.view(torch.uint8), sf_e.view(torch.uint8))
