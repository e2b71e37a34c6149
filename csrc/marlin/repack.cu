// nvfp4_C::marlin_repack: checkpoint NVFP4 (packed E2M1 + E4M3 block scales, linear layout) -> the Marlin
// layout of nvfp4_compile/formats/marlin.py, byte for byte (tests/gpu/test_marlin_gemm.py compares them).
// One thread per output int32 (weights) and one per output byte (scale codes); leading dims are experts.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>

#include "dequant.cuh"
#include "marlin.h"

namespace nvfp4 {

namespace {

constexpr int kThreads = 256;

// |E4M3| -> scale code ((E + 9) << 3) | M with subnormals renormalized; zero -> 0.
__device__ __forceinline__ uint32_t scale_code(uint8_t e4m3) {
  const uint32_t exp = (e4m3 >> 3) & 15u, man = e4m3 & 7u;
  if (exp != 0) return ((exp + 2u) << 3) | man;
  if (man == 0) return 0;  // zero scale (its block's codes are zeroed)
  // Subnormal man * 2^-9 = 2^(p-9) * (1 + M/8) with p the top set bit of man: 3 -> 1.5 * 2^-8, 5 -> 1.25 * 2^-7.
  const uint32_t top = 31u - __clz(man);
  return (top << 3) | ((man << (3u - top)) & 7u);
}

// Codes of bytes holding k = kk, kk+1 of row `row`, with the block scale's sign folded in and zero-scale
// blocks zeroed; (lo, hi) = the byte's low and high nibble. Rows/columns outside [n, k] are zero (padding).
__device__ __forceinline__ void folded_pair(const uint8_t* w, const uint8_t* sf, int64_t row, int64_t kk,
                                            int64_t n, int64_t k, uint32_t& lo, uint32_t& hi) {
  lo = hi = 0;
  if (row >= n || kk >= k) return;
  const uint8_t s = sf[row * (k / 16) + kk / 16];
  if ((s & 0x7F) == 0) return;
  const uint32_t sign = (s & 0x80) ? 8u : 0u;
  const uint8_t byte = w[row * (k / 2) + kk / 2];
  lo = (byte & 15u) ^ sign;
  hi = (byte >> 4) ^ sign;
}

__global__ void repack_weights_kernel(const uint8_t* __restrict__ w, const uint8_t* __restrict__ sf,
                                      int32_t* __restrict__ q, int64_t n, int64_t k, int64_t n_pad,
                                      int64_t k_pad, int64_t total) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= total) return;
  // idx = ((e * KT + kt) * NT + nt) * 128 + 4 * t + wi: also the output's linear index.
  const int wi = idx & 3, t = (idx >> 2) & 31;
  const int64_t nt_all = n_pad / 64, kt_all = k_pad / 16;
  int64_t rest = idx >> 7;
  const int64_t nt = rest % nt_all;
  rest /= nt_all;
  const int64_t kt = rest % kt_all;
  const int64_t e = rest / kt_all;
  const uint8_t* we = w + e * n * (k / 2);
  const uint8_t* se = sf + e * n * (k / 16);
  const int64_t c = nt * 64 + 16 * wi + t / 4, r = kt * 16 + 2 * (t % 4);
  uint32_t v[8];
  folded_pair(we, se, c, r, n, k, v[0], v[1]);
  folded_pair(we, se, c, r + 8, n, k, v[2], v[3]);
  folded_pair(we, se, c + 8, r, n, k, v[4], v[5]);
  folded_pair(we, se, c + 8, r + 8, n, k, v[6], v[7]);
  q[idx] = static_cast<int32_t>(place_codes(v));
}

__global__ void repack_scales_kernel(const uint8_t* __restrict__ sf, uint8_t* __restrict__ s, int64_t n,
                                     int64_t k, int64_t n_pad, int64_t k_pad, int64_t total) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= total) return;
  const int64_t pos = idx % n_pad, rest = idx / n_pad;
  const int64_t kb = rest % (k_pad / 16), e = rest / (k_pad / 16);
  // Inside every 64 columns, byte 8i + j holds column i + 8j.
  const int64_t within = pos % 64, col = pos - within + within / 8 + 8 * (within % 8);
  uint32_t code = 0;
  if (col < n && kb < k / 16) code = scale_code(sf[(e * n + col) * (k / 16) + kb]);
  s[idx] = static_cast<uint8_t>(code);
}

int64_t ceil_to(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

unsigned blocks_for(int64_t total) { return static_cast<unsigned>((total + kThreads - 1) / kThreads); }

}  // namespace

std::tuple<at::Tensor, at::Tensor> marlin_repack(const at::Tensor& w_fp4, const at::Tensor& w_sf) {
  TORCH_CHECK(w_fp4.is_cuda() && w_sf.is_cuda() && w_fp4.device() == w_sf.device(),
              "nvfp4_C::marlin_repack: w_fp4 and w_sf must be on the same CUDA device");
  TORCH_CHECK(w_fp4.scalar_type() == at::kByte && w_fp4.dim() >= 2 && w_fp4.is_contiguous(),
              "nvfp4_C::marlin_repack: w_fp4 must be contiguous uint8 [..., N, K/2]");
  TORCH_CHECK(w_sf.scalar_type() == at::kFloat8_e4m3fn && w_sf.is_contiguous(),
              "nvfp4_C::marlin_repack: w_sf must be contiguous float8_e4m3fn [..., N, K/16]");
  const int64_t n = w_fp4.size(-2), k = 2 * w_fp4.size(-1);
  TORCH_CHECK(k % 16 == 0 && n > 0, "nvfp4_C::marlin_repack: K must be a positive multiple of 16");
  std::vector<int64_t> lead(w_fp4.sizes().begin(), w_fp4.sizes().end() - 2);
  std::vector<int64_t> sf_shape = lead;
  sf_shape.push_back(n);
  sf_shape.push_back(k / 16);
  TORCH_CHECK(w_sf.sizes().vec() == sf_shape, "nvfp4_C::marlin_repack: w_sf must be [..., N, K/16]");
  int64_t experts = 1;
  for (int64_t d : lead) experts *= d;
  const int64_t n_pad = ceil_to(n, 64), k_pad = ceil_to(k, 64);

  std::vector<int64_t> q_shape = lead, s_shape = lead;
  q_shape.push_back(k_pad / 16);
  q_shape.push_back(2 * n_pad);
  s_shape.push_back(k_pad / 16);
  s_shape.push_back(n_pad);
  const c10::cuda::CUDAGuard guard(w_fp4.device());
  at::Tensor q = at::empty(q_shape, w_fp4.options().dtype(at::kInt));
  at::Tensor s = at::empty(s_shape, w_fp4.options().dtype(at::kByte));
  if (experts == 0) return {q, s};
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const uint8_t* sf = reinterpret_cast<const uint8_t*>(w_sf.data_ptr());
  const int64_t q_total = experts * (k_pad / 16) * 2 * n_pad;
  repack_weights_kernel<<<blocks_for(q_total), kThreads, 0, stream>>>(w_fp4.data_ptr<uint8_t>(), sf,
                                                                      q.data_ptr<int32_t>(), n, k, n_pad, k_pad,
                                                                      q_total);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t s_total = experts * (k_pad / 16) * n_pad;
  repack_scales_kernel<<<blocks_for(s_total), kThreads, 0, stream>>>(sf, s.data_ptr<uint8_t>(), n, k, n_pad,
                                                                     k_pad, s_total);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {q, s};
}

}  // namespace nvfp4
