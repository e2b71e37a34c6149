// Grouped GEMM kernels for fp16 activations: one translation unit per dtype so the two compile in parallel.
#include "moe/grouped_gemm.cuh"

namespace nvfp4 {

void launch_moe_gemm_fp16(MoeTile tile, const MoeGemmArgs& args, const MoeRouting& routing, int device) {
  launch_moe_gemm<__half>(tile, args, routing, device);
}

}  // namespace nvfp4
