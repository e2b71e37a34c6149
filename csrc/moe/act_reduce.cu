// The two elementwise stages of marlin_moe around the grouped GEMMs, FP32 math, 16-byte accesses:
//   activation  h [M*k, 2I] -> silu(h[:, :I]) * h[:, I:] (gate first), or h [M*k, I] -> relu(h)^2, rounded to
//               the activation dtype (the value the second GEMM reads, as in the reference);
//   reduce      y [M*k, H] -> out[m] = sum_s topk_weights[m, s] * y[m*k + s] in FP32, one rounding. The router
//               weights are only read (no fused epilogue, nothing shared is written); slots whose expert id is
//               outside [0, E) were routed nowhere and add nothing.
// The gate/up halves are indexed by the logical I, so the padding of the repacked [2I, H] stack (at its end,
// rows 2I..N_pad) never shifts the up half: the first GEMM stores only the 2I logical columns.
#include <c10/cuda/CUDAException.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "marlin/dequant.cuh"
#include "moe/moe.h"

namespace nvfp4 {

namespace {

constexpr int kThreads = 256;
constexpr int kVec = 8;  // elements per 16-byte access

template <typename T>
struct Vec {
  T v[kVec];
};

template <typename T>
__device__ __forceinline__ Vec<T> load_vec(const T* p) {
  Vec<T> r;
  *reinterpret_cast<int4*>(r.v) = __ldg(reinterpret_cast<const int4*>(p));
  return r;
}

template <typename T>
__device__ __forceinline__ void store_vec(T* p, const float (&f)[kVec]) {
  __align__(16) T out[kVec];
#pragma unroll
  for (int e = 0; e < kVec; ++e) out[e] = Dtype<T>::from_float(f[e]);
  *reinterpret_cast<int4*>(p) = *reinterpret_cast<const int4*>(out);
}

template <typename T, bool kGated>
__global__ void __launch_bounds__(kThreads) moe_activation_kernel(const T* h, T* act, int64_t rows, int inter) {
  const int vecs = inter / kVec;
  const int64_t total = rows * vecs;
  const int64_t ld_h = kGated ? 2 * static_cast<int64_t>(inter) : inter;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t row = i / vecs;
    const int col = static_cast<int>(i % vecs) * kVec;
    const Vec<T> a = load_vec(h + row * ld_h + col);
    float out[kVec];
    if constexpr (kGated) {
      const Vec<T> u = load_vec(h + row * ld_h + inter + col);
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        const float g = Dtype<T>::to_float(a.v[e]);
        out[e] = g / (1.0f + expf(-g)) * Dtype<T>::to_float(u.v[e]);
      }
    } else {
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        const float r = fmaxf(Dtype<T>::to_float(a.v[e]), 0.0f);
        out[e] = r * r;
      }
    }
    store_vec(act + row * inter + col, out);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) moe_reduce_kernel(const T* y, const void* topk_ids, bool ids64,
                                                              const void* topk_weights, bool weights_fp32,
                                                              int num_experts, T* out, int64_t m, int topk,
                                                              int hidden) {
  const int vecs = hidden / kVec;
  const int64_t total = m * vecs;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t token = i / vecs;
    const int col = static_cast<int>(i % vecs) * kVec;
    float acc[kVec];
#pragma unroll
    for (int e = 0; e < kVec; ++e) acc[e] = 0.0f;
    for (int s = 0; s < topk; ++s) {
      const int64_t id = token * topk + s;
      const int64_t expert = ids64 ? static_cast<const int64_t*>(topk_ids)[id] : static_cast<const int32_t*>(topk_ids)[id];
      if (expert < 0 || expert >= num_experts) continue;
      const float w = weights_fp32 ? static_cast<const float*>(topk_weights)[id]
                                   : Dtype<T>::to_float(static_cast<const T*>(topk_weights)[id]);
      const Vec<T> v = load_vec(y + id * hidden + col);
#pragma unroll
      for (int e = 0; e < kVec; ++e) acc[e] = fmaf(w, Dtype<T>::to_float(v.v[e]), acc[e]);
    }
    store_vec(out + token * hidden + col, acc);
  }
}

int grid_for(int64_t work) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(blocks, 65535)));
}

template <typename T>
void activation_typed(const at::Tensor& h, at::Tensor& act, bool gated, cudaStream_t stream) {
  const int64_t rows = act.size(0);
  const int inter = static_cast<int>(act.size(1));
  const int grid = grid_for(rows * (inter / kVec));
  const T* hp = reinterpret_cast<const T*>(h.data_ptr());
  T* ap = reinterpret_cast<T*>(act.data_ptr());
  if (gated) {
    moe_activation_kernel<T, true><<<grid, kThreads, 0, stream>>>(hp, ap, rows, inter);
  } else {
    moe_activation_kernel<T, false><<<grid, kThreads, 0, stream>>>(hp, ap, rows, inter);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void reduce_typed(const at::Tensor& y, const at::Tensor& topk_ids, const at::Tensor& topk_weights, int num_experts,
                  at::Tensor& out, cudaStream_t stream) {
  const int64_t m = out.size(0);
  const int hidden = static_cast<int>(out.size(1));
  const int topk = static_cast<int>(topk_ids.size(1));
  moe_reduce_kernel<T><<<grid_for(m * (hidden / kVec)), kThreads, 0, stream>>>(
      reinterpret_cast<const T*>(y.data_ptr()), topk_ids.data_ptr(), topk_ids.scalar_type() == at::kLong,
      topk_weights.data_ptr(), topk_weights.scalar_type() == at::kFloat, num_experts,
      reinterpret_cast<T*>(out.data_ptr()), m, topk, hidden);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void launch_moe_activation(const at::Tensor& h, at::Tensor& act, bool gated, cudaStream_t stream) {
  TORCH_CHECK(act.size(1) % kVec == 0, "nvfp4_C::marlin_moe: inter_size must be a multiple of 8");
  if (act.numel() == 0) return;
  if (h.scalar_type() == at::kBFloat16) {
    activation_typed<__nv_bfloat16>(h, act, gated, stream);
  } else {
    activation_typed<__half>(h, act, gated, stream);
  }
}

void launch_moe_reduce(const at::Tensor& y, const at::Tensor& topk_ids, const at::Tensor& topk_weights,
                       int num_experts, at::Tensor& out, cudaStream_t stream) {
  TORCH_CHECK(out.size(1) % kVec == 0, "nvfp4_C::marlin_moe: the hidden size must be a multiple of 8");
  if (out.numel() == 0) return;
  if (y.scalar_type() == at::kBFloat16) {
    reduce_typed<__nv_bfloat16>(y, topk_ids, topk_weights, num_experts, out, stream);
  } else {
    reduce_typed<__half>(y, topk_ids, topk_weights, num_experts, out, stream);
  }
}

}  // namespace nvfp4
