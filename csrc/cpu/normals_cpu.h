// The CPU generators of the noise contract (csrc/philox.h): the normals of csrc/cpu/langevin_cpu.cpp,
// shared with the fused chains (csrc/cpu/chain_cpu.cpp, mlp_chain_cpu.cpp), and the float64
// uniforms of resampling and of the chains' MALA decisions.
//
// fill_normals_*: the normals of Philox blocks [block0, block0 + nblocks) of stream (seed,
// offset) into out[4 * nblocks], in element order. The float32 one dispatches to its AVX2 /
// AVX-512 path at run time.
#pragma once

#include <cstdint>
#include <limits>
#include <type_traits>

#include "../normal.h"
#include "../philox.h"

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

// The float64 uniforms 2 b0 .. 2 b1 - 1 of stream (seed, offset) (csrc/philox.h resample_uniform:
// uniform j from block j >> 1) into out[0 .. 2 (b1 - b0)). Branch-free and inlined, so GCC
// vectorises the loop over blocks for the caller's target (4 or 8 blocks per vpmuludq) instead
// of one scalar Philox block per uniform.
FL_HD void fill_uniform_pairs(uint64_t seed, uint64_t offset, int64_t b0, int64_t b1, double* __restrict__ out) {
  for (int64_t b = b0; b < b1; ++b) {
    const Words4 w = philox_block(seed, offset, static_cast<uint64_t>(b));
    out[2 * (b - b0)] = uniform53(w.w[0], w.w[1]);
    out[2 * (b - b0) + 1] = uniform53(w.w[2], w.w[3]);
  }
}

// log u of the MALA uniforms of walkers [r0, r1) at stream offset mh_off (csrc/chain_run.h
// mh_offset): walker r's at lu[r - (r0 & ~1)]; lu holds r1 - r0 + 2 doubles. log_unit_f64
// (0.86 ulp; libm's log 0.52) on the loop's vectors instead of a libm call per walker; u = 0
// (probability 2^-53) is -inf, so that move is taken, as log(0) < ratio is in the reference.
FL_HD void mh_log_uniforms(uint64_t seed, uint64_t mh_off, int64_t r0, int64_t r1, double* __restrict__ lu) {
  const int64_t b0 = r0 >> 1, b1 = (r1 + 1) >> 1;
  fill_uniform_pairs(seed, mh_off, b0, b1, lu);
  for (int64_t i = 0; i < 2 * (b1 - b0); ++i) {
    const double u = lu[i];
    const double l = log_unit_f64(u > 0.0 ? u : 1.0);
    lu[i] = u > 0.0 ? l : -std::numeric_limits<double>::infinity();
  }
}

}  // namespace fastlangevin
