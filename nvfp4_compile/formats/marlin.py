"""The Marlin W4A16 kernel layout: the ONE Python definition of the bytes csrc/ reads (and its repack writes).

Weights (after sign folding, see below) are the logical matrix W[n, k] of E2M1 codes, padded with zero codes
to N_pad = ceil(N/64)*64 rows and K_pad = ceil(K/64)*64 columns (`marlin_padded_sizes`).

qweight: int32 [..., K_pad/16, 2*N_pad] (docs/kernels.md has the picture). The [K_pad, N_pad] matrix W^T is
cut in 16 (k) x 64 (n) tiles; tile (kt, nt) is 128 int32 at row kt, columns nt*128 .. nt*128+127. Inside a
tile, lane t in 0..31 owns the four int32 at 4t + w (w in 0..3), i.e. one 16-byte load per lane. With
c = nt*64 + 16w + t//4 and r = kt*16 + 2*(t%4), the eight codes of int32 (t, w) are
    v = (W[c, r], W[c, r+1], W[c, r+8], W[c, r+9], W[c+8, r], W[c+8, r+1], W[c+8, r+8], W[c+8, r+9])
and the 4 code bits (m0, e0, e1, sign) of v[i] sit at word bits CODE_BIT_POSITIONS[i]. These are exactly the
mma.m16n8k16 B fragments of the n8 tiles 2w (column c) and 2w+1 (column c+8): the pair (v[2p], v[2p+1]) is the
two k values one 32-bit fragment register holds, low and high 16-bit half. The bits are placed so that the
kernel turns each pair into a bf16x2 with one to three ALU instructions (csrc/marlin/dequant.cuh): the BF16
form of an E2M1 code wants its magnitude at bits 6..8 and its sign at 15 of a half, so
    pair 0 (v0, v1) is stored there already                        -> q & 0x81C081C0
    pair 2 (v4, v5) is stored there rotated left by 3 bits         -> rotr(q, 3) & 0x81C081C0
    pair 3 (v6, v7) is stored there rotated left by 6 bits         -> rotr(q, 6) & 0x81C081C0
    pair 1 (v2, v3) fills the 4 bits left in each half (0, 1, 3, 4) -> ((q & 0x001B001B) * 0x4108) & 0x81C081C0
(the multiply adds three shifted copies that share no set bit). A rotation carries a sign across halves: v4's
sign is bit 18, v5's bit 2. BF16 takes 8 ALU instructions per int32 this way instead of 13 with nibbles.

scales: uint8 [..., K_pad/16, N_pad]. Row kt holds the scale codes of k-block kt; inside every run of 64
columns, byte 8i + j holds column i + 8j, so lane t reads the scales of its eight n8 tiles (columns
t//4 + 8j, j = 0..7, the same order as its weights) in one 8-byte load.

Scale codes (exact over the whole E4M3 range, subnormals included). Every nonzero E4M3 magnitude is
2^E * (1 + M/8) with E in [-9, 8] once subnormals are renormalized (3 * 2^-9 = 1.5 * 2^-8):
    code = ((E + 9) << 3) | M            in 0..142 (448 = 1.75 * 2^8 -> 142)
The kernel turns a code into a BF16 scale with one multiply-add: bits = (code << 4) + (237 << 7) is
2^(E+119) * (1 + M/8) = s * 2^119; FP16: bits = (code << 7) + (13 << 10) = s * 2^7. Multiplied by the
nibble-as-bf16 (e2m1 * 2^-126) or nibble-as-fp16 (e2m1 * 2^-14) both give e2m1 * s * 2^-7 exactly, so the
epilogue multiplies the FP32 accumulator by global_scale * 2^7 (EPILOGUE_FACTOR). docs/kernels.md derives
why these biases are exact for every code.

Repack folds what the codes cannot hold into the element codes: a negative block scale flips the sign bit of
every element of its block (and stores |s|); a zero block scale zeroes the block's element codes (its scale
code is then 0). A NaN block scale is an error. Hence `marlin_unrepack_reference` returns tensors that
dequantize to exactly the input's values (not necessarily the same bytes).
"""
from __future__ import annotations

import torch

from .e2m1 import pack_fp4, unpack_fp4
from .quant import dequantize_nvfp4
from .scales import BLOCK_SIZE

TILE_N = 64  # columns of one 16x64 weight tile; N is padded to a multiple of this
TILE_K = 16  # k rows of one weight tile (= one block-scale block)
K_ALIGN = 64  # K is padded to a multiple of the smallest kernel k-tile
# CODE_BIT_POSITIONS[v][j]: the int32 bit holding bit j (0: m0, 1: e0, 2: e1, 3: sign) of fragment value v.
# Mirrored by the table in csrc/marlin/dequant.cuh code_bit_position (tests/formats/test_marlin_layout.py compares).
CODE_BIT_POSITIONS = (
    (6, 7, 8, 15), (22, 23, 24, 31),  # pair 0: in place
    (3, 4, 0, 1), (19, 20, 16, 17),  # pair 1: the bits left over, moved by one multiply
    (9, 10, 11, 18), (25, 26, 27, 2),  # pair 2: rotated left by 3
    (12, 13, 14, 21), (28, 29, 30, 5),  # pair 3: rotated left by 6
)
SCALE_CODE_MAX = 143  # ((8 + 9) << 3) | 7: the code space (448 = 1.75 * 2^8, the largest E4M3, is 142)
SCALE_EXP_OFFSET = 9  # code exponent field = E + 9, E in [-9, 8]
BF16_SCALE_ADD = 237 << 7  # bf16 bits = (code << 4) + BF16_SCALE_ADD  ->  s * 2^119
FP16_SCALE_ADD = 13 << 10  # fp16 bits = (code << 7) + FP16_SCALE_ADD  ->  s * 2^7
EPILOGUE_FACTOR = 2.0**7  # the kernel's weights are e2m1 * s * 2^-7; the epilogue multiplies by gs * 2^7


def _ceil_to(x, m):
    return (x + m - 1) // m * m


def marlin_padded_sizes(n, k):
    """Logical (N, K) -> (N_pad, K_pad) of the kernel layout. K must be a multiple of 16 (the block size).

    Works on Python ints and SymInts (fake kernels call it)."""
    if k % BLOCK_SIZE != 0:
        raise ValueError(f"marlin layout: K={k} must be a multiple of {BLOCK_SIZE} (the NVFP4 block size)")
    if n < 1 or k < 1:
        raise ValueError(f"marlin layout: N={n} and K={k} must be positive")
    return _ceil_to(n, TILE_N), _ceil_to(k, K_ALIGN)


# ----------------------------------------------------------------------------------------------------
# Scale codes
# ----------------------------------------------------------------------------------------------------


def scale_codes_from_e4m3(magnitude: torch.Tensor) -> torch.Tensor:
    """|E4M3 block scale| (float32 holding exact E4M3 values, > 0) -> scale codes (uint8). Zeros give 0."""
    mant, exp = torch.frexp(magnitude.float())  # magnitude = mant * 2^exp, mant in [0.5, 1)
    e = exp - 1  # magnitude = 2^e * (2 * mant), 2 * mant in [1, 2)
    m = ((mant * 2 - 1) * 8).round().to(torch.int32)
    code = ((e + SCALE_EXP_OFFSET) << 3) | m
    return torch.where(magnitude > 0, code, torch.zeros_like(code)).to(torch.uint8)


def scale_values_from_codes(codes: torch.Tensor) -> torch.Tensor:
    """Scale codes (uint8) -> float32 block scales 2^E * (1 + M/8) (exact E4M3 values)."""
    c = codes.to(torch.int32)
    if bool((c > SCALE_CODE_MAX).any()):
        raise ValueError(f"marlin layout: scale code above {SCALE_CODE_MAX} (not a Marlin NVFP4 scale code)")
    exp = (c >> 3) - SCALE_EXP_OFFSET
    return torch.ldexp(1.0 + (c & 7).float() / 8.0, exp.float())


# ----------------------------------------------------------------------------------------------------
# Permutations between logical [..., N_pad, K_pad] codes and the tile layout
# ----------------------------------------------------------------------------------------------------
# Logical index n = nt*64 + w*16 + h*8 + tq, k = kt*16 + kh*8 + tr*2 + kl with lane t = 4*tq + tr and
# fragment value index v = 4h + 2kh + kl. Codes viewed as [..., NT, w, h, tq, KT, kh, tr, kl] are permuted
# to [..., KT, NT, tq, tr, w, h, kh, kl] (tile, lane, int32, value), then the 8 values of each int32 are put
# at their CODE_BIT_POSITIONS.
_TILE_PERM = (4, 0, 3, 6, 1, 2, 5, 7)  # positions within the 8 trailing dims, see above


def _place_code_bits(values: torch.Tensor) -> torch.Tensor:
    """[..., 8] E2M1 codes in fragment order -> [...] int32 words (CODE_BIT_POSITIONS). int32 throughout (bit 31
    wraps to the sign bit): no temporary wider than the words, so a large weight repacks in its own size."""
    word = torch.zeros(values.shape[:-1], dtype=torch.int32, device=values.device)
    for i, positions in enumerate(CODE_BIT_POSITIONS):
        v = values[..., i].to(torch.int32)
        for j, pos in enumerate(positions):
            word |= ((v >> j) & 1) << pos
    return word


def _gather_code_bits(words: torch.Tensor) -> torch.Tensor:
    """Inverse of _place_code_bits: [...] int32 -> [..., 8] uint8 codes in fragment order."""
    values = torch.zeros((*words.shape, 8), dtype=torch.uint8, device=words.device)
    for i, positions in enumerate(CODE_BIT_POSITIONS):
        for j, pos in enumerate(positions):
            values[..., i] |= (((words >> pos) & 1) << j).to(torch.uint8)
    return values


def _codes_to_tiles(codes: torch.Tensor) -> torch.Tensor:
    """[..., N_pad, K_pad] codes -> int32 [..., K_pad/16, 2*N_pad] qweight."""
    *lead, n_pad, k_pad = codes.shape
    nt, kt = n_pad // TILE_N, k_pad // TILE_K
    x = codes.reshape(*lead, nt, 4, 2, 8, kt, 2, 4, 2)
    nl = len(lead)
    x = x.permute(*range(nl), *(nl + p for p in _TILE_PERM))  # [..., KT, NT, tq, tr, w, 8 values]
    return _place_code_bits(x.reshape(*lead, kt, nt, 32, 4, 8)).reshape(*lead, kt, nt * 128)


def _tiles_to_codes(qweight: torch.Tensor) -> torch.Tensor:
    """Inverse of _codes_to_tiles: int32 [..., K_pad/16, 2*N_pad] -> [..., N_pad, K_pad] codes."""
    *lead, kt, two_n = qweight.shape
    nt = two_n // 128
    values = _gather_code_bits(qweight.reshape(*lead, kt, nt, 32, 4))
    values = values.reshape(*lead, kt, nt, 8, 4, 4, 2, 2, 2)  # [.., tq, tr, w, h, kh, kl]
    nl = len(lead)
    inv = [0] * 8
    for dst, src in enumerate(_TILE_PERM):
        inv[src] = dst
    x = values.permute(*range(nl), *(nl + p for p in inv))  # [..., NT, w, h, tq, KT, kh, tr, kl]
    return x.reshape(*lead, nt * TILE_N, kt * TILE_K)


def _scales_to_layout(codes: torch.Tensor) -> torch.Tensor:
    """[..., N_pad, K_pad/16] scale codes -> [..., K_pad/16, N_pad], permuted inside every 64 columns."""
    *lead, n_pad, kb = codes.shape
    x = codes.transpose(-1, -2).reshape(*lead, kb, n_pad // 64, 8, 8)  # column = g*64 + 8j + i: [.., g, j, i]
    return x.transpose(-1, -2).reshape(*lead, kb, n_pad).contiguous()  # byte 8i + j <- column i + 8j


def _scales_from_layout(scales: torch.Tensor) -> torch.Tensor:
    *lead, kb, n_pad = scales.shape
    x = scales.reshape(*lead, kb, n_pad // 64, 8, 8).transpose(-1, -2).reshape(*lead, kb, n_pad)
    return x.transpose(-1, -2)


# ----------------------------------------------------------------------------------------------------
# Public reference
# ----------------------------------------------------------------------------------------------------


def check_repack_inputs(w_fp4: torch.Tensor, w_sf: torch.Tensor, op: str = "marlin_repack"):
    """dtype/shape checks (no data access); returns (N, K)."""
    if w_fp4.dtype != torch.uint8:
        raise TypeError(f"{op}: w_fp4 must be uint8 (packed FP4), got {w_fp4.dtype}")
    if w_sf.dtype != torch.float8_e4m3fn:
        raise TypeError(f"{op}: w_sf must be float8_e4m3fn (linear block scales), got {w_sf.dtype}")
    if w_fp4.dim() < 2:
        raise ValueError(f"{op}: w_fp4 must be [..., N, K/2], got shape {tuple(w_fp4.shape)}")
    n, k = w_fp4.shape[-2], 2 * w_fp4.shape[-1]
    if k % BLOCK_SIZE != 0:
        raise ValueError(f"{op}: w_fp4 has K={k} (2 * last dim), which must be a multiple of {BLOCK_SIZE}")
    expected = (*w_fp4.shape[:-1], k // BLOCK_SIZE)
    if tuple(w_sf.shape) != tuple(expected):
        raise ValueError(f"{op}: w_sf has shape {tuple(w_sf.shape)}, expected {tuple(expected)} ([..., N, K/16])")
    return n, k


def fold_block_scales(w_fp4: torch.Tensor, w_sf: torch.Tensor, op: str = "marlin_repack"):
    """Codes [..., N, K] with signs of negative scales folded in and zero-scale blocks zeroed, and the
    scale codes [..., N, K/16]. Raises on NaN block scales."""
    sf = w_sf.float()
    nan = torch.isnan(sf)
    if bool(nan.any()):
        raise ValueError(f"{op}: w_sf holds {int(nan.sum())} NaN block scale(s); NVFP4 scales must be finite")
    codes = unpack_fp4(w_fp4)
    blocks = codes.reshape(*codes.shape[:-1], -1, BLOCK_SIZE)
    negative = (sf < 0).unsqueeze(-1)
    zero = (sf == 0).unsqueeze(-1)
    blocks = torch.where(negative, blocks ^ 8, blocks)
    blocks = torch.where(zero, torch.zeros_like(blocks), blocks)
    return blocks.reshape(codes.shape), scale_codes_from_e4m3(sf.abs())


def marlin_repack_reference(w_fp4: torch.Tensor, w_sf: torch.Tensor):
    """w_fp4 uint8 [..., N, K/2], w_sf e4m3 [..., N, K/16] -> (qweight int32 [..., K_pad/16, 2*N_pad],
    scales uint8 [..., K_pad/16, N_pad]) in the kernel layout described in this module's docstring."""
    n, k = check_repack_inputs(w_fp4, w_sf, "marlin_repack_reference")
    n_pad, k_pad = marlin_padded_sizes(n, k)
    codes, scodes = fold_block_scales(w_fp4, w_sf, "marlin_repack_reference")
    lead = tuple(codes.shape[:-2])
    padded = codes.new_zeros((*lead, n_pad, k_pad))
    padded[..., :n, :k] = codes
    spadded = scodes.new_zeros((*lead, n_pad, k_pad // TILE_K))
    spadded[..., :n, : k // TILE_K] = scodes
    return _codes_to_tiles(padded), _scales_to_layout(spadded)


def check_layout(qweight: torch.Tensor, scales: torch.Tensor, size_n, size_k, op: str):
    """dtype/shape checks of a repacked weight against logical sizes; returns the leading (expert) dims."""
    n_pad, k_pad = marlin_padded_sizes(size_n, size_k)
    if qweight.dtype != torch.int32:
        raise TypeError(f"{op}: qweight must be int32 (the marlin_repack layout), got {qweight.dtype}")
    if scales.dtype != torch.uint8:
        raise TypeError(f"{op}: scales must be uint8 Marlin scale codes (from marlin_repack), got {scales.dtype}")
    lead = tuple(qweight.shape[:-2])
    want_q = (*lead, k_pad // TILE_K, 2 * n_pad)
    want_s = (*lead, k_pad // TILE_K, n_pad)
    if qweight.dim() < 2 or tuple(qweight.shape) != want_q:
        raise ValueError(
            f"{op}: qweight has shape {tuple(qweight.shape)}, expected {want_q} for size_n={size_n}, size_k={size_k}"
        )
    if tuple(scales.shape) != want_s:
        raise ValueError(
            f"{op}: scales has shape {tuple(scales.shape)}, expected {want_s} for size_n={size_n}, size_k={size_k}"
        )
    return lead


def marlin_unrepack_reference(qweight: torch.Tensor, scales: torch.Tensor, size_n: int, size_k: int):
    """Kernel layout -> (w_fp4 uint8 [..., N, K/2], w_sf e4m3 [..., N, K/16]) that dequantize exactly as the
    repacked input did (folded signs stay in the codes; zero-scale blocks come back as zero codes)."""
    check_layout(qweight, scales, size_n, size_k, "marlin_unrepack_reference")
    codes = _tiles_to_codes(qweight)[..., :size_n, :size_k]
    scodes = _scales_from_layout(scales)[..., :size_n, : size_k // TILE_K]
    w_sf = scale_values_from_codes(scodes).to(torch.float8_e4m3fn)
    return pack_fp4(codes).contiguous(), w_sf.contiguous()


def marlin_dequantize(qweight, scales, global_scale, size_n: int, size_k: int, dtype=torch.float32):
    """Kernel layout -> dequantized weight [..., N, K]: e2m1 * s_b * global_scale (decode) in FP32, rounded
    once to dtype. global_scale: a scalar tensor, [N] (one per row: merged sibling linears), or [E]/[E, 1, 1]
    for expert stacks."""
    w_fp4, w_sf = marlin_unrepack_reference(qweight, scales, size_n, size_k)
    gs = torch.as_tensor(global_scale, dtype=torch.float32, device=qweight.device)
    if gs.dim() == 1 and qweight.dim() > 2 and gs.numel() == qweight.shape[0]:
        gs = gs.reshape(-1, 1, 1)
    elif qweight.dim() == 2 and gs.numel() == size_n and size_n > 1:
        gs = gs.reshape(-1, 1)
    return dequantize_nvfp4(w_fp4, w_sf, gs, dtype)
