"""formats/marlin.py: the kernel layout byte by byte, scale codes and their bf16/fp16 decode, padding,
sign/zero folding, and repack -> unrepack -> dequantize == dequantize of the input."""
import re
from pathlib import Path

import pytest
import torch

from nvfp4_compile.formats import dequantize_nvfp4, quantize_nvfp4, unpack_fp4
from nvfp4_compile.formats import marlin as M

ALL_E4M3 = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn)
FINITE_E4M3 = ALL_E4M3[~torch.isnan(ALL_E4M3.float())]
REPO = Path(__file__).resolve().parents[2]
U32 = 0xFFFFFFFF


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
    return sum(((int(v[i]) >> j) & 1) << pos for i in range(8) for j, pos in enumerate(M.CODE_BIT_POSITIONS[i]))


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


def test_code_bit_positions_fill_the_word_and_match_the_kernel_header():
    positions = [pos for value in M.CODE_BIT_POSITIONS for pos in value]
    assert sorted(positions) == list(range(32))
    header = (REPO / "csrc" / "marlin" / "dequant.cuh").read_text()
    table = re.search(r"kCodeBitPosition\[8\]\[4\] = \{(.*?)\};", header, re.S).group(1)
    rows = [tuple(int(x) for x in row.split(",")) for row in re.findall(r"\{([^{}]*)\}", table)]
    assert tuple(rows) == M.CODE_BIT_POSITIONS


def _rotr(q, bits):
    return ((q >> bits) | (q << (32 - bits))) & U32


def _code_pairs(q, dtype):
    """csrc/marlin/dequant.cuh code_pairs<T>, instruction for instruction (32-bit wrap-around arithmetic)."""
    if dtype == torch.bfloat16:
        keep = 0x81C081C0
        return [q & keep, ((q & 0x001B001B) * 0x4108) & U32 & keep, _rotr(q, 3) & keep, _rotr(q, 6) & keep]
    mag, sign = 0x0E000E00, 0x80008000
    r3 = _rotr(q, 3)
    return [((q & 0x81C081C0) * 9) & U32 & (mag | sign),
            ((((q & 0x00190019) * 0x840) & U32) & mag) | ((q << 14) & U32 & sign),
            (q & mag) | (r3 & sign),
            (r3 & mag) | (_rotr(q, 6) & sign)]


def _code_as_bits(code, dtype):
    """An E2M1 code as T bits: magnitude at 6..8 (bf16, e2m1 * 2^-126) or 9..11 (fp16, e2m1 * 2^-14), sign at 15."""
    return ((code & 8) << 12) | ((code & 7) << (6 if dtype == torch.bfloat16 else 9))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kernel_code_pairs_extract_every_code_at_every_position(dtype):
    """dequant.cuh code_pairs turns each pair (v[2p], v[2p+1]) of a layout int32 into T bits with masks, two
    rotations and multiplies whose shifted copies must never carry. Checked on every code of every value, each
    beside every code of its pair partner, with the other six values set to random codes."""
    g = torch.Generator().manual_seed(11)
    for p in range(4):
        for lo in range(16):
            for hi in range(16):
                others = torch.randint(0, 16, (8,), generator=g)
                values = [int(v) for v in others]
                values[2 * p], values[2 * p + 1] = lo, hi
                q = int(M._place_code_bits(torch.tensor(values))) & U32
                got = _code_pairs(q, dtype)[p]
                assert got == _code_as_bits(lo, dtype) | (_code_as_bits(hi, dtype) << 16), (p, lo, hi, values)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kernel_decode_of_element_and_scale_codes_is_exact(dtype):
    """Emulates the kernel's register math: E2M1 code -> e2m1 * 2^-126 (bf16) / * 2^-14 (fp16) by placing its
    bits (code_pairs), scale code -> s * 2^119 / s * 2^7 by one multiply-add, product in the activation dtype. Every
    (element code, scale code) product must equal e2m1 * s * 2^-7 exactly (no rounding, no overflow, no flush)."""
    codes = torch.arange(0, M.SCALE_CODE_MAX + 1)
    s = M.scale_values_from_codes(codes.to(torch.uint8)).double()
    if dtype == torch.bfloat16:
        scale = _bits_to(dtype, ((codes << 4) + M.BF16_SCALE_ADD).tolist()).double()
        assert torch.equal(scale, s * 2.0**119)
        elem = _bits_to(dtype, [_code_as_bits(c, dtype) for c in range(16)]).double() * 2.0**126
    else:
        scale = _bits_to(dtype, ((codes << 7) + M.FP16_SCALE_ADD).tolist()).double()
        assert torch.equal(scale, s * 2.0**7)
        elem = _bits_to(dtype, [_code_as_bits(c, dtype) for c in range(16)]).double() * 2.0**14
    e2m1 = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6] * 2, dtype=torch.float64) * torch.tensor([1.0] * 8 + [-1.0] * 8)
    assert torch.equal(elem, e2m1)
    elem_native = elem * (2.0**-126 if dtype == torch.bfloat16 else 2.0**-14)
    scale_native = scale
    exact = elem_native[:, None] * scale_native[None, :]
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
