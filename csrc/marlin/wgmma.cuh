// Hopper warpgroup MMA (sm_90a) with the A operand in registers: D[64 x N] += A[64 x 16] * B[16 x N], FP32
// accumulators, B read by the tensor cores from shared memory through a matrix descriptor. (wgmma_ss, both operands
// from shared memory, is here for benchmarks/wgmma_ceiling.py's control case only.)
//
// The W4A16 kernel (wgmma_kernel.cuh) computes C^T = W X^T: dequantized weights are A (warp w of the warpgroup
// supplies rows 16w..16w+15 in the mma.m16n8k16 A-fragment layout), the activation tile is B, stored K-major
// with the 128-byte swizzle (row r of 64 bf16/fp16 at r * 128, 16-byte chunk c at chunk c ^ (r % 8)).
// D: warp w, lane t holds rows 16w + t/4 (+8 for d[4i+2], d[4i+3]), columns 8i + 2(t%4) (+1 for odd d).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "ptx.cuh"  // smem_addr

// wgmma exists only in the sm_90a target; other targets (NVFP4_COMPILE_SM80) compile the kernel to a trap and
// the host refuses to launch it on devices other than SM 9.x.
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define NVFP4_HAS_WGMMA 1
#else
#define NVFP4_HAS_WGMMA 0
#endif

namespace nvfp4 {

// Descriptor of a K-major operand tile with the 128-byte swizzle: 8-row groups of 128-byte rows 1024 bytes apart
// (stride byte offset), leading byte offset unused for this layout (1), swizzle mode 1 = 128 B. The tile must
// start 1024-byte aligned; the k16 step kk inside a 64-wide row is start + 32 * kk bytes.
__device__ __forceinline__ uint64_t sw128_kmajor_desc(uint32_t smem_byte_addr) {
  return static_cast<uint64_t>((smem_byte_addr & 0x3FFFF) >> 4) | (uint64_t{1} << 16) |
         (uint64_t{1024 >> 4} << 32) | (uint64_t{1} << 62);
}

// The kernel's dynamic shared memory moved up to the 1024-byte swizzle atom (its SMEM_BYTES reserve the 1024).
__device__ __forceinline__ uint8_t* swizzle_atom_aligned(uint8_t* raw) {
  return raw + ((1024 - (smem_addr(raw) & 1023)) & 1023);
}

__device__ __forceinline__ void wgmma_fence() {
#if NVFP4_HAS_WGMMA
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#if NVFP4_HAS_WGMMA
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int PENDING>
__device__ __forceinline__ void wgmma_wait() {
#if NVFP4_HAS_WGMMA
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(PENDING) : "memory");
#endif
}
// Shared memory written by the generic proxy (cp.async, st.shared) becomes visible to the tensor cores' async
// proxy only after this fence (by the writing threads, before the barrier that publishes it).
__device__ __forceinline__ void fence_proxy_async_shared() {
#if NVFP4_HAS_WGMMA
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
// Register fences (no instruction): the compiler must treat the values as read and rewritten here. On the
// accumulators they keep reads/writes from moving across the asynchronous MMAs; on an A fragment placed after
// the wait that retires its MMA, they keep the fragment's registers from being reused while the tensor cores
// still read them (the compiler does not extend that lifetime by itself, e.g. across a loop's back edge).
template <int R>
__device__ __forceinline__ void fence_accumulators(float (&d)[R]) {
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
template <int R>
__device__ __forceinline__ void fence_fragment(uint32_t (&a)[R]) {
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+r"(a[i])::"memory");
}

// Operand lists of the wgmma asm: accumulator registers %0 .. %(N/2 - 1) in chunks of 32, then the four A
// registers and the descriptor.
#define NVFP4_D0_31                                                                                                   \
  "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"                                                            \
  "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31"
#define NVFP4_D32_63                                                                                                  \
  "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"                                                  \
  "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63"
#define NVFP4_D64_95                                                                                                  \
  "%64,%65,%66,%67,%68,%69,%70,%71,%72,%73,%74,%75,%76,%77,%78,%79,"                                                  \
  "%80,%81,%82,%83,%84,%85,%86,%87,%88,%89,%90,%91,%92,%93,%94,%95"
#define NVFP4_D96_127                                                                                                 \
  "%96,%97,%98,%99,%100,%101,%102,%103,%104,%105,%106,%107,%108,%109,%110,%111,"                                      \
  "%112,%113,%114,%115,%116,%117,%118,%119,%120,%121,%122,%123,%124,%125,%126,%127"
#define NVFP4_ACC32(o)                                                                                                \
  "+f"(d[(o) + 0]), "+f"(d[(o) + 1]), "+f"(d[(o) + 2]), "+f"(d[(o) + 3]), "+f"(d[(o) + 4]), "+f"(d[(o) + 5]),         \
  "+f"(d[(o) + 6]), "+f"(d[(o) + 7]), "+f"(d[(o) + 8]), "+f"(d[(o) + 9]), "+f"(d[(o) + 10]), "+f"(d[(o) + 11]),       \
  "+f"(d[(o) + 12]), "+f"(d[(o) + 13]), "+f"(d[(o) + 14]), "+f"(d[(o) + 15]), "+f"(d[(o) + 16]), "+f"(d[(o) + 17]),   \
  "+f"(d[(o) + 18]), "+f"(d[(o) + 19]), "+f"(d[(o) + 20]), "+f"(d[(o) + 21]), "+f"(d[(o) + 22]), "+f"(d[(o) + 23]),   \
  "+f"(d[(o) + 24]), "+f"(d[(o) + 25]), "+f"(d[(o) + 26]), "+f"(d[(o) + 27]), "+f"(d[(o) + 28]), "+f"(d[(o) + 29]),   \
  "+f"(d[(o) + 30]), "+f"(d[(o) + 31])
#define NVFP4_WGMMA_RS(N, TY, DREGS, AREGS, ...)                                                                      \
  asm volatile("{ .reg .pred p; setp.ne.b32 p, 1, 0;\n"                                                               \
               "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TY "." TY " {" DREGS "}, " AREGS                     \
               ", p, 1, 1, 0; }\n"                                                                                    \
               : __VA_ARGS__ : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc))

#define NVFP4_WGMMA_RS_N16(TY)                                                                                        \
  NVFP4_WGMMA_RS(16, TY, "%0,%1,%2,%3,%4,%5,%6,%7", "{%8,%9,%10,%11}, %12", "+f"(d[0]), "+f"(d[1]), "+f"(d[2]),        \
                 "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]))
#define NVFP4_WGMMA_RS_N64(TY)                                                                                        \
  NVFP4_WGMMA_RS(64, TY, NVFP4_D0_31, "{%32,%33,%34,%35}, %36", NVFP4_ACC32(0))
#define NVFP4_WGMMA_RS_N128(TY)                                                                                       \
  NVFP4_WGMMA_RS(128, TY, NVFP4_D0_31 "," NVFP4_D32_63, "{%64,%65,%66,%67}, %68", NVFP4_ACC32(0), NVFP4_ACC32(32))
#define NVFP4_WGMMA_RS_N256(TY)                                                                                       \
  NVFP4_WGMMA_RS(256, TY, NVFP4_D0_31 "," NVFP4_D32_63 "," NVFP4_D64_95 "," NVFP4_D96_127,                            \
                 "{%128,%129,%130,%131}, %132", NVFP4_ACC32(0), NVFP4_ACC32(32), NVFP4_ACC32(64), NVFP4_ACC32(96))

#define NVFP4_WGMMA_SS(N, TY, DREGS, DESCS, ...)                                                                      \
  asm volatile("{ .reg .pred p; setp.ne.b32 p, 1, 0;\n"                                                               \
               "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TY "." TY " {" DREGS "}, " DESCS                     \
               ", p, 1, 1, 0, 0; }\n"                                                                                 \
               : __VA_ARGS__ : "l"(desc_a), "l"(desc_b))
#define NVFP4_WGMMA_SS_N64(TY) NVFP4_WGMMA_SS(64, TY, NVFP4_D0_31, "%32, %33", NVFP4_ACC32(0))
#define NVFP4_WGMMA_SS_N128(TY)                                                                                       \
  NVFP4_WGMMA_SS(128, TY, NVFP4_D0_31 "," NVFP4_D32_63, "%64, %65", NVFP4_ACC32(0), NVFP4_ACC32(32))
#define NVFP4_WGMMA_SS_N256(TY)                                                                                       \
  NVFP4_WGMMA_SS(256, TY, NVFP4_D0_31 "," NVFP4_D32_63 "," NVFP4_D64_95 "," NVFP4_D96_127, "%128, %129",              \
                 NVFP4_ACC32(0), NVFP4_ACC32(32), NVFP4_ACC32(64), NVFP4_ACC32(96))

// D[64 x N] += A * B, both from shared memory (descriptors, both K-major), accumulate always. Not used by the
// kernels; benchmarks/wgmma_ceiling.py compares it with wgmma_rs under the same ALU load.
template <typename T, int N>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b) {
#if NVFP4_HAS_WGMMA
  constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
  if constexpr (N == 64) {
    if constexpr (kBf16) NVFP4_WGMMA_SS_N64("bf16"); else NVFP4_WGMMA_SS_N64("f16");
  } else if constexpr (N == 128) {
    if constexpr (kBf16) NVFP4_WGMMA_SS_N128("bf16"); else NVFP4_WGMMA_SS_N128("f16");
  } else {
    static_assert(N == 256, "instantiated widths: 64, 128, 256");
    if constexpr (kBf16) NVFP4_WGMMA_SS_N256("bf16"); else NVFP4_WGMMA_SS_N256("f16");
  }
#endif
}

#undef NVFP4_WGMMA_SS_N64
#undef NVFP4_WGMMA_SS_N128
#undef NVFP4_WGMMA_SS_N256
#undef NVFP4_WGMMA_SS

// D[64 x N] += A (this thread's mma A fragment of its warp's 16 rows) * B (descriptor), accumulate always.
template <typename T, int N>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc) {
#if NVFP4_HAS_WGMMA
  constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
  if constexpr (N == 16) {
    if constexpr (kBf16) NVFP4_WGMMA_RS_N16("bf16"); else NVFP4_WGMMA_RS_N16("f16");
  } else if constexpr (N == 64) {
    if constexpr (kBf16) NVFP4_WGMMA_RS_N64("bf16"); else NVFP4_WGMMA_RS_N64("f16");
  } else if constexpr (N == 128) {
    if constexpr (kBf16) NVFP4_WGMMA_RS_N128("bf16"); else NVFP4_WGMMA_RS_N128("f16");
  } else {
    static_assert(N == 256, "instantiated widths: 16, 64, 128, 256");
    if constexpr (kBf16) NVFP4_WGMMA_RS_N256("bf16"); else NVFP4_WGMMA_RS_N256("f16");
  }
#endif
}

#undef NVFP4_WGMMA_RS_N16
#undef NVFP4_WGMMA_RS_N64
#undef NVFP4_WGMMA_RS_N128
#undef NVFP4_WGMMA_RS_N256
#undef NVFP4_WGMMA_RS
#undef NVFP4_ACC32
#undef NVFP4_D0_31
#undef NVFP4_D32_63
#undef NVFP4_D64_95
#undef NVFP4_D96_127

}  // namespace nvfp4
