"""The 128x4 swizzled scale layout, checked against the offset formula of spec/NVFP4.md section 4."""
import pytest
import torch

from nvfp4_compile.formats import swizzle_scales, swizzled_shape, to_e4m3, unswizzle_scales


def spec_offset(m: int, k: int, kp: int) -> int:
    return (m // 128) * (kp // 4) * 512 + (k // 4) * 512 + (m % 32) * 16 + ((m % 128) // 32) * 4 + (k % 4)


def numbered(*shape) -> torch.Tensor:
    """Distinct non-zero int32 entries, so every element can be found again and padding is recognizable."""
    return torch.arange(1, 1 + torch.Size(shape).numel(), dtype=torch.int32).reshape(shape)


@pytest.mark.parametrize("m,ksf,expected", [(200, 9, (256, 12)), (1, 1, (128, 4)), (128, 4, (128, 4)), (129, 5, (256, 8))])
def test_swizzled_shape_pads_to_128_rows_and_4_columns(m, ksf, expected):
    assert swizzled_shape(m, ksf) == expected
    assert swizzle_scales(torch.zeros(m, ksf)).shape == expected


def test_every_element_lands_at_the_spec_offset():
    m, ksf = 200, 9  # awkward: two row blocks (the second partial), three column groups (the last partial)
    sf = numbered(m, ksf)
    swz = swizzle_scales(sf)
    mp, kp = swz.shape
    flat = swz.reshape(-1)
    for row in range(m):
        for col in range(ksf):
            assert int(flat[spec_offset(row, col, kp)]) == int(sf[row, col]), (row, col)
    # everything else is padding, and padding is zero
    assert int((flat != 0).sum()) == m * ksf
    assert int(flat.sum()) == int(sf.sum())


def test_batch_index_adds_a_whole_swizzled_matrix():
    sf = numbered(3, 130, 6)
    swz = swizzle_scales(sf)
    mp, kp = swz.shape[-2:]
    flat = swz.reshape(-1)
    for b, row, col in [(0, 0, 0), (1, 129, 5), (2, 64, 3), (2, 31, 4)]:
        assert int(flat[b * mp * kp + spec_offset(row, col, kp)]) == int(sf[b, row, col])


@pytest.mark.parametrize("shape", [(1, 1), (200, 9), (128, 4), (2, 3, 129, 5), (4, 256, 8)])
def test_round_trip_with_leading_dims(shape):
    sf = numbered(*shape)
    swz = swizzle_scales(sf)
    assert swz.shape == (*shape[:-2], *swizzled_shape(*shape[-2:]))
    assert torch.equal(unswizzle_scales(swz, *shape[-2:]), sf)


def test_round_trip_of_e4m3_scales_keeps_the_bytes(randn):
    sf = to_e4m3(randn(2, 70, 7).abs() * 100)
    swz = swizzle_scales(sf)
    assert swz.dtype == torch.float8_e4m3fn
    assert torch.equal(unswizzle_scales(swz, 70, 7).view(torch.uint8), sf.view(torch.uint8))
    assert int((swz.view(torch.uint8) != 0).sum()) == int((sf.view(torch.uint8) != 0).sum())


def test_unswizzle_rejects_a_shape_that_does_not_match():
    with pytest.raises(ValueError, match="do not match"):
        unswizzle_scales(torch.zeros(128, 4), 200, 3)
    with pytest.raises(ValueError, match="do not match"):
        unswizzle_scales(torch.zeros(256, 4), 200, 5)
