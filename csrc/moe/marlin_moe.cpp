// nvfp4_C::marlin_moe: checks, buffers and the five launches of the W4A16 MoE (docs/moe.md):
//   align (routing on the GPU) -> grouped GEMM 1 (gather x rows) -> activation -> grouped GEMM 2 -> reduce.
// Every buffer is sized from shapes alone and nothing is read back to the host, so the op can be captured in
// a CUDA graph; the caching allocator makes the buffers stream ordered.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cmath>

#include "moe/moe.h"

namespace nvfp4 {

namespace {

// Every check message is one string: literals concatenated at compile time (NVFP4_MOE_OP "..."), or one
// std::string. A message in several parts is joined through std::ostream, and formatting a number that way kills
// the process on the device machine instead of raising (see gemm.cpp); tests/gpu/test_cpp_checks.py covers these.
#define NVFP4_MOE_OP "nvfp4_C::marlin_moe: "
static_assert(kMoeMaxTopk == 64 && kMoeMaxExperts == 1024, "the top-k and expert-count messages state the limits");

int64_t ceil_to(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

bool aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

void check_stack(const at::Tensor& q, const at::Tensor& s, const at::Tensor& gs, int64_t e, int64_t n, int64_t k,
                 const char* name, const at::Device& device) {
  const int64_t n_pad = ceil_to(n, 64), k_pad = ceil_to(k, 64);
  TORCH_CHECK(q.scalar_type() == at::kInt && q.dim() == 3 && q.size(0) == e && q.size(1) == k_pad / 16 &&
                  q.size(2) == 2 * n_pad && q.is_contiguous() && aligned16(q) && q.device() == device,
              std::string(NVFP4_MOE_OP) + name +
                  "_q must be contiguous int32 [E, K_pad/16, 2*N_pad] on x's device, 16-byte aligned");
  TORCH_CHECK(s.scalar_type() == at::kByte && s.dim() == 3 && s.size(0) == e && s.size(1) == k_pad / 16 &&
                  s.size(2) == n_pad && s.is_contiguous() && aligned16(s) && s.device() == device,
              std::string(NVFP4_MOE_OP) + name +
                  "_s must be contiguous uint8 [E, K_pad/16, N_pad] on x's device, 16-byte aligned");
  TORCH_CHECK(gs.scalar_type() == at::kFloat && gs.dim() == 1 && gs.size(0) == e && gs.is_contiguous() &&
                  gs.device() == device,
              std::string(NVFP4_MOE_OP) + name + "_gs must be contiguous float32 [E] on x's device");
}

// Expected m-tiles holding tokens under uniform routing (split-K sizing only; any value is correct).
int expected_tiles(int64_t num_ids, int64_t num_experts, int rows, int64_t max_tiles) {
  const double e = static_cast<double>(num_experts);
  const double distinct = e * (1.0 - std::pow(1.0 - 1.0 / e, static_cast<double>(num_ids)));
  const double tiles = std::ceil(distinct + static_cast<double>(num_ids) / rows);
  return static_cast<int>(std::min<double>(tiles, static_cast<double>(max_tiles)));
}

}  // namespace

at::Tensor marlin_moe(const at::Tensor& x, const at::Tensor& topk_ids, const at::Tensor& topk_weights,
                      const at::Tensor& w13_q, const at::Tensor& w13_s, const at::Tensor& w13_gs,
                      const at::Tensor& w2_q, const at::Tensor& w2_s, const at::Tensor& w2_gs, int64_t activation,
                      int64_t inter_size, int64_t tile_index) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 2, NVFP4_MOE_OP "x must be a 2-D CUDA tensor [M, H]");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf,
              NVFP4_MOE_OP "x must be bfloat16 or float16");
  TORCH_CHECK(x.is_contiguous() && aligned16(x), NVFP4_MOE_OP "x must be contiguous and 16-byte aligned");
  TORCH_CHECK(activation == 0 || activation == 1, NVFP4_MOE_OP "activation must be 0 (silu) or 1 (relu2)");
  const int64_t num_tiles = static_cast<int64_t>(marlin_moe_tile_names().size());
  TORCH_CHECK(tile_index >= -1 && tile_index < num_tiles,
              NVFP4_MOE_OP "tile must be -1 (by routed rows) or an index into marlin_moe_tiles()");
  const auto device = x.device();
  const int64_t m = x.size(0), hidden = x.size(1);
  TORCH_CHECK(hidden % 16 == 0 && inter_size > 0 && inter_size % 16 == 0,
              NVFP4_MOE_OP "the hidden size and inter_size must be positive multiples of 16");
  TORCH_CHECK((topk_ids.scalar_type() == at::kInt || topk_ids.scalar_type() == at::kLong) && topk_ids.dim() == 2 &&
                  topk_ids.size(0) == m && topk_ids.is_contiguous() && topk_ids.device() == device,
              NVFP4_MOE_OP "topk_ids must be contiguous int32/int64 [M, k] on x's device");
  const int64_t topk = topk_ids.size(1);
  TORCH_CHECK(topk >= 1 && topk <= kMoeMaxTopk, NVFP4_MOE_OP "top-k must be in [1, 64]");
  TORCH_CHECK((topk_weights.scalar_type() == at::kFloat || topk_weights.scalar_type() == x.scalar_type()) &&
                  topk_weights.sizes() == topk_ids.sizes() && topk_weights.is_contiguous() &&
                  topk_weights.device() == device,
              NVFP4_MOE_OP "topk_weights must be contiguous float32 or x.dtype [M, k] on x's device");
  const bool gated = activation == 0;
  const int64_t e = w13_q.dim() == 3 ? w13_q.size(0) : -1;
  TORCH_CHECK(e >= 1 && e <= kMoeMaxExperts,
              NVFP4_MOE_OP "w13_q must be an expert stack [E, ...] with 1 <= E <= 1024");
  const int64_t n13 = gated ? 2 * inter_size : inter_size;
  check_stack(w13_q, w13_s, w13_gs, e, n13, hidden, "w13", device);
  check_stack(w2_q, w2_s, w2_gs, e, hidden, inter_size, "w2", device);
  const int64_t num_ids = m * topk;
  TORCH_CHECK(num_ids < (int64_t{1} << 30) && hidden < (int64_t{1} << 30) && n13 < (int64_t{1} << 30),
              NVFP4_MOE_OP "sizes above 2^30 are not supported");

  const c10::cuda::CUDAGuard guard(device);
  at::Tensor out = at::empty({m, hidden}, x.options());
  if (m == 0) return out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index());

  const MoeTile tile = tile_index < 0 ? choose_moe_tile(num_ids, e) : static_cast<MoeTile>(tile_index);
  const int rows = moe_tile_rows(tile);
  const int64_t max_tiles = moe_max_tiles(num_ids, e, rows);
  at::Tensor routing_buf = at::empty({max_tiles * rows + max_tiles + 1}, x.options().dtype(at::kInt));
  int* sorted_ids = routing_buf.data_ptr<int>();
  int* tile_expert = sorted_ids + max_tiles * rows;
  int* num_padded = tile_expert + max_tiles;
  launch_moe_align(topk_ids, static_cast<int>(e), rows, sorted_ids, tile_expert, num_padded, stream);
  MoeRouting routing{sorted_ids,
                     tile_expert,
                     num_padded,
                     static_cast<int>(num_ids),
                     static_cast<int>(e),
                     static_cast<int>(max_tiles),
                     expected_tiles(num_ids, e, rows, max_tiles)};

  const auto launch_gemm = x.scalar_type() == at::kBFloat16 ? launch_moe_gemm_bf16 : launch_moe_gemm_fp16;
  const int dev = device.index();
  at::Tensor h13 = at::empty({num_ids, n13}, x.options());
  launch_gemm(tile,
              MoeGemmArgs{x.data_ptr(), hidden, static_cast<int>(topk), w13_q.data_ptr<int32_t>(),
                          w13_s.data_ptr<uint8_t>(), w13_gs.data_ptr<float>(), h13.data_ptr(), n13,
                          static_cast<int>(n13), static_cast<int>(hidden), static_cast<int>(ceil_to(n13, 64)),
                          static_cast<int>(ceil_to(hidden, 64))},
              routing, dev);
  at::Tensor act = at::empty({num_ids, inter_size}, x.options());
  launch_moe_activation(h13, act, gated, stream);
  h13.reset();  // back to the allocator (stream ordered) before the second GEMM's output is allocated
  at::Tensor y = at::empty({num_ids, hidden}, x.options());
  launch_gemm(tile,
              MoeGemmArgs{act.data_ptr(), inter_size, 1, w2_q.data_ptr<int32_t>(), w2_s.data_ptr<uint8_t>(),
                          w2_gs.data_ptr<float>(), y.data_ptr(), hidden, static_cast<int>(hidden),
                          static_cast<int>(inter_size), static_cast<int>(ceil_to(hidden, 64)),
                          static_cast<int>(ceil_to(inter_size, 64))},
              routing, dev);
  launch_moe_reduce(y, topk_ids, topk_weights, static_cast<int>(e), out, stream);
  return out;
}

}  // namespace nvfp4
