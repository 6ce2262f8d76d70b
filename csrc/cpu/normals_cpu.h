// The CPU normal generators of csrc/cpu/langevin_cpu.cpp, shared with the fused chains
// (csrc/cpu/chain_cpu.cpp): the normals of Philox blocks [block0, block0 + nblocks) of stream
// (seed, offset) into out[4 * nblocks], in element order (csrc/philox.h). The float32 one
// dispatches to its AVX2 path at run time.
#pragma once

#include <cstdint>

namespace fastlangevin {

void fill_normals_f32(uint64_t seed, uint64_t offset, uint64_t block0, int64_t nblocks, float* __restrict__ out);
void fill_normals_f64(uint64_t seed, uint64_t offset, uint64_t block0, int64_t nblocks, double* __restrict__ out);

}  // namespace fastlangevin
