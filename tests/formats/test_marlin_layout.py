"""formats/marlin.py: the kernel layout byte by byte, scale codes and their bf16/fp16 decode, padding,
sign/zero folding, and repack -> unrepack -> dequantize == dequantize of the input."""
import pytest
import torch

from nvfp4_compile.formats import dequantize_nvfp4, quantize_nvfp4, unpack_fp4
from nvfp4_compile.formats import marlin as M

ALL_E4M3 = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn)
FINITE_E4M3 = ALL_E4M3[~torch.isnan(ALL_E4M3.float())]


def random_weight(*shape_nk, seed=0, scales=None):
    """Random FP4 bytes [..., N, K/2] and E4M3 scales [..., N, K/16] drawn from `scales` (all finite E4M3
    values, negatives, zeros and subnormals included, by default)."""
    *lead, n, k = shape_nk
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(0, 256, (*lead, n, k // 2), dtype=torch.uint8, generator=g)
    pool = FINITE_E4M3 if scales is None else scales
    idx = torch.randint(0, pool.numel(), (*lead, n, k // 16), generator=g)
    return w, pool[idx]


def expected_int32(codes, kt, nt, t, w):
    """The documented formula for int32 (t, w) of tile (kt, nt); codes [N_pad, K_pad]."""
    c, r = nt * 64 + 16 * w + t // 4, kt * 16 + 2 * (t % 4)
    v = [codes[c, r], codes[c, r + 1], codes[c, r + 8], codes[c, r + 9],
         codes[c + 8, r], codes[c + 8, r + 1], codes[c + 8, r + 8], codes[c + 8, r + 9]]
    return sum(int(v[M.PACK_ORDER[i]]) << (4 * i) for i in range(8))


def test_weight_tiles_follow_the_documented_formula():
    n, k = 128, 64
    w, sf = random_weight(n, k, scales=torch.tensor([1.0, 2.0]).to(torch.float8_e4m3fn))
    q, _ = M.marlin_repack_reference(w, sf)
    assert q.dtype == torch.int32 and tuple(q.shape) == (k // 16, 2 * n)
    codes = unpack_fp4(w).int()
    for kt in range(k // 16):
        for nt in range(n // 64):
            for t in range(32):
                for wi in range(4):
                    got = int(q[kt, nt * 128 + 4 * t + wi]) & 0xFFFFFFFF
                    assert got == expected_int32(codes, kt, nt, t, wi), (kt, nt, t, wi)


def test_scales_follow_the_documented_permutation():
    n, k = 128, 96
    w, sf = random_weight(n, k, seed=1, scales=FINITE_E4M3[FINITE_E4M3.float() > 0])
    _, s = M.marlin_repack_reference(w, sf)
    n_pad, k_pad = M.marlin_padded_sizes(n, k)
    assert s.dtype == torch.uint8 and tuple(s.shape) == (k_pad // 16, n_pad)
    codes = M.scale_codes_from_e4m3(sf.float())
    for kb in range(k // 16):
        for col in range(n):
            group, r = divmod(col, 64)
            assert int(s[kb, group * 64 + 8 * (r % 8) + r // 8]) == int(codes[col, kb])
    assert not s[k // 16:].any()  # padded K blocks


def test_scale_codes_cover_every_e4m3_value_exactly():
    pos = FINITE_E4M3.float()[FINITE_E4M3.float() > 0]
    assert pos.numel() == 126  # 7 subnormals + 119 normals
    codes = M.scale_codes_from_e4m3(pos)
    assert int(codes.min()) == 0 and int(codes.max()) == 142  # 2^-9 and 448
    assert len(set(codes.tolist())) == 126
    assert torch.equal(M.scale_values_from_codes(codes), pos)
    assert float(M.scale_values_from_codes(torch.tensor([12], dtype=torch.uint8))) == 3 * 2.0**-9


def _bits_to(dtype, bits):
    return torch.tensor(bits, dtype=torch.int32).to(torch.int16).view(dtype).float()


def _nibble_pair_bf16(x):
    """csrc/marlin/dequant.cuh nibble_pair<bf16>: the top nibble of each 16-bit half as a bf16 pair."""
    return (x & 0x80008000) | ((x & 0x70007000) >> 6)


def test_bf16_multiply_extraction_of_nibbles_0_and_1_is_bit_identical():
    """dequant_int32<bf16> takes nibbles 0 and 1 of each half with one multiply: (q & mask) * (2^a + 2^b)
    adds two copies of the masked bits that share no set bit (no carries), then masks magnitude (bits 6..8)
    and sign (15). It must give nibble_pair(q << 12) and nibble_pair(q << 8) bit for bit, for every value of
    the 16 bits involved (both halves, with every other bit set to junk)."""
    u32 = 0xFFFFFFFF
    for lo in range(256):  # nibble 0 and 1 of the low half; the high half gets another pattern
        for hi in (0x00, 0x5A, 0xA5, 0xFF, lo, 255 - lo):
            for junk in (0x0000, 0xFF00):  # nibbles 2 and 3 of each half
                q = (lo | junk | ((hi | junk) << 16)) & u32
                assert (((q & 0x000F000F) * 0x1040) & u32) & 0x81C081C0 == _nibble_pair_bf16((q << 12) & u32)
                assert (((q & 0x00F000F0) * 0x0104) & u32) & 0x81C081C0 == _nibble_pair_bf16((q << 8) & u32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kernel_decode_of_codes_and_nibbles_is_exact(dtype):
    """Emulates the kernel's register math: nibble -> e2m1 * 2^-126 (bf16) / * 2^-14 (fp16) by mask and
    shift, code -> s * 2^119 / s * 2^7 by one multiply-add, product in the activation dtype. Every
    (nibble, code) product must equal e2m1 * s * 2^-7 exactly (no rounding, no overflow, no flush)."""
    codes = torch.arange(0, M.SCALE_CODE_MAX + 1)
    s = M.scale_values_from_codes(codes.to(torch.uint8)).double()
    if dtype == torch.bfloat16:
        scale = _bits_to(dtype, ((codes << 4) + M.BF16_SCALE_ADD).tolist()).double()
        assert torch.equal(scale, s * 2.0**119)
        nib_bits = [((q << 12) & 0x8000) | (((q << 12) & 0x7000) >> 6) for q in range(16)]
        nib = _bits_to(dtype, nib_bits).double() * 2.0**126
    else:
        scale = _bits_to(dtype, ((codes << 7) + M.FP16_SCALE_ADD).tolist()).double()
        assert torch.equal(scale, s * 2.0**7)
        nib_bits = [((q << 12) & 0x8000) | (((q << 12) & 0x7000) >> 3) for q in range(16)]
        nib = _bits_to(dtype, nib_bits).double() * 2.0**14
    e2m1 = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6] * 2, dtype=torch.float64) * torch.tensor([1.0] * 8 + [-1.0] * 8)
    assert torch.equal(nib, e2m1)
    nib_native = nib * (2.0**-126 if dtype == torch.bfloat16 else 2.0**-14)
    scale_native = scale
    exact = nib_native[:, None] * scale_native[None, :]
    rounded = exact.to(dtype).double()  # what a __hmul2 returns: the product rounded once
    assert torch.equal(rounded, exact)
    assert torch.equal(rounded * M.EPILOGUE_FACTOR, e2m1[:, None] * s[None, :])
    assert torch.isfinite(scale).all()


@pytest.mark.parametrize("mul,add", [(16, M.BF16_SCALE_ADD), (128, M.FP16_SCALE_ADD)], ids=["bf16", "fp16"])
def test_two_scale_codes_decode_at_once_as_each_alone(mul, add):
    """dequant.cuh scale_pair_at decodes two codes with one multiply-add on a word holding one code per 16-bit
    half: (lo | hi << 16) * MUL + ADD * 0x10001. No carry may cross the halves for any pair of valid codes, so
    each half equals its code decoded alone."""
    codes = torch.arange(0, M.SCALE_CODE_MAX + 1, dtype=torch.int64)
    lo, hi = codes[:, None], codes[None, :]
    both = ((lo | (hi << 16)) * mul + add * 0x10001) & 0xFFFFFFFF
    assert torch.equal(both & 0xFFFF, (lo * mul + add).expand_as(both))
    assert torch.equal(both >> 16, (hi * mul + add).expand_as(both))
    assert int((codes * mul + add).max()) < 1 << 16


SHAPES = [(64, 64), (1, 16), (100, 48), (192, 208), (130, 240), (64, 1856)]


@pytest.mark.parametrize("n,k", SHAPES)
def test_repack_unrepack_dequantizes_identically(n, k):
    w, sf = random_weight(n, k, seed=n + k)
    q, s = M.marlin_repack_reference(w, sf)
    n_pad, k_pad = M.marlin_padded_sizes(n, k)
    assert n_pad % 64 == 0 and k_pad % 64 == 0 and n_pad - n < 64 and k_pad - k < 64
    assert tuple(q.shape) == (k_pad // 16, 2 * n_pad) and tuple(s.shape) == (k_pad // 16, n_pad)
    w2, sf2 = M.marlin_unrepack_reference(q, s, n, k)
    gs = torch.tensor(0.37)
    assert torch.equal(dequantize_nvfp4(w2, sf2, gs, torch.float32), dequantize_nvfp4(w, sf, gs, torch.float32))
    assert torch.equal(M.marlin_dequantize(q, s, gs, n, k), dequantize_nvfp4(w, sf, gs, torch.float32))
    # Padding is zero weights: every logical position outside [N, K] decodes to 0.
    codes = M._tiles_to_codes(q)
    assert not codes[n:].any() and not codes[:, k:].any()


def test_positive_scales_round_trip_bytes_exactly():
    w, sf = random_weight(192, 128, seed=3, scales=FINITE_E4M3[FINITE_E4M3.float() > 0])
    w2, sf2 = M.marlin_unrepack_reference(*M.marlin_repack_reference(w, sf), 192, 128)
    assert torch.equal(w2, w) and torch.equal(sf2.view(torch.uint8), sf.view(torch.uint8))


@pytest.mark.parametrize("lead", [(3,), (2, 2)])
def test_expert_stacks_repack_each_expert_independently(lead):
    n, k = 72, 80
    w, sf = random_weight(*lead, n, k, seed=7)
    q, s = M.marlin_repack_reference(w, sf)
    for idx in torch.cartesian_prod(*[torch.arange(d) for d in lead]).reshape(-1, len(lead)).tolist():
        qi, si = M.marlin_repack_reference(w[tuple(idx)], sf[tuple(idx)])
        assert torch.equal(q[tuple(idx)], qi) and torch.equal(s[tuple(idx)], si)
    gs = torch.rand(*lead) + 0.5
    deq = M.marlin_dequantize(q, s, gs.reshape(*lead, 1, 1), n, k)
    assert torch.equal(deq, dequantize_nvfp4(w, sf, gs.reshape(*lead, 1, 1), torch.float32))
    if len(lead) == 1:  # [E] global scales are accepted for one expert dim
        assert torch.equal(M.marlin_dequantize(q, s, gs, n, k), deq)


def test_negative_and_zero_scales_fold_into_codes():
    codes = torch.arange(16, dtype=torch.uint8).repeat(2)  # one 32-element row = 2 blocks
    w = (codes[0::2] | (codes[1::2] << 4)).reshape(1, 16)
    for s0, s1 in [(-2.0, 0.0), (-0.0, -448.0), (0.001953125, -0.005859375)]:  # 2^-9, -3*2^-9
        sf = torch.tensor([[s0, s1]]).to(torch.float8_e4m3fn)
        q, s = M.marlin_repack_reference(w, sf)
        w2, sf2 = M.marlin_unrepack_reference(q, s, 1, 32)
        assert (sf2.float() >= 0).all()
        gs = torch.tensor(1.0)
        assert torch.equal(dequantize_nvfp4(w2, sf2, gs, torch.float32), dequantize_nvfp4(w, sf, gs, torch.float32))
        for b, sv in enumerate((s0, s1)):
            block = unpack_fp4(w2)[0, 16 * b:16 * b + 16]
            if sv == 0:
                assert not block.any()
            elif sv < 0:
                assert torch.equal(block, codes[16 * b:16 * b + 16] ^ 8)


def test_quantized_weights_round_trip():
    x = torch.randn(96, 160, generator=torch.Generator().manual_seed(5))
    w, sf, gs = quantize_nvfp4(x)
    assert torch.equal(
        M.marlin_dequantize(*M.marlin_repack_reference(w, sf), gs, 96, 160, torch.bfloat16),
        dequantize_nvfp4(w, sf, gs, torch.bfloat16),
    )


def test_nan_scale_is_rejected_naming_the_tensor():
    w, sf = random_weight(64, 32, seed=2, scales=torch.tensor([1.0]).to(torch.float8_e4m3fn))
    sf = sf.clone()
    sf.view(torch.uint8)[3, 1] = 0x7F  # E4M3 NaN
    with pytest.raises(ValueError, match="w_sf holds 1 NaN"):
        M.marlin_repack_reference(w, sf)


def test_bad_shapes_and_dtypes_raise():
    w, sf = random_weight(64, 64)
    with pytest.raises(ValueError, match="multiple of 16"):
        M.marlin_repack_reference(w[:, :4], sf[:, :1])
    with pytest.raises(ValueError, match="w_sf has shape"):
        M.marlin_repack_reference(w, sf[:, :3])
    with pytest.raises(TypeError, match="w_sf must be float8_e4m3fn"):
        M.marlin_repack_reference(w, sf.float())
    with pytest.raises(TypeError, match="w_fp4 must be uint8"):
        M.marlin_repack_reference(w.to(torch.int8), sf)
    q, s = M.marlin_repack_reference(w, sf)
    with pytest.raises(ValueError, match="qweight has shape"):
        M.marlin_unrepack_reference(q, s, 64, 128)
    with pytest.raises(ValueError, match="scales has shape"):
        M.marlin_unrepack_reference(q, s[:, :8], 64, 64)
    with pytest.raises(ValueError, match="scale code above"):
        M.marlin_unrepack_reference(q, torch.full_like(s, 200), 64, 64)
