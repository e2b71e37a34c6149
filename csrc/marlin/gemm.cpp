// nvfp4_C::marlin_gemm: re-checks what the kernel relies on, allocates the output, dispatches by dtype.
#include <c10/cuda/CUDAGuard.h>

#include <atomic>

#include "marlin.h"

namespace nvfp4 {

namespace {

std::atomic<bool> cluster_split_k{true};

int64_t ceil_to(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

bool aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

}  // namespace

bool marlin_cluster_split_k(bool enable) { return cluster_split_k.exchange(enable); }
bool cluster_split_k_enabled() { return cluster_split_k.load(std::memory_order_relaxed); }

at::Tensor marlin_gemm(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                       const at::Tensor& global_scale, const std::optional<at::Tensor>& bias, int64_t size_n,
                       int64_t size_k, int64_t config) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 2, "nvfp4_C::marlin_gemm: x must be a 2-D CUDA tensor [M, K]");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf,
              "nvfp4_C::marlin_gemm: x must be bfloat16 or float16");
  TORCH_CHECK(size_k % 16 == 0 && size_n > 0 && x.size(1) == size_k,
              "nvfp4_C::marlin_gemm: x must be [M, size_k] with size_k % 16 == 0");
  TORCH_CHECK(x.is_contiguous() && aligned16(x), "nvfp4_C::marlin_gemm: x must be contiguous and 16-byte aligned");
  const int64_t n_pad = ceil_to(size_n, 64), k_pad = ceil_to(size_k, 64);
  TORCH_CHECK(n_pad < (int64_t{1} << 28) && k_pad < (int64_t{1} << 28),
              "nvfp4_C::marlin_gemm: size_n and size_k must be below 2^28");
  TORCH_CHECK(qweight.scalar_type() == at::kInt && qweight.dim() == 2 && qweight.size(0) == k_pad / 16 &&
                  qweight.size(1) == 2 * n_pad && qweight.is_contiguous() && aligned16(qweight),
              "nvfp4_C::marlin_gemm: qweight must be contiguous int32 [K_pad/16, 2*N_pad], 16-byte aligned");
  TORCH_CHECK(scales.scalar_type() == at::kByte && scales.dim() == 2 && scales.size(0) == k_pad / 16 &&
                  scales.size(1) == n_pad && scales.is_contiguous() && aligned16(scales),
              "nvfp4_C::marlin_gemm: scales must be contiguous uint8 [K_pad/16, N_pad], 16-byte aligned");
  TORCH_CHECK(global_scale.scalar_type() == at::kFloat && global_scale.is_contiguous() &&
                  (global_scale.numel() == 1 || global_scale.numel() == size_n),
              "nvfp4_C::marlin_gemm: global_scale must be float32 with one value or size_n (one per column)");
  const auto device = x.device();
  TORCH_CHECK(qweight.device() == device && scales.device() == device && global_scale.device() == device,
              "nvfp4_C::marlin_gemm: all tensors must be on x's device");
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == x.scalar_type() && bias->numel() == size_n && bias->is_contiguous() &&
                    bias->device() == device,
                "nvfp4_C::marlin_gemm: bias must be a contiguous [size_n] tensor of x's dtype on x's device");
  }
  TORCH_CHECK(x.size(0) <= (int64_t{1} << 30) && size_n < (int64_t{1} << 30) && size_k < (int64_t{1} << 30),
              "nvfp4_C::marlin_gemm: sizes above 2^30 are not supported");
  const int64_t num_configs = static_cast<int64_t>(marlin_gemm_config_names().size());
  // A literal message: on the device machine (torch 2.11.0+cu130, g++ 13.3) formatting a number through
  // std::ostream, as a message with several parts does, kills the process (SIGSEGV) instead of raising
  // (scripts/probe_torch_check.py; docs/kernels.md "Twelfth session"). tests/test_csrc_checks.py keeps it so.
  const bool known_config =
      config >= 0 && config < 2 * kConfigFitClusters && config % kConfigFitClusters < num_configs;
  TORCH_CHECK(config == -1 || known_config,
              "nvfp4_C::marlin_gemm: config must be -1 (by M) or an index of marlin_gemm_configs(), optionally "
              "| marlin_gemm_fit_clusters_flag()");

  const c10::cuda::CUDAGuard guard(device);
  at::Tensor out = at::empty({x.size(0), size_n}, x.options());
  if (x.size(0) == 0) return out;
  if (x.scalar_type() == at::kBFloat16) {
    launch_marlin_gemm_bf16(x, qweight, scales, global_scale, bias, out, n_pad, k_pad, static_cast<int>(config));
  } else {
    launch_marlin_gemm_fp16(x, qweight, scales, global_scale, bias, out, n_pad, k_pad, static_cast<int>(config));
  }
  return out;
}

}  // namespace nvfp4
