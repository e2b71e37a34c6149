// Arrival counters of split-K's workspace path (store_tile), without a memset per launch.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace nvfp4 {

// `count` int32 counters that are zero when `stream` reaches the next launch and that no other launch can be
// using at the same time. The kernel leaves every counter it used at zero (the last CTA of a tile resets it), so
// counters are zeroed once, not per launch (H200: a memset node cost ~2 us per split-K GEMM at M <= 16):
//  - outside graph capture: one zeroed buffer per (device, stream), replaced by a larger one when a launch needs
//    more; launches on one stream run one after another, launches on other streams have their own buffer;
//  - during capture: counters owned by that captured launch for good, so the graph's replays, on whatever
//    stream, share them with nothing (4 bytes per tile of each captured split-K launch).
// All of them are carved from zeroed device chunks that are never freed or handed out twice.
int* zeroed_split_k_counters(int device, cudaStream_t stream, int64_t count);

}  // namespace nvfp4
