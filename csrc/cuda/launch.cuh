// Launch geometry shared by the CUDA kernels (grid-stride loops).
#pragma once

#include <ATen/cuda/CUDAContext.h>

#include <algorithm>
#include <cstdint>

namespace fastlangevin {

// 256 threads per CTA; for the Langevin step, 4 elements per thread = 1024 elements per CTA.
// The step is bandwidth-bound; the grid-stride loop caps the grid at 32 CTAs per SM so each
// thread streams several blocks.
constexpr int kThreads = 256;

inline int grid_for(int64_t work_items) {
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t want = (work_items + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(want, static_cast<int64_t>(sms) * 32)));
}

}  // namespace fastlangevin
