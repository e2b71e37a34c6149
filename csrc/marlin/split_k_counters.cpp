#include "split_k_counters.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

namespace nvfp4 {

namespace {

constexpr int64_t kMinCounters = 1 << 14;  // 64 KB: a whole model's launches on one stream fit at once

std::mutex mutex;
std::map<std::pair<int, cudaStream_t>, at::Tensor> stream_buffers;  // guarded by mutex

// Permanent zeroed counters for captured launches, per device: a bump allocator over chunks that are never freed.
struct CaptureChunks {
  int* next = nullptr;
  int64_t left = 0;
};
std::map<int, CaptureChunks> capture_chunks;  // guarded by mutex

int* take_captured(int device, int64_t count) {
  CaptureChunks& chunks = capture_chunks[device];
  if (chunks.left < count) {
    const int64_t size = std::max(count, kMinCounters);
    // cudaMalloc and a synchronous memset on a private stream are not part of the capture (relaxed mode lets
    // this thread make them while its stream captures): the counters are zero before any replay.
    const c10::cuda::CUDAStreamCaptureModeGuard relaxed(cudaStreamCaptureModeRelaxed);
    int* chunk = nullptr;
    C10_CUDA_CHECK(cudaMalloc(&chunk, size * sizeof(int)));
    cudaStream_t side = nullptr;
    C10_CUDA_CHECK(cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking));
    C10_CUDA_CHECK(cudaMemsetAsync(chunk, 0, size * sizeof(int), side));
    C10_CUDA_CHECK(cudaStreamSynchronize(side));
    C10_CUDA_CHECK(cudaStreamDestroy(side));
    chunks.next = chunk;
    chunks.left = size;
  }
  int* counters = chunks.next;
  chunks.next += count;
  chunks.left -= count;
  return counters;
}

}  // namespace

int* zeroed_split_k_counters(int device, cudaStream_t stream, int64_t count) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
  const std::lock_guard<std::mutex> lock(mutex);
  if (status != cudaStreamCaptureStatusNone) return take_captured(device, count);
  at::Tensor& buffer = stream_buffers[{device, stream}];
  if (!buffer.defined() || buffer.numel() < count) {
    // at::zeros runs on the current stream (= `stream`, the launch's): ordered before the launch; the old
    // buffer goes back to the caching allocator, which reuses it only after this stream's earlier work.
    const auto options = at::TensorOptions().device(at::kCUDA, device).dtype(at::kInt);
    buffer = at::zeros({std::max(count, kMinCounters)}, options);
  }
  return buffer.data_ptr<int>();
}

}  // namespace nvfp4
