// CPU kernels for the noise stream and the Langevin step (OpenMP through at::parallel_for,
// which uses the same libgomp thread pool as the rest of torch and honours
// torch.set_num_threads).
//
// Layout of the work: the flattened tensor is cut into chunks of kChunk elements (a multiple
// of 4, so a chunk never splits a Philox block). Per chunk, phase 1 writes the chunk's normals
// into a stack buffer with a loop the compiler vectorises (see fill_normals_f32), and phase 2
// runs the elementwise update reading x, grad and that buffer. The buffer keeps the noise in
// L1: the step reads 8 and writes 4 bytes per float32 element and never spills the noise to
// memory, which is what makes it faster than the eager composition (which writes and re-reads
// a full randn tensor).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif
#include <cmath>
#include <limits>

#include "../normal.h"
#include "../philox.h"
#include "../step_checks.h"
#include "isa_cpu.h"
#include "normals_cpu.h"

namespace fastlangevin {
namespace {

// 2048 float32 normals = 8 KiB: phase 1's output stays in a 32 KiB L1 next to the three
// streams of phase 2. Measured on the 2-core EPYC dev box, a [4096, 784] float32 step on 2
// threads (median of 5): 1024 -> 5.38 ms, 2048 -> 4.55 ms, 4096 -> 4.85 ms.
// (-DFL_CHUNK=N rebuilds with another size for such measurements.)
#ifndef FL_CHUNK
#define FL_CHUNK 2048
#endif
constexpr int64_t kChunk = FL_CHUNK;

constexpr int kTile = 64;  // Philox blocks per tile: 4 registers x 8 lanes x 2 (AVX2)

// The normals of nblocks (<= kTile) blocks from `first`, one block at a time: the portable
// path, and the tail of a tile-wise call. Always inlined, so that it is compiled for the
// caller's target like the tile loop it completes (the same FMA contractions: an element's
// value never depends on whether it fell in a full tile or a tail).
template <typename T>
FL_HD void normals_blocks(uint64_t seed, uint64_t offset, uint64_t first, int64_t nblocks, T* __restrict__ out) {
  for (int64_t j = 0; j < nblocks; ++j) {
    const Words4 w = philox_block(seed, offset, first + static_cast<uint64_t>(j));
    T z[4];
    if constexpr (std::is_same_v<T, float>) {
      normals4_f32(w, z);
    } else {
      normals4_f64(w, z);
    }
    out[4 * j + 0] = z[0];
    out[4 * j + 1] = z[1];
    out[4 * j + 2] = z[2];
    out[4 * j + 3] = z[3];
  }
}

// Box-Muller on one tile's lane-major words w[4][kTile] (word p of block j at w[p][j], paired
// by csrc/normal.h's box_muller_pair as normals4_f32 / normals4_f64 pair them) into
// z[4][kTile]: plain C++ that GCC vectorises (8 floats or 4 doubles wide) across blocks for
// whichever target the caller is compiled for.
template <typename T>
FL_HD void box_muller_tile(const uint32_t (&w)[4][kTile], T (&z)[4][kTile]) {
  for (int j = 0; j < kTile; ++j) {
    box_muller_pair(w[0][j], w[1][j], z[0][j], z[1][j]);
    box_muller_pair(w[2][j], w[3][j], z[2][j], z[3][j]);
  }
}

// Normals of blocks [block0, block0 + nblocks) of stream (seed, offset) into out[4 * nblocks].
// The portable version: GCC vectorises this loop for whatever ISA it is compiled for.
// (No `#pragma omp simd`: with it GCC 12 treats the Words4 temporaries as simd arrays, wants
// scatter stores and gives up; the plain loop vectorises, -fopt-info-vec.)
template <typename T>
void fill_normals_generic(uint64_t seed, uint64_t offset, uint64_t block0, int64_t nblocks, T* __restrict__ out) {
  normals_blocks(seed, offset, block0, nblocks, out);
}

#if defined(__x86_64__) || defined(_M_X64)
// The AVX2 version, picked at run time. Measured on the 2-core EPYC dev box, one thread, the
// normals of a [4096, 784] tensor: the portable loop compiled for AVX2 4.2 ns/element; this one
// 2.0 ns/element. Two things make the difference:
//  * Philox on 8 blocks per register with explicit vpmuludq on the even and odd lanes, and 4
//    independent registers in flight: the 10 rounds are a serial dependency chain, so one
//    register at a time waits on multiply latency (2.9 -> 1.2 ns/element for the words alone).
//  * Box-Muller on lane-major arrays (8-wide), then a 4x8 shuffle transpose into element order;
//    writing element order directly is a stride-4 store group that GCC does only 4-wide.

// z[4][kTile] (lane-major) -> out[4 * kTile] in element order: 4 x 8 (float) or 4 x 4 (double)
// shuffle transposes.
__attribute__((target("avx2,fma"))) FL_HD void store_element_order(const float (&z)[4][kTile],
                                                                     float* __restrict__ o) {
  for (int j = 0; j < kTile; j += 8) {
    const __m256 a = _mm256_load_ps(z[0] + j), b = _mm256_load_ps(z[1] + j);
    const __m256 c = _mm256_load_ps(z[2] + j), d = _mm256_load_ps(z[3] + j);
    const __m256 t0 = _mm256_unpacklo_ps(a, b), t1 = _mm256_unpackhi_ps(a, b);
    const __m256 t2 = _mm256_unpacklo_ps(c, d), t3 = _mm256_unpackhi_ps(c, d);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    _mm256_storeu_ps(o + 4 * j + 0, _mm256_permute2f128_ps(u0, u1, 0x20));
    _mm256_storeu_ps(o + 4 * j + 8, _mm256_permute2f128_ps(u2, u3, 0x20));
    _mm256_storeu_ps(o + 4 * j + 16, _mm256_permute2f128_ps(u0, u1, 0x31));
    _mm256_storeu_ps(o + 4 * j + 24, _mm256_permute2f128_ps(u2, u3, 0x31));
  }
}

__attribute__((target("avx2,fma"))) FL_HD void store_element_order(const double (&z)[4][kTile],
                                                                     double* __restrict__ o) {
  for (int j = 0; j < kTile; j += 4) {
    const __m256d a = _mm256_load_pd(z[0] + j), b = _mm256_load_pd(z[1] + j);
    const __m256d c = _mm256_load_pd(z[2] + j), d = _mm256_load_pd(z[3] + j);
    const __m256d t0 = _mm256_unpacklo_pd(a, b), t1 = _mm256_unpackhi_pd(a, b);  // blocks j, j+2 | j+1, j+3 (words 0, 1)
    const __m256d t2 = _mm256_unpacklo_pd(c, d), t3 = _mm256_unpackhi_pd(c, d);  // (words 2, 3)
    _mm256_storeu_pd(o + 4 * j + 0, _mm256_permute2f128_pd(t0, t2, 0x20));
    _mm256_storeu_pd(o + 4 * j + 4, _mm256_permute2f128_pd(t1, t3, 0x20));
    _mm256_storeu_pd(o + 4 * j + 8, _mm256_permute2f128_pd(t0, t2, 0x31));
    _mm256_storeu_pd(o + 4 * j + 12, _mm256_permute2f128_pd(t1, t3, 0x31));
  }
}

__attribute__((target("avx2,fma"))) inline void mulhilo8(__m256i a, __m256i m, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(a, m);                        // lanes 0,2,4,6 -> 64-bit
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);  // lanes 1,3,5,7 -> 64-bit
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

// The words of the kTile blocks from `first` (no low-word wrap inside) into w[p][j].
__attribute__((target("avx2,fma"))) FL_HD void philox_tile_avx2(uint64_t seed, uint64_t offset, uint64_t first,
                                                                  uint32_t (&w)[4][kTile]) {
  constexpr int V = 4;  // independent 8-block registers in flight
  const __m256i M0 = _mm256_set1_epi32(static_cast<int>(kPhiloxM0));
  const __m256i M1 = _mm256_set1_epi32(static_cast<int>(kPhiloxM1));
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int v = 0; v < kTile; v += 8 * V) {
    __m256i c0[V], c1[V], c2[V], c3[V];
    for (int q = 0; q < V; ++q) {
      const uint64_t b = first + static_cast<uint64_t>(v + 8 * q);
      c0[q] = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(b))), lane);
      c1[q] = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(b >> 32)));
      c2[q] = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(offset)));
      c3[q] = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(offset >> 32)));
    }
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    for (int r = 0; r < kPhiloxRounds; ++r) {
      if (r > 0) {
        k0 += kPhiloxW0;
        k1 += kPhiloxW1;
      }
      const __m256i K0 = _mm256_set1_epi32(static_cast<int>(k0)), K1 = _mm256_set1_epi32(static_cast<int>(k1));
      for (int q = 0; q < V; ++q) {
        __m256i hi0, lo0, hi1, lo1;
        mulhilo8(c0[q], M0, hi0, lo0);
        mulhilo8(c2[q], M1, hi1, lo1);
        c0[q] = _mm256_xor_si256(_mm256_xor_si256(hi1, c1[q]), K0);
        c1[q] = lo1;
        c2[q] = _mm256_xor_si256(_mm256_xor_si256(hi0, c3[q]), K1);
        c3[q] = lo0;
      }
    }
    for (int q = 0; q < V; ++q) {
      _mm256_store_si256(reinterpret_cast<__m256i*>(w[0] + v + 8 * q), c0[q]);
      _mm256_store_si256(reinterpret_cast<__m256i*>(w[1] + v + 8 * q), c1[q]);
      _mm256_store_si256(reinterpret_cast<__m256i*>(w[2] + v + 8 * q), c2[q]);
      _mm256_store_si256(reinterpret_cast<__m256i*>(w[3] + v + 8 * q), c3[q]);
    }
  }
}

// The same stream with AVX-512, picked at run time where the CPU has it. Each zmm register
// holds 8 blocks' words in the low halves of 64-bit lanes, so vpmuludq reads them as they are: a
// round is 2 multiplies, 2 shifts (the high products down) and 2 three-way XORs (one vpternlogq
// each). Round 0 is mostly lane-invariant (the c1, c2, c3 words are the block's high word and
// the offset, the same for a whole tile), so it is one multiply per register; vpmovqd packs the
// low words back into block order. The Box-Muller loop compiled for this target is also faster
// (16 floats wide). Measured on the 2-core EPYC (Zen 4) dev box, one thread, 65536 float32 /
// 32768 float64 normals per call from L2 (minimum over 15 rounds of 1000 calls, three
// interleaved runs of each build):
//   * 4 zmm registers in flight: float32 1.00 -> 0.94 ns/element against the previous layout
//     (8 ymm registers of 4 blocks under AVX-512VL, whose 32 state registers spilled to the
//     stack); 2 zmm registers 1.06, 8 (spilling again) 0.95. (An older measurement, 2048
//     normals from L1: AVX2 path 1.15, the ymm AVX-512 layout 0.85.)
//   * float64 1.83 -> 1.80 called out of line (philox_tile_avx512_outline), but 1.89 inlined
//     into the float64 fill; out of line in the float32 fill, 1.02. GCC 12's scheduling of the
//     surrounding Box-Muller loop, not anything in Philox itself, so each dtype gets the faster.
// _mm512_mul_epu32, _mm512_srli_epi64 and _mm512_cvtepi64_epi32 with a zero pass-through and
// every lane selected (the same instructions): GCC 12's own spellings pass an "undefined"
// vector, a self-initialised placeholder that it then reports as "'__Y' is used uninitialized"
// wherever they are inlined.
__attribute__((target("avx2,fma,avx512f,avx512vl"))) inline __m512i mul_epu32_512(__m512i a, __m512i b) {
  return _mm512_maskz_mul_epu32(static_cast<__mmask8>(0xFF), a, b);
}
__attribute__((target("avx2,fma,avx512f,avx512vl"))) inline __m512i high_words_512(__m512i a) {
  return _mm512_maskz_srli_epi64(static_cast<__mmask8>(0xFF), a, 32);
}
__attribute__((target("avx2,fma,avx512f,avx512vl"))) inline __m256i low_words_512(__m512i a) {
  return _mm512_maskz_cvtepi64_epi32(static_cast<__mmask8>(0xFF), a);
}

__attribute__((target("avx2,fma,avx512f,avx512vl"))) FL_HD void philox_tile_avx512(uint64_t seed, uint64_t offset,
                                                                                  uint64_t first,
                                                                                  uint32_t (&w)[4][kTile]) {
  constexpr int V = 4;  // independent 8-block registers in flight (see above)
  const __m512i M0 = _mm512_set1_epi64(kPhiloxM0);
  const __m512i M1 = _mm512_set1_epi64(kPhiloxM1);
  const __m512i lane = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
  const uint32_t k00 = static_cast<uint32_t>(seed), k10 = static_cast<uint32_t>(seed >> 32);
  // round 0's lane-invariant half: M1 * (offset's low word)
  const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * static_cast<uint32_t>(offset);
  const __m512i r0c1 = _mm512_set1_epi64(static_cast<uint32_t>(p1));
  const __m512i r0c2x = _mm512_set1_epi64(static_cast<uint32_t>(offset >> 32) ^ k10);
  const __m512i r0c0 =
      _mm512_set1_epi64(static_cast<uint32_t>(p1 >> 32) ^ static_cast<uint32_t>(first >> 32) ^ k00);
  for (int v = 0; v < kTile; v += 8 * V) {
    __m512i c0[V], c1[V], c2[V], c3[V];
    for (int q = 0; q < V; ++q) {
      const uint64_t b = first + static_cast<uint64_t>(v + 8 * q);
      const __m512i p0 =
          mul_epu32_512(_mm512_add_epi64(_mm512_set1_epi64(static_cast<uint32_t>(b)), lane), M0);
      c0[q] = r0c0;
      c1[q] = r0c1;
      c2[q] = _mm512_xor_si512(high_words_512(p0), r0c2x);
      c3[q] = p0;
    }
    uint32_t k0 = k00, k1 = k10;
    for (int r = 1; r < kPhiloxRounds; ++r) {
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
      const __m512i K0 = _mm512_set1_epi64(k0), K1 = _mm512_set1_epi64(k1);
      for (int q = 0; q < V; ++q) {
        const __m512i p0 = mul_epu32_512(c0[q], M0);
        const __m512i p1q = mul_epu32_512(c2[q], M1);
        c0[q] = _mm512_ternarylogic_epi64(high_words_512(p1q), c1[q], K0, 0x96);
        c2[q] = _mm512_ternarylogic_epi64(high_words_512(p0), c3[q], K1, 0x96);
        c1[q] = p1q;
        c3[q] = p0;
      }
    }
    for (int q = 0; q < V; ++q) {
      _mm256_store_si256(reinterpret_cast<__m256i*>(w[0] + v + 8 * q), low_words_512(c0[q]));
      _mm256_store_si256(reinterpret_cast<__m256i*>(w[1] + v + 8 * q), low_words_512(c1[q]));
      _mm256_store_si256(reinterpret_cast<__m256i*>(w[2] + v + 8 * q), low_words_512(c2[q]));
      _mm256_store_si256(reinterpret_cast<__m256i*>(w[3] + v + 8 * q), low_words_512(c3[q]));
    }
  }
}

__attribute__((target("avx2,fma,avx512f,avx512vl"), noinline)) void philox_tile_avx512_outline(
    uint64_t seed, uint64_t offset, uint64_t first, uint32_t (&w)[4][kTile]) {
  philox_tile_avx512(seed, offset, first, w);
}

// One tile-wise fill per (ISA, dtype): Philox words for a whole tile, Box-Muller, element order;
// a short tail, or a tile whose low counter word wraps (blocks near a multiple of 2^32, i.e.
// element 2^34 and beyond), goes block by block (normals_blocks, inlined for the same target).
#define FL_DEFINE_FILL(NAME, TARGET, T, PHILOX_TILE)                                                     \
  __attribute__((target(TARGET))) void NAME(uint64_t seed, uint64_t offset, uint64_t block0,             \
                                            int64_t nblocks, T* __restrict__ out) {                      \
    alignas(32) uint32_t w[4][kTile];                                                                    \
    alignas(32) T z[4][kTile];                                                                           \
    for (int64_t t = 0; t < nblocks; t += kTile) {                                                       \
      const uint64_t first = block0 + static_cast<uint64_t>(t);                                          \
      if (nblocks - t < kTile || static_cast<uint32_t>(first) > 0xFFFFFFFFu - kTile) {                   \
        normals_blocks<T>(seed, offset, first, std::min<int64_t>(kTile, nblocks - t), out + 4 * t);      \
        continue;                                                                                        \
      }                                                                                                  \
      PHILOX_TILE(seed, offset, first, w);                                                               \
      box_muller_tile<T>(w, z);                                                                          \
      store_element_order(z, out + 4 * t);                                                               \
    }                                                                                                    \
  }

FL_DEFINE_FILL(fill_normals_f32_avx2, "avx2,fma", float, philox_tile_avx2)
FL_DEFINE_FILL(fill_normals_f64_avx2, "avx2,fma", double, philox_tile_avx2)
FL_DEFINE_FILL(fill_normals_f32_avx512, "avx2,fma,avx512f,avx512vl", float, philox_tile_avx512)
FL_DEFINE_FILL(fill_normals_f64_avx512, "avx2,fma,avx512f,avx512vl", double, philox_tile_avx512_outline)
#undef FL_DEFINE_FILL

#endif

}  // namespace

// Exported (csrc/cpu/normals_cpu.h) for the fused chains of csrc/cpu/chain_cpu.cpp.
void fill_normals_f32(uint64_t seed, uint64_t offset, uint64_t block0, int64_t nblocks, float* __restrict__ out) {
#if defined(__x86_64__) || defined(_M_X64)
  if (cpu_has(CpuIsa::kAvx512)) return fill_normals_f32_avx512(seed, offset, block0, nblocks, out);
  if (cpu_has(CpuIsa::kAvx2)) return fill_normals_f32_avx2(seed, offset, block0, nblocks, out);
#endif
  fill_normals_generic(seed, offset, block0, nblocks, out);
}

void fill_normals_f64(uint64_t seed, uint64_t offset, uint64_t block0, int64_t nblocks, double* __restrict__ out) {
#if defined(__x86_64__) || defined(_M_X64)
  if (cpu_has(CpuIsa::kAvx512)) return fill_normals_f64_avx512(seed, offset, block0, nblocks, out);
  if (cpu_has(CpuIsa::kAvx2)) return fill_normals_f64_avx2(seed, offset, block0, nblocks, out);
#endif
  fill_normals_generic(seed, offset, block0, nblocks, out);
}

namespace {

// Normals for elements [i0, i1) (i0 a multiple of 4) into buf[0 .. i1 - i0).
template <typename acc_t>
void chunk_normals(uint64_t seed, uint64_t offset, int64_t i0, int64_t i1, acc_t* buf) {
  const int64_t n = i1 - i0;
  const int64_t full = n / 4;
  acc_t tail[4];
  if constexpr (std::is_same_v<acc_t, float>) {
    fill_normals_f32(seed, offset, static_cast<uint64_t>(i0 / 4), full, buf);
    if (n % 4) fill_normals_f32(seed, offset, static_cast<uint64_t>(i0 / 4 + full), 1, tail);
  } else {
    fill_normals_f64(seed, offset, static_cast<uint64_t>(i0 / 4), full, buf);
    if (n % 4) fill_normals_f64(seed, offset, static_cast<uint64_t>(i0 / 4 + full), 1, tail);
  }
  for (int64_t k = 0; k < n % 4; ++k) buf[4 * full + k] = tail[k];
}

at::Tensor philox_cpu(const at::Tensor& counter, int64_t seed) {
  TORCH_CHECK(counter.dim() == 2 && counter.size(1) == 4 && counter.scalar_type() == at::kLong,
              "philox: counter must be int64 [n, 4], got ", counter.scalar_type(), " ", counter.sizes());
  auto c = counter.contiguous();
  auto out = at::empty_like(c);
  const int64_t* p = c.data_ptr<int64_t>();
  int64_t* o = out.data_ptr<int64_t>();
  const uint64_t s = static_cast<uint64_t>(seed);
  at::parallel_for(0, c.size(0), 4096, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const Words4 w = philox4x32_10(static_cast<uint32_t>(p[4 * r]), static_cast<uint32_t>(p[4 * r + 1]),
                                     static_cast<uint32_t>(p[4 * r + 2]), static_cast<uint32_t>(p[4 * r + 3]),
                                     static_cast<uint32_t>(s), static_cast<uint32_t>(s >> 32));
      for (int k = 0; k < 4; ++k) o[4 * r + k] = static_cast<int64_t>(w.w[k]);
    }
  });
  return out;
}

void randn_out_cpu(at::Tensor& out, int64_t seed, int64_t offset) {
  TORCH_CHECK(out.is_contiguous(), "randn: out must be contiguous");
  const int64_t n = out.numel();
  if (n == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "randn_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, (n + kChunk - 1) / kChunk, 1, [&](int64_t cb, int64_t ce) {
      alignas(64) acc_t buf[kChunk];
      for (int64_t ch = cb; ch < ce; ++ch) {
        const int64_t i0 = ch * kChunk, i1 = std::min(n, i0 + kChunk);
        chunk_normals<acc_t>(seed, offset, i0, i1, buf);
        for (int64_t i = i0; i < i1; ++i) o[i] = static_cast<scalar_t>(buf[i - i0]);
      }
    });
  });
}

template <typename acc_t>
struct StepParams {
  acc_t a, s, inv_ref, clip, lo, hi;
  bool has_ref, has_clip, has_clamp;
};

// The update for elements [i0, i1) with one step size a and noise std s:
//     y = clamp( x - a * ( clip(g) + x * inv_ref ) + s * xi )
// in exactly this order (the reference in fastlangevin/reference.py does the same).
template <typename scalar_t, typename acc_t>
inline void update_range(const scalar_t* __restrict__ x, const scalar_t* __restrict__ g,
                         const acc_t* __restrict__ xi, scalar_t* __restrict__ y, int64_t n,
                         acc_t a, acc_t s, const StepParams<acc_t>& p) {
  for (int64_t i = 0; i < n; ++i) {
    const acc_t xv = static_cast<acc_t>(x[i]);
    acc_t gv = static_cast<acc_t>(g[i]);
    if (p.has_clip) {
      gv = gv < -p.clip ? -p.clip : gv;  // NaN propagates: comparisons with NaN are false
      gv = gv > p.clip ? p.clip : gv;
    }
    const acc_t drift = p.has_ref ? gv + xv * p.inv_ref : gv;
    acc_t v = xv - a * drift;
    if (xi != nullptr) v = v + s * xi[i];
    if (p.has_clamp) {
      v = v < p.lo ? p.lo : v;
      v = v > p.hi ? p.hi : v;
    }
    y[i] = static_cast<scalar_t>(v);
  }
}

void langevin_step_out_cpu(const at::Tensor& x, const at::Tensor& grad, const std::optional<at::Tensor>& noise,
                           const std::optional<at::Tensor>& step_t, const std::optional<at::Tensor>& std_t,
                           double step, double noise_std, double inv_ref_var, double grad_clip, double clamp_lo,
                           double clamp_hi, int64_t seed, int64_t offset, at::Tensor& out) {
  check_step_args(x, grad, noise, step_t, std_t, out);
  if (step_apart_if_shifted(x, grad, noise, step_t, std_t, out, [&](at::Tensor& y) {
        langevin_step_out_cpu(x, grad, noise, step_t, std_t, step, noise_std, inv_ref_var, grad_clip, clamp_lo,
                              clamp_hi, seed, offset, y);
      })) {
    return;
  }
  const int64_t n = x.numel();
  if (n == 0) return;
  const int64_t rows = x.size(0);
  const int64_t row_len = rows > 0 ? n / rows : 0;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "langevin_step_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    StepParams<acc_t> p;
    p.inv_ref = static_cast<acc_t>(inv_ref_var);
    p.has_ref = inv_ref_var != 0.0;
    p.clip = static_cast<acc_t>(grad_clip);
    p.has_clip = std::isfinite(grad_clip);
    p.lo = static_cast<acc_t>(clamp_lo);
    p.hi = static_cast<acc_t>(clamp_hi);
    p.has_clamp = std::isfinite(clamp_lo) || std::isfinite(clamp_hi);
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* gp = grad.data_ptr<scalar_t>();
    scalar_t* yp = out.data_ptr<scalar_t>();
    const acc_t* a_row = step_t ? step_t->data_ptr<acc_t>() : nullptr;
    const acc_t* s_row = std_t ? std_t->data_ptr<acc_t>() : nullptr;
    // Noise is needed unless the std is a scalar 0 (CoopVAEBM's noise-free "Langevin").
    const bool need_rng = !noise && (s_row != nullptr || noise_std != 0.0);
    const acc_t* noise_p = nullptr;
    at::Tensor noise_acc;
    if (noise) {
      noise_acc = noise->scalar_type() == c10::CppTypeToScalarType<acc_t>::value
                      ? *noise
                      : noise->to(c10::CppTypeToScalarType<acc_t>::value);
      noise_p = noise_acc.data_ptr<acc_t>();
    }

    at::parallel_for(0, (n + kChunk - 1) / kChunk, 1, [&](int64_t cb, int64_t ce) {
      alignas(64) acc_t buf[kChunk];
      for (int64_t ch = cb; ch < ce; ++ch) {
        const int64_t i0 = ch * kChunk, i1 = std::min(n, i0 + kChunk);
        const acc_t* xi = nullptr;
        if (need_rng) {
          chunk_normals<acc_t>(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), i0, i1, buf);
          xi = buf;
        } else if (noise_p) {
          xi = noise_p + i0;
        }
        if (!a_row && !s_row) {
          update_range<scalar_t, acc_t>(xp + i0, gp + i0, xi, yp + i0, i1 - i0, static_cast<acc_t>(step),
                                        static_cast<acc_t>(noise_std), p);
          continue;
        }
        // Per-walker step or std: walk the rows that overlap this chunk.
        for (int64_t i = i0; i < i1;) {
          const int64_t r = i / row_len;
          const int64_t e = std::min(i1, (r + 1) * row_len);
          const acc_t a = a_row ? a_row[r] : static_cast<acc_t>(step);
          const acc_t s = s_row ? s_row[r] : static_cast<acc_t>(noise_std);
          update_range<scalar_t, acc_t>(xp + i, gp + i, xi ? xi + (i - i0) : nullptr, yp + i, e - i, a, s, p);
          i = e;
        }
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlangevin, CPU, m) {
  m.impl("philox", &philox_cpu);
  m.impl("randn_out", &randn_out_cpu);
  m.impl("langevin_step_out", &langevin_step_out_cpu);
}

}  // namespace fastlangevin
