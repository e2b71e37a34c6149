"""Block scales (E4M3 rounding/saturation), the decode/encode conventions, and shard reconciliation."""
import pytest
import torch

from nvfp4_compile.formats import (
    E4M3_MAX,
    decode_scale_from_amax,
    decode_to_encode,
    dequantize_nvfp4,
    encode_to_decode,
    quantize_nvfp4,
    quantize_nvfp4_encoded,
    reconcile_shard_scales,
    to_e4m3,
    unpack_fp4,
)


def e4m3(v: float) -> float:
    return float(to_e4m3(torch.tensor([v]))[0])


@pytest.mark.parametrize(
    "value,expected",
    [
        (448.0, 448.0),
        (464.0, 448.0),  # would round up to 480 (not in e4m3fn): saturates instead
        (500.0, 448.0),
        (1e6, 448.0),
        (float("inf"), 448.0),
        (-1e6, -448.0),
        (1.0625, 1.0),  # tie between 1.0 (even mantissa) and 1.125
        (1.1875, 1.25),  # tie between 1.125 and 1.25 (even)
        (2.0**-9, 2.0**-9),  # smallest subnormal
        (2.0**-10, 0.0),  # tie between 0 (even) and 2^-9
        (3 * 2.0**-10, 2.0**-8),  # tie between 2^-9 (odd) and 2^-8 (even)
    ],
)
def test_to_e4m3_rounds_to_nearest_even_and_saturates(value, expected):
    assert e4m3(value) == expected


def test_e4m3_max_is_448():
    assert E4M3_MAX == 448.0 == float(torch.finfo(torch.float8_e4m3fn).max)


def test_decode_scale_is_amax_over_2688():
    assert float(decode_scale_from_amax(torch.tensor(2688.0))) == 1.0
    assert float(decode_scale_from_amax(torch.tensor(6.0))) == pytest.approx(1 / 448)
    assert float(decode_scale_from_amax(torch.tensor(0.0))) == 1.0  # nothing to scale


def test_modelopt_and_compressed_tensors_conventions_are_reciprocal(randn):
    w = randn(8, 64, scale=0.02)
    amax = w.abs().max()
    weight_scale_2 = amax / 2688.0  # ModelOpt: decode
    weight_global_scale = 2688.0 / amax  # compressed-tensors: encode
    assert float(decode_to_encode(weight_scale_2)) == pytest.approx(float(weight_global_scale), rel=1e-6)
    assert float(encode_to_decode(weight_global_scale)) == pytest.approx(float(weight_scale_2), rel=1e-6)
    # Both describe the same bytes: quantizing with either convention's entry point agrees.
    packed_d, sf_d, _ = quantize_nvfp4(w, weight_scale_2)
    packed_e, sf_e = quantize_nvfp4_encoded(w, decode_to_encode(weight_scale_2))
    assert torch.equal(packed_d, packed_e) and torch.equal(sf_d.view(torch.uint8), sf_e.view(torch.uint8))
    # The block holding amax gets scale 448 (amax / 6 * 2688 / amax): the whole E4M3 range is used.
    assert float(sf_d.float().max()) == 448.0


def test_mixing_up_the_conventions_is_visible(randn):
    # Passing an encode scale where a decode scale is expected: the classic bug, and what it looks like.
    w = randn(4, 32, scale=0.02)
    g = decode_to_encode(decode_scale_from_amax(w.abs().max()))
    packed, sf, d = quantize_nvfp4(w, g)
    assert (sf.float() == 0).all()  # every block scale underflows E4M3 ...
    assert (dequantize_nvfp4(packed, sf, d) == 0).all()  # ... and the weight silently becomes zero


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf")])
def test_convention_conversions_reject_non_positive(bad):
    with pytest.raises(ValueError, match="positive"):
        decode_to_encode(torch.tensor(bad))
    with pytest.raises(ValueError, match="positive"):
        encode_to_decode(torch.tensor(bad))


def test_reconcile_shard_scales_dequantizes_like_the_separate_shards(randn):
    # q/k/v-style shards with very different ranges, each quantized at its own decode scale.
    shards = [randn(32, 64, scale=s, seed=i) for i, s in enumerate([1.0, 0.05, 0.3])]
    quantized = [quantize_nvfp4(w) for w in shards]
    fused_sf, d = reconcile_shard_scales([sf for _, sf, _ in quantized], [di for _, _, di in quantized])
    ds = [float(di) for _, _, di in quantized]
    assert float(d) == max(ds)
    changed = 0
    for (packed, sf, di), sf_new in zip(quantized, fused_sf):
        separate = dequantize_nvfp4(packed, sf, di, torch.float32)
        fused = dequantize_nvfp4(packed, sf_new, d, torch.float32)
        if float(di) == float(d):
            assert torch.equal(sf_new.view(torch.uint8), sf.view(torch.uint8))  # the largest shard is untouched
            assert torch.equal(fused, separate)
            continue
        # The rescaled block scale v = s_b * d_i / d is rounded to E4M3 once: its error is at most half an
        # ulp, 2^-4 * v for normals (3 mantissa bits) or 2^-10 in the subnormal range (ulp 2^-9). Each
        # element moves by |e2m1 code value| * d * that error.
        v = sf.float() * (di / d)
        scale_err = torch.maximum(v * 2.0**-4, torch.full_like(v, 2.0**-10)) * (1 + 1e-6)
        code_mag = unpack_fp4(packed).bitwise_and(7)
        code_val = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6])[code_mag.long()]
        bound = code_val * (scale_err * d).repeat_interleave(16, dim=-1)
        assert ((fused - separate).abs() <= bound).all()
        changed += int((sf_new.view(torch.uint8) != sf.view(torch.uint8)).sum())
    assert changed > 0  # the test exercised real rescaling


def test_reconcile_with_equal_scales_is_the_identity(randn):
    q = [quantize_nvfp4(randn(4, 32, seed=i), torch.tensor(0.01)) for i in range(2)]
    fused_sf, d = reconcile_shard_scales([sf for _, sf, _ in q], [di for _, _, di in q])
    assert float(d) == pytest.approx(0.01)
    for (_, sf, _), sf_new in zip(q, fused_sf):
        assert torch.equal(sf_new.view(torch.uint8), sf.view(torch.uint8))
