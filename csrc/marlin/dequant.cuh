// In-register NVFP4 dequantization for the Marlin kernels, per activation dtype (docs/kernels.md derives the
// constants; nvfp4_compile/formats/marlin.py holds the same numbers and tests them on the CPU).
//
//   nibble pair -> x2:  (q & 0x80008000) | ((q & 0x70007000) >> SHIFT)   top nibble of each 16-bit half
//                       bf16: SHIFT 6 -> e2m1 * 2^-126     fp16: SHIFT 3 -> e2m1 * 2^-14
//   scale code  -> x2:  code * MUL + ADD (both halves at once)
//                       bf16: (code << 4) + (237 << 7) -> s * 2^119     fp16: (code << 7) + (13 << 10) -> s * 2^7
//   product (exact):    e2m1 * s * 2^-7; the epilogue multiplies the FP32 accumulator by global_scale * 2^7.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
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

  __device__ __forceinline__ static uint32_t mul2(uint32_t a, uint32_t b) {
    uint32_t d;
    // fma with -0 addend == mul (keeps the sign of a zero product); subnormal inputs are honoured.
    asm("fma.rn.bf16x2 %0, %1, %2, %3;\n" : "=r"(d) : "r"(a), "r"(b), "r"(0x80008000u));
    return d;
  }
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

  __device__ __forceinline__ static uint32_t mul2(uint32_t a, uint32_t b) {
    uint32_t d;
    asm("mul.rn.f16x2 %0, %1, %2;\n" : "=r"(d) : "r"(a), "r"(b));
    return d;
  }
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

// Scale code in byte `byte` of `word`, decoded into both halves of a T pair (s * 2^119 or s * 2^7).
template <typename T>
__device__ __forceinline__ uint32_t scale_pair_at(uint32_t word, uint32_t byte) {
  // prmt selector: bytes [byte, zero, byte, zero] (selector 4 picks byte 0 of the zero operand).
  const uint32_t code2 = __byte_perm(word, 0u, 0x4040u | byte | (byte << 8));
  return code2 * Dtype<T>::kScaleMul + Dtype<T>::kScaleAdd;
}
template <typename T, int BYTE>
__device__ __forceinline__ uint32_t scale_pair(uint32_t word) {
  return scale_pair_at<T>(word, BYTE);
}

// One int32 of the weight layout (fragment values v0..v7 in nibble order 0,2,4,6,1,3,5,7) times its two
// scale pairs -> the B fragments of n8 tiles (column c: b_lo, column c+8: b_hi).
template <typename T>
__device__ __forceinline__ void dequant_int32(uint32_t q, uint32_t s_lo, uint32_t s_hi, uint32_t (&b_lo)[2],
                                              uint32_t (&b_hi)[2]) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    // Nibbles 0 and 1 of each half by one multiply instead of two shifts: x * (2^a + 2^b) is the sum of two
    // copies of x that share no set bit (so no carries): one puts the magnitude bits at 6..8, the other the
    // sign at 15; the mask keeps those. Bit-identical to nibble_pair (tests/formats/test_marlin_layout.py).
    b_lo[0] = Dtype<T>::mul2(((q & 0x000F000Fu) * 0x1040u) & 0x81C081C0u, s_lo);  // copies << 6, << 12
    b_lo[1] = Dtype<T>::mul2(((q & 0x00F000F0u) * 0x0104u) & 0x81C081C0u, s_lo);  // copies << 2, << 8
  } else {
    b_lo[0] = Dtype<T>::mul2(nibble_pair<T>(q << 12), s_lo);  // nibbles 0,4 = v0,v1: k = r, r+1
    b_lo[1] = Dtype<T>::mul2(nibble_pair<T>(q << 8), s_lo);   // nibbles 1,5 = v2,v3: k = r+8, r+9
  }
  b_hi[0] = Dtype<T>::mul2(nibble_pair<T>(q << 4), s_hi);  // nibbles 2,6 = v4,v5
  b_hi[1] = Dtype<T>::mul2(nibble_pair<T>(q), s_hi);       // nibbles 3,7 = v6,v7
}

}  // namespace nvfp4
