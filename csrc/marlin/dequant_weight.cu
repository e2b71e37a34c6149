// nvfp4_C::marlin_dequantize: Marlin layout (nvfp4_compile/formats/marlin.py) -> dense weight [N, K] in
// bf16/fp16 = e2m1 * s_b * global_scale computed in FP32 and rounded once, the same values as
// formats.marlin.marlin_dequantize. It feeds the "dequant" GEMM tactic (this weight + cuBLAS, docs/tactics.md)
// and, for an expert stack [E, ...] with one global scale per expert (blockIdx.z = expert), the MoE "dequant"
// tactic (the stack + torch._grouped_mm, docs/moe.md).
//
// One CTA (8 warps) covers one 64-row strip of W (one weight tile column nt) x 8 k16 rows (128 k): warp w
// dequantizes tile (kt0 + w, nt) from one 16-byte weight load and one 8-byte scale-code load per lane into
// shared memory, then the CTA writes the 64 x 128 block with 16-byte stores (256 contiguous bytes per row).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "dequant.cuh"
#include "marlin.h"

namespace nvfp4 {

namespace {

constexpr int kWarps = 8;  // k16 rows (tiles) per CTA
constexpr int kThreads = 32 * kWarps;
constexpr int kBlockK = 16 * kWarps;
constexpr int kRowStride = kBlockK + 8;  // shared row stride (elements): conflict-free pair stores

// E2M1 code (sign in bit 3) -> its float value, exactly: e == 0 is 0 or 0.5, else 2^(e-1) * (1 + m/2).
__device__ __forceinline__ float e2m1_value(uint32_t code) {
  const uint32_t e = (code >> 1) & 3u, m = code & 1u;
  const uint32_t bits = e ? ((e + 126u) << 23) | (m << 22) : (m ? 0x3F000000u : 0u);
  return __uint_as_float(bits | ((code & 8u) << 28));
}

// Scale code ((E + 9) << 3) | M -> 2^E * (1 + M/8), exactly (formats.marlin.scale_values_from_codes).
__device__ __forceinline__ float scale_value(uint32_t code) {
  return __uint_as_float((((code >> 3) + 118u) << 23) | ((code & 7u) << 20));
}

template <typename T>
struct Pair;
template <>
struct Pair<__nv_bfloat16> {
  using type = __nv_bfloat162;
  __device__ __forceinline__ static type make(float a, float b) {
    return __halves2bfloat162(__float2bfloat16_rn(a), __float2bfloat16_rn(b));
  }
};
template <>
struct Pair<__half> {
  using type = __half2;
  __device__ __forceinline__ static type make(float a, float b) {
    return __halves2half2(__float2half_rn(a), __float2half_rn(b));
  }
};

// e2m1 * s (exact in FP32), then * d: one FP32 rounding, then one rounding to T, as the torch reference.
__device__ __forceinline__ float dequant(uint32_t code, float s, float d) {
  return __fmul_rn(__fmul_rn(e2m1_value(code), s), d);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) marlin_dequantize_kernel(const int4* __restrict__ q,
                                                                     const uint8_t* __restrict__ s,
                                                                     const float* __restrict__ global_scale,
                                                                     T* __restrict__ w, int n, int k, int n_pad,
                                                                     int k16_rows, int gs_per_row) {
  __shared__ __align__(16) T tile[64 * kRowStride];
  // Expert blockIdx.z of a stack: its weights, scale codes, output and global scale follow one another.
  const int64_t expert = blockIdx.z;
  q += expert * k16_rows * (n_pad / 2);
  s += expert * k16_rows * n_pad;
  w += expert * n * k;
  global_scale += expert;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int nt = blockIdx.x;
  const int kt = blockIdx.y * kWarps + warp;
  if (kt < k16_rows) {
    const float d0 = __ldg(global_scale);
    // Tile (kt, nt) is 128 int32 = 32 int4 at row kt; lane t owns int32 4t + j, j = 0..3 (one int4).
    const int4 words = __ldg(q + static_cast<int64_t>(kt) * (n_pad / 2) + nt * 32 + lane);
    // Scale codes of columns t/4 + 8j (j = 0..7) are bytes 8 * (t/4) + j of the tile's 64 bytes.
    const uint2 codes = __ldg(reinterpret_cast<const uint2*>(s + static_cast<int64_t>(kt) * n_pad + nt * 64) +
                              (lane >> 2));
    const uint32_t word[4] = {static_cast<uint32_t>(words.x), static_cast<uint32_t>(words.y),
                              static_cast<uint32_t>(words.z), static_cast<uint32_t>(words.w)};
    const int k_local = warp * 16 + 2 * (lane & 3);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        // Int32 j holds columns c = 16j + t/4 (values v0..v3) and c + 8 (v4..v7), k offsets {0, 1, 8, 9}.
        const int col = 2 * j + h;
        const float sv = scale_value(((col < 4 ? codes.x : codes.y) >> (8 * (col & 3))) & 0xFFu);
        // Per-row scale (merged siblings): rows past n are padding, never stored; clamp the read.
        const float d = gs_per_row ? __ldg(global_scale + min(nt * 64 + 16 * j + 8 * h + (lane >> 2), n - 1)) : d0;
        uint32_t c[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) c[i] = code_at(word[j], 4 * h + i);
        using P = typename Pair<T>::type;
        P* row = reinterpret_cast<P*>(tile + (16 * j + 8 * h + (lane >> 2)) * kRowStride + k_local);
        row[0] = Pair<T>::make(dequant(c[0], sv, d), dequant(c[1], sv, d));
        row[4] = Pair<T>::make(dequant(c[2], sv, d), dequant(c[3], sv, d));  // k + 8, k + 9
      }
    }
  }
  __syncthreads();
  const int k0 = blockIdx.y * kBlockK;
  constexpr int kChunks = kBlockK / 8;  // 16-byte chunks per row
  for (int i = threadIdx.x; i < 64 * kChunks; i += kThreads) {
    const int r = i / kChunks, c = i % kChunks;
    const int row = nt * 64 + r, col = k0 + c * 8;
    // K % 16 == 0: a chunk of 8 columns is wholly inside or wholly outside [0, k).
    if (row < n && col < k) {
      *reinterpret_cast<int4*>(w + static_cast<int64_t>(row) * k + col) =
          *reinterpret_cast<const int4*>(tile + r * kRowStride + c * 8);
    }
  }
}

int64_t ceil_to(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

bool aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

}  // namespace

at::Tensor marlin_dequantize(const at::Tensor& qweight, const at::Tensor& scales, const at::Tensor& global_scale,
                             int64_t size_n, int64_t size_k, at::ScalarType dtype) {
  TORCH_CHECK(dtype == at::kBFloat16 || dtype == at::kHalf, "nvfp4_C::marlin_dequantize: dtype must be bf16/fp16");
  TORCH_CHECK(size_k % 16 == 0 && size_k > 0 && size_n > 0,
              "nvfp4_C::marlin_dequantize: size_k must be a positive multiple of 16 and size_n positive");
  TORCH_CHECK(size_n < (int64_t{1} << 30) && size_k < (int64_t{1} << 30),
              "nvfp4_C::marlin_dequantize: sizes above 2^30 are not supported");
  const int64_t n_pad = ceil_to(size_n, 64), k_pad = ceil_to(size_k, 64);
  // A stack [E, ...] (experts) has one global scale per expert; a single weight one, or one per row.
  const bool stack = qweight.dim() == 3;
  const int64_t experts = stack ? qweight.size(0) : 1;
  TORCH_CHECK(qweight.is_cuda() && qweight.scalar_type() == at::kInt && (qweight.dim() == 2 || stack) &&
                  experts >= 1 && experts <= 65535 && qweight.size(-2) == k_pad / 16 &&
                  qweight.size(-1) == 2 * n_pad && qweight.is_contiguous() && aligned16(qweight),
              "nvfp4_C::marlin_dequantize: qweight must be contiguous CUDA int32 [K_pad/16, 2*N_pad] or "
              "[E, K_pad/16, 2*N_pad] (1 <= E <= 65535), 16-byte aligned");
  TORCH_CHECK(scales.scalar_type() == at::kByte && scales.dim() == qweight.dim() &&
                  (!stack || scales.size(0) == experts) && scales.size(-2) == k_pad / 16 && scales.size(-1) == n_pad &&
                  scales.is_contiguous() && reinterpret_cast<uintptr_t>(scales.data_ptr()) % 8 == 0,
              "nvfp4_C::marlin_dequantize: scales must be contiguous uint8 [(E,) K_pad/16, N_pad] like qweight, "
              "8-byte aligned");
  TORCH_CHECK(global_scale.scalar_type() == at::kFloat && global_scale.is_contiguous() &&
                  (stack ? global_scale.numel() == experts
                         : (global_scale.numel() == 1 || global_scale.numel() == size_n)),
              "nvfp4_C::marlin_dequantize: global_scale must be float32 with one value or size_n (one per row), "
              "or one per expert for a stack");
  const auto device = qweight.device();
  TORCH_CHECK(scales.device() == device && global_scale.device() == device,
              "nvfp4_C::marlin_dequantize: all tensors must be on qweight's device");
  const int64_t k16_rows = k_pad / 16;
  const int64_t grid_y = (k16_rows + kWarps - 1) / kWarps;
  TORCH_CHECK(grid_y <= 65535, "nvfp4_C::marlin_dequantize: size_k too large for one launch");

  const c10::cuda::CUDAGuard guard(device);
  at::Tensor w = stack ? at::empty({experts, size_n, size_k}, qweight.options().dtype(dtype))
                       : at::empty({size_n, size_k}, qweight.options().dtype(dtype));
  const dim3 grid(static_cast<unsigned>(n_pad / 64), static_cast<unsigned>(grid_y), static_cast<unsigned>(experts));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index());
  const auto* q = reinterpret_cast<const int4*>(qweight.data_ptr<int32_t>());
  const float* gs = global_scale.data_ptr<float>();
  const int per_row = !stack && global_scale.numel() > 1;
  const int n = static_cast<int>(size_n), k = static_cast<int>(size_k);
  if (dtype == at::kBFloat16) {
    marlin_dequantize_kernel<__nv_bfloat16><<<grid, kThreads, 0, stream>>>(
        q, scales.data_ptr<uint8_t>(), gs, reinterpret_cast<__nv_bfloat16*>(w.data_ptr()), n, k,
        static_cast<int>(n_pad), static_cast<int>(k16_rows), per_row);
  } else {
    marlin_dequantize_kernel<__half><<<grid, kThreads, 0, stream>>>(
        q, scales.data_ptr<uint8_t>(), gs, reinterpret_cast<__half*>(w.data_ptr()), n, k, static_cast<int>(n_pad),
        static_cast<int>(k16_rows), per_row);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return w;
}

}  // namespace nvfp4
