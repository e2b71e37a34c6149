// Grouped GEMM kernels for bf16 activations: one translation unit per dtype so the two compile in parallel.
#include "moe/grouped_gemm.cuh"

namespace nvfp4 {

void launch_moe_gemm_bf16(MoeTile tile, const MoeGemmArgs& args, const MoeRouting& routing, int device) {
  launch_moe_gemm<__nv_bfloat16>(tile, args, routing, device);
}

}  // namespace nvfp4
