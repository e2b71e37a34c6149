// Token/expert alignment for the grouped GEMM (the moe_align_block_size idea, written for this package).
//
// From topk_ids [M, k] it builds, in one CTA and without any host sync (buffers are sized for the worst case
// by the caller, so the launch is CUDA-graph safe):
//   sorted_ids   the flat ids (token * k + slot) grouped by expert, each expert's run padded to a multiple of
//                `rows` with the sentinel M*k;
//   tile_expert  the expert of every `rows`-row tile of sorted_ids;
//   num_padded   the number of sorted_ids entries in use.
// Ids outside [0, E) are routed nowhere (the reduction skips their slots). The order of ids inside an expert's
// run depends on atomic arrival order; the GEMM computes every row independently, so results do not.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "moe/moe.h"

namespace nvfp4 {

namespace {

constexpr int kAlignThreads = 1024;
static_assert(kMoeMaxExperts <= kAlignThreads, "one thread per expert in the scan");

__device__ __forceinline__ int expert_of(const void* ids, bool ids64, int i, int num_experts) {
  const int64_t e = ids64 ? static_cast<const int64_t*>(ids)[i] : static_cast<const int32_t*>(ids)[i];
  return (e >= 0 && e < num_experts) ? static_cast<int>(e) : -1;
}

// Reserve one slot of counter[e] per lane (e < 0: none) with one shared-memory atomic per distinct expert
// in the warp: a heavily routed expert would otherwise serialize every lane. Returns the lane's slot.
// All 32 lanes must call it together.
__device__ __forceinline__ int warp_reserve(int* counter, int e, int lane) {
  const unsigned peers = __match_any_sync(0xffffffffu, e);
  const int leader = __ffs(peers) - 1;
  int base = 0;
  if (lane == leader && e >= 0) base = atomicAdd(&counter[e], __popc(peers));
  base = __shfl_sync(0xffffffffu, base, leader);
  return base + __popc(peers & ((1u << lane) - 1u));
}

__global__ void __launch_bounds__(kAlignThreads) moe_align_kernel(const void* topk_ids, bool ids64, int num_ids,
                                                                 int num_experts, int rows, int* sorted_ids,
                                                                 int* tile_expert, int* num_padded) {
  __shared__ int count[kMoeMaxExperts];       // tokens per expert, later the write cursor
  __shared__ int offset[kMoeMaxExperts + 1];  // start of each expert's padded run
  __shared__ int warp_total[kAlignThreads / 32];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int rounds = (num_ids + kAlignThreads - 1) / kAlignThreads;  // every lane runs every round

  if (tid < num_experts) count[tid] = 0;
  __syncthreads();
  for (int r = 0; r < rounds; ++r) {
    const int i = r * kAlignThreads + tid;
    warp_reserve(count, i < num_ids ? expert_of(topk_ids, ids64, i, num_experts) : -1, lane);
  }
  __syncthreads();

  // Exclusive scan of the padded counts (thread e holds expert e).
  const int mine = tid < num_experts ? (count[tid] + rows - 1) / rows * rows : 0;
  int incl = mine;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int v = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += v;
  }
  if (lane == 31) warp_total[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    int w = warp_total[lane];
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int v = __shfl_up_sync(0xffffffffu, w, o);
      if (lane >= o) w += v;
    }
    warp_total[lane] = w;  // inclusive over warps
  }
  __syncthreads();
  incl += warp > 0 ? warp_total[warp - 1] : 0;
  if (tid < num_experts) offset[tid + 1] = incl;
  if (tid == 0) offset[0] = 0;
  __syncthreads();

  const int total = offset[num_experts];
  if (tid == 0) *num_padded = total;
  if (tid < num_experts) {
    for (int pos = offset[tid] + count[tid]; pos < offset[tid + 1]; ++pos) sorted_ids[pos] = num_ids;  // pads
  }
  // Expert of each tile: the last expert whose run starts at or before the tile (binary search).
  for (int t = tid; t < total / rows; t += kAlignThreads) {
    const int row = t * rows;
    int lo = 0, hi = num_experts - 1;
    while (lo < hi) {
      const int mid = (lo + hi + 1) >> 1;
      if (offset[mid] <= row) lo = mid; else hi = mid - 1;
    }
    tile_expert[t] = lo;  // empty experts share the start of the next run; the largest index wins
  }
  __syncthreads();  // count[] is reused as the cursor below
  if (tid < num_experts) count[tid] = offset[tid];
  __syncthreads();
  for (int r = 0; r < rounds; ++r) {
    const int i = r * kAlignThreads + tid;
    const int e = i < num_ids ? expert_of(topk_ids, ids64, i, num_experts) : -1;
    const int pos = warp_reserve(count, e, lane);
    if (e >= 0) sorted_ids[pos] = i;
  }
}

}  // namespace

int64_t moe_max_tiles(int64_t num_ids, int64_t num_experts, int rows) {
  const int64_t used = std::min(num_experts, num_ids);  // experts that can hold a token
  return std::min(num_ids, (num_ids + used * (rows - 1)) / rows);
}

void launch_moe_align(const at::Tensor& topk_ids, int num_experts, int rows, int* sorted_ids, int* tile_expert,
                      int* num_padded, cudaStream_t stream) {
  // One literal message (marlin_moe.cpp says why), so it states the limit itself.
  static_assert(kMoeMaxExperts == 1024, "the message below states the limit");
  TORCH_CHECK(num_experts >= 1 && num_experts <= kMoeMaxExperts, "nvfp4_C::marlin_moe: at most 1024 experts");
  TORCH_CHECK(topk_ids.is_contiguous(), "nvfp4_C::marlin_moe: topk_ids must be contiguous");
  const bool ids64 = topk_ids.scalar_type() == at::kLong;
  moe_align_kernel<<<1, kAlignThreads, 0, stream>>>(topk_ids.data_ptr(), ids64, static_cast<int>(topk_ids.numel()),
                                                   num_experts, rows, sorted_ids, tile_expert, num_padded);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> moe_align(const at::Tensor& topk_ids, int64_t num_experts,
                                                         int64_t rows) {
  TORCH_CHECK(topk_ids.is_cuda() && topk_ids.dim() == 2 &&
                  (topk_ids.scalar_type() == at::kInt || topk_ids.scalar_type() == at::kLong),
              "nvfp4_C::moe_align: topk_ids must be a CUDA int32/int64 [M, k] tensor");
  TORCH_CHECK(rows >= 1 && rows <= 1024, "nvfp4_C::moe_align: rows must be in [1, 1024]");
  const c10::cuda::CUDAGuard guard(topk_ids.device());
  const at::Tensor ids = topk_ids.contiguous();
  const int64_t max_tiles = std::max<int64_t>(moe_max_tiles(ids.numel(), num_experts, static_cast<int>(rows)), 1);
  auto opts = ids.options().dtype(at::kInt);
  at::Tensor sorted_ids = at::empty({max_tiles * rows}, opts);
  at::Tensor tile_expert = at::empty({max_tiles}, opts);
  at::Tensor num_padded = at::zeros({1}, opts);
  if (ids.numel() > 0) {
    launch_moe_align(ids, static_cast<int>(num_experts), static_cast<int>(rows), sorted_ids.data_ptr<int>(),
                     tile_expert.data_ptr<int>(), num_padded.data_ptr<int>(),
                     c10::cuda::getCurrentCUDAStream(ids.get_device()));
  }
  return {sorted_ids, tile_expert, num_padded};
}

}  // namespace nvfp4
