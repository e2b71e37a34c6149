// Tile-config choice, split-K sizing, workspace and launch of marlin_gemm_kernel for one activation dtype.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <array>
#include <optional>

#include "configs.cuh"
#include "marlin.h"
#include "split_k_counters.h"

namespace nvfp4 {

constexpr int kMaxDevices = 64;
constexpr int kMaxSplits = 32;

// A device attribute, read once per (attribute, device); every attribute used here is nonzero.
template <cudaDeviceAttr kAttr>
int device_attribute(int device) {
  static std::array<int, kMaxDevices> value{};
  TORCH_CHECK(device >= 0 && device < kMaxDevices, "nvfp4_C: device index out of range");
  if (value[device] == 0) C10_CUDA_CHECK(cudaDeviceGetAttribute(&value[device], kAttr, device));
  return value[device];
}
inline int sm_count(int device) { return device_attribute<cudaDevAttrMultiProcessorCount>(device); }
inline int sm_major(int device) { return device_attribute<cudaDevAttrComputeCapabilityMajor>(device); }

template <auto kKernel, int kThreads, int kSmemBytes>
int kernel_occupancy(int device) {
  // Per (kernel, device): raise the dynamic shared-memory limit once and remember resident CTAs per SM.
  static std::array<int, kMaxDevices> occupancy{};
  TORCH_CHECK(device >= 0 && device < kMaxDevices, "nvfp4_C: device index out of range");
  if (occupancy[device] == 0) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes));
    int blocks = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kKernel, kThreads, kSmemBytes));
    occupancy[device] = std::max(blocks, 1);
  }
  return occupancy[device];
}

template <typename T, class Cfg, bool kMoe = false>
int configured_occupancy(int device) {
  return kernel_occupancy<marlin_gemm_kernel<T, Cfg, kMoe>, Cfg::THREADS, Cfg::SMEM_BYTES>(device);
}

// Split-K sizing: K is split only when the tiles that hold work (`busy_tiles`; the grid's tiles for a dense
// GEMM, a host estimate for MoE) cannot fill every resident-CTA slot, into at most max_splits ranges.
inline int split_count(int64_t busy_tiles, int64_t slots, int max_splits) {
  if (busy_tiles >= slots) return 1;
  return std::max(1, static_cast<int>(std::min<int64_t>({slots / busy_tiles, max_splits, kMaxSplits})));
}

// Workspace of the counter path of split-K (store_tile), covering every tile of the grid: arrival counters
// (split_k_counters.h: zero on entry, left zero by the kernel) and FP32 partials from the caching allocator
// (stream-ordered, CUDA-graph safe; the caller keeps the tensor alive until the launch is enqueued).
inline at::Tensor split_k_workspace(MarlinGemmParams& p, int64_t tile_elems, int device, cudaStream_t stream) {
  const int64_t tiles = static_cast<int64_t>(p.m_tiles) * p.n_tiles;
  p.counters = zeroed_split_k_counters(device, stream, tiles);
  const auto options = at::TensorOptions().device(at::kCUDA, device).dtype(at::kFloat);
  at::Tensor partials = at::empty({p.splits * tiles * tile_elems}, options);
  p.partials = partials.data_ptr<float>();
  return partials;
}

// Split-K in clusters (store_tile): the `splits` CTAs of a tile form one cluster along the grid's z.
constexpr int kMaxClusterSplits = 8;  // the portable cluster size

struct ClusterLaunch {
  cudaLaunchConfig_t config{};
  cudaLaunchAttribute attribute{};
  ClusterLaunch(dim3 grid, int threads, int smem_bytes, cudaStream_t stream, int splits) {
    config.gridDim = grid;
    config.blockDim = dim3(threads);
    config.dynamicSmemBytes = smem_bytes;
    config.stream = stream;
    attribute.id = cudaLaunchAttributeClusterDimension;
    attribute.val.clusterDim.x = 1;
    attribute.val.clusterDim.y = 1;
    attribute.val.clusterDim.z = splits;
    config.attrs = &attribute;
    config.numAttrs = 1;
  }
  ClusterLaunch(const ClusterLaunch&) = delete;  // config.attrs points at this object's own attribute
  ClusterLaunch& operator=(const ClusterLaunch&) = delete;
};

// How many clusters of `splits` CTAs of kKernel the device holds at once (0: no clusters here: not Hopper, i.e.
// not the sm_90a build, disabled, or more than 8 splits). Asked once per kernel, device and size.
template <auto kKernel, int kThreads, int kSmemBytes>
int resident_clusters(int device, int splits) {
  if (splits < 2 || splits > kMaxClusterSplits || sm_major(device) != 9 || !cluster_split_k_enabled()) return 0;
  static std::array<std::array<int, kMaxClusterSplits + 1>, kMaxDevices> resident{};  // -1: none fit
  int& count = resident[device][splits];
  if (count == 0) {
    ClusterLaunch launch(dim3(1, 1, splits), kThreads, kSmemBytes, nullptr, splits);
    int clusters = 0;
    const bool ok = cudaOccupancyMaxActiveClusters(&clusters, kKernel, &launch.config) == cudaSuccess;
    if (!ok) (void)cudaGetLastError();  // a refusal is an answer here, not an error for the next call
    count = ok && clusters > 0 ? clusters : -1;
  }
  return std::max(count, 0);
}

// One dense launch of kKernel (tiled, decode or wgmma) with config Cfg: tiles of Cfg::ROWS x Cfg::TN, split-K
// into at most max_splits ranges when the tiles cannot fill the GPU, in clusters where they fit (fit_clusters:
// fewer splits rather than the workspace, kConfigFitClusters).
template <auto kKernel, class Cfg>
void launch_tiles(MarlinGemmParams p, int device, int max_splits, bool fit_clusters) {
  p.m_tiles = (p.m + Cfg::ROWS - 1) / Cfg::ROWS;
  p.n_tiles = (p.n_pad + Cfg::TN - 1) / Cfg::TN;
  TORCH_CHECK(p.m_tiles <= 65535, "nvfp4_C::marlin_gemm: M too large for one launch");
  const int64_t slots = static_cast<int64_t>(sm_count(device)) *
                        kernel_occupancy<kKernel, Cfg::THREADS, Cfg::SMEM_BYTES>(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device);
  const int64_t tiles = static_cast<int64_t>(p.m_tiles) * p.n_tiles;
  p.splits = split_count(tiles, slots, max_splits);
  // Clusters only where all of them are resident at once: the split count was sized to fill the slots in one
  // wave, and clusters that do not fit it would run in a second (H200: 1.4x slower at M = 1, docs/kernels.md).
  // Lowering the split count until every cluster fits is the fit_clusters option, not the default: faster for
  // some wgmma shapes, slower for others and up to 1.3x slower for the decode kernel (docs/kernels.md "Split-K",
  // "Eleventh session"), so gemm="auto" measures both.
  const auto clusters_fit = [&](int splits) {
    return tiles <= resident_clusters<kKernel, Cfg::THREADS, Cfg::SMEM_BYTES>(device, splits);
  };
  p.cluster_splits = clusters_fit(p.splits);
  // H200, 4096 x 4096 at M = 64: wg64x256's 16 tiles x 16 splits through the workspace 36.9 us, x 8 in clusters
  // 16.0; 4096 x 14336 at M = 256: wg128x128 x 4 splits (workspace) 62.8 us, x 3 in clusters 71.7 (docs/kernels.md).
  for (int splits = p.splits - 1; fit_clusters && !p.cluster_splits && splits >= 2; --splits) {
    if (clusters_fit(splits)) p.splits = splits, p.cluster_splits = true;
  }
  const dim3 grid(p.n_tiles, p.m_tiles, p.splits);
  if (p.cluster_splits) {
    const ClusterLaunch launch(grid, Cfg::THREADS, Cfg::SMEM_BYTES, stream, p.splits);
    C10_CUDA_CHECK(cudaLaunchKernelEx(&launch.config, kKernel, p));
    return;
  }
  at::Tensor partials;
  if (p.splits > 1) partials = split_k_workspace(p, Cfg::ROWS * Cfg::TN, device, stream);
  kKernel<<<grid, Cfg::THREADS, Cfg::SMEM_BYTES, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, class Cfg>
void launch_with_config(MarlinGemmParams p, int device, bool fit_clusters) {
  p.k_tiles = (p.k_pad + Cfg::TK - 1) / Cfg::TK;  // each split keeps >= 1 k-tile
  launch_tiles<marlin_gemm_kernel<T, Cfg>, Cfg>(p, device, p.k_tiles, fit_clusters);
}

template <typename T, class Cfg>
void launch_gemv_with_config(MarlinGemmParams p, int device, bool fit_clusters) {
  launch_tiles<marlin_gemv_kernel<T, Cfg>, Cfg>(
      p, device, std::max(1, p.k / 16 / (Cfg::WARPS_K * kGemvMinStepsPerWarp)), fit_clusters);
}

// The wgmma kernels exist only in the sm_90a build (sm_90a code runs on compute capability 9.0 only).
template <typename T, class Cfg>
void launch_wgmma_with_config(MarlinGemmParams p, int device, bool fit_clusters) {
  TORCH_CHECK(sm_major(device) == 9, "nvfp4_C::marlin_gemm: the wgmma configs need a Hopper (SM 9.0) GPU");
  p.k_tiles = p.k_pad / Cfg::TK;
  launch_tiles<marlin_wgmma_kernel<T, Cfg>, Cfg>(p, device, p.k_tiles, fit_clusters);
}

// The stream-wgmma kernels (sm_90a only, as the wgmma ones): split K no finer than two ring turns per split.
template <typename T, class Cfg>
void launch_stream_wgmma_with_config(MarlinGemmParams p, int device, bool fit_clusters) {
  TORCH_CHECK(sm_major(device) == 9, "nvfp4_C::marlin_gemm: the stream-wgmma configs need a Hopper (SM 9.0) GPU");
  launch_tiles<marlin_stream_wgmma_kernel<T, Cfg>, Cfg>(p, device, std::max(1, p.k / 16 / (2 * Cfg::STEPS)),
                                                        fit_clusters);
}

template <typename T>
void launch_marlin_gemm(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                        const at::Tensor& global_scale, const std::optional<at::Tensor>& bias, at::Tensor& out,
                        int64_t n_pad, int64_t k_pad, int config) {
  MarlinGemmParams p{};
  p.a = x.data_ptr();
  p.lda = x.stride(0);
  p.b = reinterpret_cast<const int4*>(qweight.data_ptr<int32_t>());
  p.s = scales.data_ptr<uint8_t>();
  p.global_scale = global_scale.data_ptr<float>();
  p.gs_per_column = global_scale.numel() > 1;
  p.bias = bias.has_value() ? bias->data_ptr() : nullptr;
  p.c = out.data_ptr();
  p.ldc = out.stride(0);
  p.m = static_cast<int>(x.size(0));
  p.n = static_cast<int>(out.size(1));
  p.k = static_cast<int>(x.size(1));
  p.n_pad = static_cast<int>(n_pad);
  p.k_pad = static_cast<int>(k_pad);
  const int device = x.get_device();
  // config >= 0 forces a tile config (indices as marlin.h's marlin_gemm_config_names()); -1 picks by M: the
  // decode kernel with x in blocks up to 8 and 16 rows (H200, tenth session: 8192x8192 15.7 vs 16.4 us for gemv8
  // at M = 1, 17.9 vs 22.4 for m16 at M = 16; docs/kernels.md), then the mma.sync tiles up to 64 rows, then on
  // Hopper the wgmma kernel (H200, M = 256: 78 vs 137 us on 8192x8192), else the 128 x 256 mma.sync tile.
  const bool fit_clusters = config >= 0 && (config & kConfigFitClusters) != 0;
  if (config >= 0) config &= ~static_cast<int>(kConfigFitClusters);
  if (config < 0) {
    const bool hopper = sm_major(device) == 9;
    config = p.m <= 8 ? 14 : p.m <= 16 ? 13 : p.m <= 32 ? 1 : p.m <= 64 ? 2 : !hopper ? 3 : p.m <= 128 ? 7 : 8;
  }
  switch (config) {
    case 0: launch_with_config<T, ConfigM16>(p, device, fit_clusters); break;
    case 1: launch_with_config<T, ConfigM32>(p, device, fit_clusters); break;
    case 2: launch_with_config<T, ConfigM64>(p, device, fit_clusters); break;
    case 3: launch_with_config<T, ConfigLarge>(p, device, fit_clusters); break;
    case 4: launch_gemv_with_config<T, ConfigGemv8>(p, device, fit_clusters); break;
    case 5: launch_wgmma_with_config<T, ConfigWg64x512>(p, device, fit_clusters); break;
    case 6: launch_wgmma_with_config<T, ConfigWg64x256>(p, device, fit_clusters); break;
    case 7: launch_wgmma_with_config<T, ConfigWg128x256>(p, device, fit_clusters); break;
    case 8: launch_wgmma_with_config<T, ConfigWg256x128>(p, device, fit_clusters); break;
    case 9: launch_wgmma_with_config<T, ConfigWg64x256w4>(p, device, fit_clusters); break;
    case 10: launch_wgmma_with_config<T, ConfigWg128x256w4>(p, device, fit_clusters); break;
    case 11: launch_gemv_with_config<T, ConfigGemv16>(p, device, fit_clusters); break;
    case 12: launch_stream_wgmma_with_config<T, ConfigSw16x512>(p, device, fit_clusters); break;
    case 13: launch_gemv_with_config<T, ConfigGemv16b>(p, device, fit_clusters); break;
    case 14: launch_gemv_with_config<T, ConfigGemv8b>(p, device, fit_clusters); break;
    case 15: launch_wgmma_with_config<T, ConfigWg128x128>(p, device, fit_clusters); break;
    case 16: launch_wgmma_with_config<T, ConfigWg64x128>(p, device, fit_clusters); break;
    default: TORCH_CHECK(false, "nvfp4_C::marlin_gemm: no such tile config");  // literal: see gemm.cpp
  }
}

}  // namespace nvfp4
