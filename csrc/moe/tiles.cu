// Which grouped-GEMM tile serves a MoE call, and its rows (= the alignment block of the routing).
#include "marlin/gemm_launch.cuh"
#include "moe/moe.h"

namespace nvfp4 {

MoeTile choose_moe_tile(int64_t num_ids, int64_t num_experts) {
  // Routed rows per expert on average: few -> 16-row tiles stream each expert's weights once with little
  // padding; more -> taller tiles reuse each weight byte over more rows (padding: under one tile per expert).
  const int64_t avg = num_ids / std::max<int64_t>(num_experts, 1);
  if (avg < 10) return MoeTile::kM16;
  if (avg < 24) return MoeTile::kM32;
  if (avg <= 80) return MoeTile::kM64;
  return MoeTile::kLarge;
}

int moe_tile_rows(MoeTile tile) {
  switch (tile) {
    case MoeTile::kM16:
      return ConfigM16::ROWS;
    case MoeTile::kM32:
      return ConfigM32::ROWS;
    case MoeTile::kM64:
      return ConfigM64::ROWS;
    case MoeTile::kLarge:
      return ConfigLarge::ROWS;
  }
  TORCH_CHECK(false, "nvfp4_C::marlin_moe: unknown tile config");
}

}  // namespace nvfp4
