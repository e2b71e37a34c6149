// In-register NVFP4 dequantization for the Marlin kernels, per activation dtype (docs/kernels.md derives the
// constants; nvfp4_compile/formats/marlin.py holds the same numbers and tests them on the CPU).
//
//   code pair -> x2:    each E2M1 code as T bits, magnitude at 6..8 (bf16: e2m1 * 2^-126) or 9..11 (fp16:
//                       e2m1 * 2^-14), sign at 15, taken from the layout's bit placement (code_bit_position)
//   scale codes -> x2:  codes * MUL + ADD (two codes, one per 16-bit half, decoded at once)
//                       bf16: (code << 4) + (237 << 7) -> s * 2^119     fp16: (code << 7) + (13 << 10) -> s * 2^7
//                       each product takes one half of that pair as both its operands (HMUL2 .H0_H0 / .H1_H1)
//   product (exact):    e2m1 * s * 2^-7; the epilogue multiplies the FP32 accumulator by global_scale * 2^7.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace nvfp4 {

constexpr float kEpilogueFactor = 128.0f;  // 2^7, formats/marlin.py EPILOGUE_FACTOR

template <typename T>
struct Dtype;

template <>
struct Dtype<__nv_bfloat16> {
  static constexpr uint32_t kScaleMul = 16u;
  static constexpr uint32_t kScaleAdd = (237u << 7) * 0x10001u;

  using Pair = __nv_bfloat162;
  // Intrinsics, not inline asm: ptxas folds the half broadcast into the multiply's operand only for these.
  // (sm_90: mul.rn.bf16x2; sm_80: fma.rn with a -0 addend, which keeps the sign of a zero product.)
  __device__ __forceinline__ static Pair mul(Pair a, Pair b) { return __hmul2_rn(a, b); }
  __device__ __forceinline__ static Pair low(Pair a) { return __low2bfloat162(a); }
  __device__ __forceinline__ static Pair high(Pair a) { return __high2bfloat162(a); }
  __device__ __forceinline__ static void mma(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
  __device__ __forceinline__ static __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
  __device__ __forceinline__ static float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
};

template <>
struct Dtype<__half> {
  static constexpr uint32_t kScaleMul = 128u;
  static constexpr uint32_t kScaleAdd = (13u << 10) * 0x10001u;

  using Pair = __half2;
  __device__ __forceinline__ static Pair mul(Pair a, Pair b) { return __hmul2_rn(a, b); }
  __device__ __forceinline__ static Pair low(Pair a) { return __low2half2(a); }
  __device__ __forceinline__ static Pair high(Pair a) { return __high2half2(a); }
  __device__ __forceinline__ static void mma(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
  __device__ __forceinline__ static __half from_float(float x) { return __float2half_rn(x); }
  __device__ __forceinline__ static float to_float(__half x) { return __half2float(x); }
};

// The weight layout's bit placement (formats/marlin.py CODE_BIT_POSITIONS, which explains it): bit j (m0, e0,
// e1, sign) of fragment value v of an int32 sits at word bit code_bit_position(v, j). Value pair p = (v[2p],
// v[2p+1]) is one register of T pairs; pair 0 sits where BF16 wants it, pairs 2 and 3 rotated by 3 and 6 bits,
// pair 1 in the four bits left per half.
// (A function, not a namespace-scope array: device code may not read host variables; the unrolled loops below
// fold every call to a constant.)
__host__ __device__ constexpr int code_bit_position(int v, int j) {
  constexpr int kCodeBitPosition[8][4] = {{6, 7, 8, 15},   {22, 23, 24, 31}, {3, 4, 0, 1},     {19, 20, 16, 17},
                                          {9, 10, 11, 18}, {25, 26, 27, 2},  {12, 13, 14, 21}, {28, 29, 30, 5}};
  return kCodeBitPosition[v][j];
}

// Eight 4-bit codes (fragment order) -> one int32 of the layout (the repack), and back (the dequantize op).
__host__ __device__ __forceinline__ uint32_t place_codes(const uint32_t (&v)[8]) {
  uint32_t word = 0;
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) word |= ((v[i] >> j) & 1u) << code_bit_position(i, j);
  return word;
}
__host__ __device__ __forceinline__ uint32_t code_at(uint32_t word, int v) {
  uint32_t code = 0;
#pragma unroll
  for (int j = 0; j < 4; ++j) code |= ((word >> code_bit_position(v, j)) & 1u) << j;
  return code;
}

__device__ __forceinline__ uint32_t rotr(uint32_t q, int bits) { return __funnelshift_r(q, q, bits); }

// The four code pairs of an int32 as T pairs (e2m1 * 2^-126 / 2^-14), in pair order.
template <typename T>
__device__ __forceinline__ void code_pairs(uint32_t q, uint32_t (&pair)[4]) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    // Magnitude at 6..8, sign at 15 of each half: 8 ALU instructions. Pair 1: the multiply adds copies of the
    // masked bits shifted by 3 (m0, e0), 8 (e1) and 14 (sign) that share no set bit, so nothing carries.
    constexpr uint32_t kKeep = 0x81C081C0u;
    pair[0] = q & kKeep;
    pair[1] = ((q & 0x001B001Bu) * 0x4108u) & kKeep;
    pair[2] = rotr(q, 3) & kKeep;
    pair[3] = rotr(q, 6) & kKeep;
  } else {
    // Magnitude at 9..11, sign at 15: a magnitude and its sign move by different amounts (14 instructions).
    constexpr uint32_t kMag = 0x0E000E00u, kSign = 0x80008000u;
    const uint32_t r3 = rotr(q, 3);
    pair[0] = ((q & 0x81C081C0u) * 9u) & (kMag | kSign);                     // copies << 0 and << 3
    pair[1] = (((q & 0x00190019u) * 0x840u) & kMag) | ((q << 14) & kSign);  // copies << 6 and << 11
    pair[2] = (q & kMag) | (r3 & kSign);
    pair[3] = (r3 & kMag) | (rotr(q, 6) & kSign);
  }
}

// Scale codes in bytes `byte` and `byte + 1` of `word`, both decoded by one multiply-add: s_byte in the low
// half of the T pair, s_byte+1 in the high half (no carry crosses halves: code * MUL + ADD < 2^16).
// The multiplier comes from constant memory, which the compiler cannot fold: with the literal (16 or 128) it
// makes the multiply-add a shift-add (LEA) on the ALU pipe, which the dequantization already saturates at M = 64
// (docs/kernels.md "Eleventh session"); as a multiply-add of a register it is an IMAD on the FMA pipe.
static __constant__ uint32_t kScaleMulOperand[2] = {Dtype<__nv_bfloat16>::kScaleMul, Dtype<__half>::kScaleMul};
template <typename T>
__device__ __forceinline__ uint32_t scale_pair_at(uint32_t word, uint32_t byte) {
  // prmt selector: bytes [byte, zero, byte + 1, zero] (selector 4 picks byte 0 of the zero operand).
  const uint32_t codes = __byte_perm(word, 0u, 0x4040u | byte | ((byte + 1) << 8));
  return codes * kScaleMulOperand[std::is_same_v<T, __half>] + Dtype<T>::kScaleAdd;
}

// Register bits <-> a T pair.
template <typename T>
__device__ __forceinline__ typename Dtype<T>::Pair as_pair(uint32_t bits) {
  typename Dtype<T>::Pair p;
  memcpy(&p, &bits, sizeof(bits));
  return p;
}
template <typename P>
__device__ __forceinline__ uint32_t pair_bits(P p) {
  uint32_t bits;
  memcpy(&bits, &p, sizeof(bits));
  return bits;
}

// One int32 of the weight layout (fragment values v0..v7, code_bit_position) times its scale pair (scale_pair_at:
// column c's scale low, column c+8's high) -> the B fragments of n8 tiles (column c: b_lo, column c+8: b_hi).
template <typename T>
__device__ __forceinline__ void dequant_int32(uint32_t q, uint32_t scales, uint32_t (&b_lo)[2], uint32_t (&b_hi)[2]) {
  using D = Dtype<T>;
  const auto s_lo = D::low(as_pair<T>(scales)), s_hi = D::high(as_pair<T>(scales));
  auto scaled = [](uint32_t codes, typename D::Pair s) { return pair_bits(D::mul(as_pair<T>(codes), s)); };
  uint32_t pair[4];
  code_pairs<T>(q, pair);
  b_lo[0] = scaled(pair[0], s_lo);  // v0, v1: column c, k = r, r+1
  b_lo[1] = scaled(pair[1], s_lo);  // v2, v3: column c, k = r+8, r+9
  b_hi[0] = scaled(pair[2], s_hi);  // v4, v5: column c+8
  b_hi[1] = scaled(pair[3], s_hi);  // v6, v7
}

}  // namespace nvfp4
