// B-byte vectors of GCC's vector extension, the one vector type of the CPU chain kernels
// (csrc/cpu/chain_cpu.cpp, csrc/cpu/mlp_chain_cpu.cpp). Written as plain arithmetic on these,
// each kernel is the same per-lane code in its AVX2 and AVX-512 clones (so they give bit-equal
// results); the baseline (SSE2) clone splits them into 16-byte pieces and has no FMA.
#pragma once

namespace fastlangevin {
namespace {

// type: the vector; utype: its unaligned, aliasing view for loads and stores; W: lanes.
template <typename T, int B = 32>
struct Vec {
  typedef T type __attribute__((vector_size(B)));
  typedef T utype __attribute__((vector_size(B), aligned(alignof(T)), may_alias));
  static constexpr int W = B / static_cast<int>(sizeof(T));  // B = 32: float 8, double 4
};

}  // namespace
}  // namespace fastlangevin
