#include "split_k_counters.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <utility>

namespace nvfp4 {

namespace {

constexpr int64_t kChunkCounters = 1 << 16;  // 256 KB of counters per device allocation

std::mutex mutex;  // guards everything below

// Zeroed counters that are never freed or handed out twice: a bump allocator over device chunks. Not from the
// caching allocator: a block kept alive past a cudagraph-tree warm-up or capture would belong to its pool.
struct Chunks {
  int* next = nullptr;
  int64_t left = 0;
};
std::map<int, Chunks> chunks_by_device;

int* take_zeroed(int device, int64_t count) {
  Chunks& chunks = chunks_by_device[device];
  if (chunks.left < count) {
    const int64_t size = std::max(count, kChunkCounters);
    // cudaMalloc and a synchronous memset on a private stream are not part of any capture (relaxed mode lets
    // this thread make them while its stream captures): the counters are zero before any launch uses them.
    const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
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

struct StreamCounters {
  int* counters = nullptr;
  int64_t size = 0;
};
std::map<std::pair<int, cudaStream_t>, StreamCounters> by_stream;

}  // namespace

int* zeroed_split_k_counters(int device, cudaStream_t stream, int64_t count) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
  const std::lock_guard<std::mutex> lock(mutex);
  if (status != cudaStreamCaptureStatusNone) return take_zeroed(device, count);
  StreamCounters& own = by_stream[{device, stream}];
  if (own.size < count) {  // the smaller block is left behind: earlier launches on the stream may still use it
    own.size = std::max({count, 2 * own.size, int64_t{1024}});
    own.counters = take_zeroed(device, own.size);
  }
  return own.counters;
}

}  // namespace nvfp4
