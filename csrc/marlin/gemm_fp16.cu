// FP16 activations: one translation unit per dtype so the two compile in parallel.
#include "gemm_launch.cuh"
#include "marlin.h"

namespace nvfp4 {

void launch_marlin_gemm_fp16(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                             const at::Tensor& global_scale, const std::optional<at::Tensor>& bias,
                             at::Tensor& out, int64_t n_pad, int64_t k_pad, int config) {
  launch_marlin_gemm<__half>(x, qweight, scales, global_scale, bias, out, n_pad, k_pad, config);
}

}  // namespace nvfp4
