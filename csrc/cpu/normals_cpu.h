// The CPU normal generators of csrc/cpu/langevin_cpu.cpp, shared with the fused chains
// (csrc/cpu/chain_cpu.cpp): the normals of Philox blocks [block0, block0 + nblocks) of stream
// (seed, offset) into out[4 * nblocks], in element order (csrc/philox.h). The float32 one
// dispatches to its AVX2 path at run time.
#pragma once

#include <cstdint>
#include <type_traits>

namespace fastlangevin {

void fill_normals_f32(uint64_t seed, uint64_t offset, uint64_t block0, int64_t nblocks, float* __restrict__ out);
void fill_normals_f64(uint64_t seed, uint64_t offset, uint64_t block0, int64_t nblocks, double* __restrict__ out);

// The noise of walker rows [r0, r1) of width d, as the fused chains draw it per step: the Philox
// blocks that hold elements [r0 d, r1 d), i.e. from element e0 = r0 d rounded down to a block
// (a block that straddles two tiles is computed by both).
struct RowsNoise {
  uint64_t e0;
  int64_t nblocks;
  RowsNoise(int64_t r0, int64_t r1, int64_t d)
      : e0((static_cast<uint64_t>(r0) * d) & ~uint64_t(3)),
        nblocks(static_cast<int64_t>((static_cast<uint64_t>(r1) * d - e0 + 3) / 4)) {}
  // Stream (seed, offset) into out[4 * nblocks]: element n d + j is out[n d + j - e0].
  template <typename T>
  void fill(uint64_t seed, uint64_t offset, T* __restrict__ out) const {
    if constexpr (std::is_same_v<T, float>) {
      fill_normals_f32(seed, offset, e0 / 4, nblocks, out);
    } else {
      fill_normals_f64(seed, offset, e0 / 4, nblocks, out);
    }
  }
};

}  // namespace fastlangevin
