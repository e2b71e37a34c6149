"""E2M1 codes: the value table, round-to-nearest-even at every tie, saturation, -0, and nibble packing."""
import pytest
import torch

from nvfp4_compile.formats import E2M1_VALUES, e2m1_decode, e2m1_encode, pack_fp4, unpack_fp4

TABLE = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def encode(v: float) -> int:
    return int(e2m1_encode(torch.tensor([v], dtype=torch.float32))[0])


def test_value_table_matches_spec():
    assert list(E2M1_VALUES) == TABLE


@pytest.mark.parametrize("code", range(16))
def test_every_code_decodes_to_its_table_value_and_encodes_back(code):
    value = float(e2m1_decode(torch.tensor([code], dtype=torch.uint8))[0])
    magnitude = TABLE[code & 7]
    assert value == (-magnitude if code & 8 else magnitude)
    assert bool(torch.signbit(torch.tensor(value))) == bool(code & 8)  # code 8 is -0, not +0
    assert encode(value) == code


def test_decode_ignores_high_nibble():
    assert e2m1_decode(torch.tensor([0xF3], dtype=torch.uint8)).tolist() == [1.5]


# (tie, code it rounds to, lower neighbour code, upper neighbour code): the even code wins.
TIES = [
    (0.25, 0, 0, 1),
    (0.75, 2, 1, 2),
    (1.25, 2, 2, 3),
    (1.75, 4, 3, 4),
    (2.5, 4, 4, 5),
    (3.5, 6, 5, 6),
    (5.0, 6, 6, 7),
]


@pytest.mark.parametrize("tie,code,lower,upper", TIES)
def test_ties_round_to_even_and_neighbours_round_to_nearest(tie, code, lower, upper):
    assert encode(tie) == code
    assert encode(-tie) == code | 8
    below = float(torch.nextafter(torch.tensor(tie), torch.tensor(0.0)))
    above = float(torch.nextafter(torch.tensor(tie), torch.tensor(100.0)))
    assert encode(below) == lower
    assert encode(above) == upper
    assert encode(-below) == lower | 8
    assert encode(-above) == upper | 8


@pytest.mark.parametrize("value,code", [(6.0, 7), (6.0001, 7), (7.0, 7), (100.0, 7), (3.0e38, 7), (-100.0, 15), (-7.0, 15)])
def test_saturates_at_six(value, code):
    assert encode(value) == code


def test_negative_zero_and_tiny_negatives_keep_the_sign():
    assert encode(0.0) == 0
    assert encode(-0.0) == 8
    assert encode(-0.2) == 8  # rounds to -0 like cvt.rn.satfinite does
    assert encode(0.2) == 0


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_inf_and_nan_raise(bad):
    with pytest.raises(ValueError, match="inf or NaN"):
        e2m1_encode(torch.tensor([1.0, bad]))


def test_encode_accepts_bf16_and_fp16():
    values = torch.tensor([0.25, 0.75, -1.75, 5.0, 9.0])
    expected = [0, 2, 12, 6, 7]
    for dtype in (torch.bfloat16, torch.float16):
        assert e2m1_encode(values.to(dtype)).tolist() == expected


def test_nibble_order_on_a_hand_built_byte():
    # element 0 = code 0x3 (1.5), element 1 = code 0xA (-1.0): byte 0xA3 (element 0 in the low nibble)
    assert pack_fp4(torch.tensor([0x3, 0xA], dtype=torch.uint8)).tolist() == [0xA3]
    assert unpack_fp4(torch.tensor([0xA3], dtype=torch.uint8)).tolist() == [0x3, 0xA]
    assert e2m1_decode(unpack_fp4(torch.tensor([0xA3], dtype=torch.uint8))).tolist() == [1.5, -1.0]


def test_pack_unpack_round_trip_with_leading_dims(randint):
    codes = randint(0, 16, 3, 4, 10, dtype=torch.uint8)
    packed = pack_fp4(codes)
    assert packed.shape == (3, 4, 5) and packed.dtype == torch.uint8
    assert torch.equal(unpack_fp4(packed), codes)
    assert torch.equal(packed, codes[..., 0::2] + 16 * codes[..., 1::2])


def test_pack_rejects_odd_length_and_unpack_rejects_non_uint8():
    with pytest.raises(ValueError, match="even"):
        pack_fp4(torch.zeros(3, dtype=torch.uint8))
    with pytest.raises(TypeError, match="uint8"):
        unpack_fp4(torch.zeros(4, dtype=torch.int32))
