// In-register NVFP4 dequantization for the Marlin kernels, per activation dtype (docs/kernels.md derives the
// constants; nvfp4_compile/formats/marlin.py holds the same numbers and tests them on the CPU).
//
//   nibble pair -> x2:  (q & 0x80008000) | ((q & 0x70007000) >> SHIFT)   top nibble of each 16-bit half
//                       bf16: SHIFT 6 -> e2m1 * 2^-126     fp16: SHIFT 3 -> e2m1 * 2^-14
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
  static constexpr int kNibbleShift = 6;
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
  static constexpr int kNibbleShift = 3;
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

// The E2M1 codes in the top nibble of each 16-bit half of q, as a pair of T (e2m1 * 2^-126 or * 2^-14).
template <typename T>
__device__ __forceinline__ uint32_t nibble_pair(uint32_t q) {
  return (q & 0x80008000u) | ((q & 0x70007000u) >> Dtype<T>::kNibbleShift);
}

// Scale codes in bytes `byte` and `byte + 1` of `word`, both decoded by one multiply-add: s_byte in the low
// half of the T pair, s_byte+1 in the high half (no carry crosses halves: code * MUL + ADD < 2^16).
template <typename T>
__device__ __forceinline__ uint32_t scale_pair_at(uint32_t word, uint32_t byte) {
  // prmt selector: bytes [byte, zero, byte + 1, zero] (selector 4 picks byte 0 of the zero operand).
  const uint32_t codes = __byte_perm(word, 0u, 0x4040u | byte | ((byte + 1) << 8));
  return codes * Dtype<T>::kScaleMul + Dtype<T>::kScaleAdd;
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

// One int32 of the weight layout (fragment values v0..v7 in nibble order 0,2,4,6,1,3,5,7) times its scale
// pair (scale_pair_at: column c's scale low, column c+8's high) -> the B fragments of n8 tiles (column c: b_lo,
// column c+8: b_hi).
template <typename T>
__device__ __forceinline__ void dequant_int32(uint32_t q, uint32_t scales, uint32_t (&b_lo)[2], uint32_t (&b_hi)[2]) {
  using D = Dtype<T>;
  const auto s_lo = D::low(as_pair<T>(scales)), s_hi = D::high(as_pair<T>(scales));
  auto scaled = [](uint32_t nibbles, typename D::Pair s) { return pair_bits(D::mul(as_pair<T>(nibbles), s)); };
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    // Nibbles 0 and 1 of each half by one multiply instead of two shifts: x * (2^a + 2^b) is the sum of two
    // copies of x that share no set bit (so no carries): one puts the magnitude bits at 6..8, the other the
    // sign at 15; the mask keeps those. Bit-identical to nibble_pair (tests/formats/test_marlin_layout.py).
    b_lo[0] = scaled(((q & 0x000F000Fu) * 0x1040u) & 0x81C081C0u, s_lo);  // copies << 6, << 12
    b_lo[1] = scaled(((q & 0x00F000F0u) * 0x0104u) & 0x81C081C0u, s_lo);  // copies << 2, << 8
  } else {
    b_lo[0] = scaled(nibble_pair<T>(q << 12), s_lo);  // nibbles 0,4 = v0,v1: k = r, r+1
    b_lo[1] = scaled(nibble_pair<T>(q << 8), s_lo);   // nibbles 1,5 = v2,v3: k = r+8, r+9
  }
  b_hi[0] = scaled(nibble_pair<T>(q << 4), s_hi);  // nibbles 2,6 = v4,v5
  b_hi[1] = scaled(nibble_pair<T>(q), s_hi);       // nibbles 3,7 = v6,v7
}

}  // namespace nvfp4
