// Which instruction set the CPU kernels use, decided once per process: the extension is built
// for baseline x86-64 (SSE2) so that one wheel runs everywhere, and the hot loops have AVX2 + FMA
// clones, and AVX-512 ones for the normal generator and the mixture / double-well and MLP
// chains, picked here at run time.
//
// FASTLANGEVIN_CPU_ISA=generic|avx2|avx512 caps the choice (never above what the CPU has; an
// unknown value is an error at the first kernel call). The AVX2 and AVX-512 paths give the same
// results bit for bit; the generic path has no FMA, so its Box-Muller and chain arithmetic round
// differently (normals within 2.4e-7; tests/test_philox.py::test_cpu_isa_paths_agree runs each
// path). The variable is there to test the slower paths on a machine that has the fast ones,
// and to measure them.
#pragma once

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>

namespace fastlangevin {

enum class CpuIsa : int { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };

inline CpuIsa detect_cpu_isa() {
  CpuIsa has = CpuIsa::kGeneric;
#if defined(__x86_64__) || defined(_M_X64)
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    has = CpuIsa::kAvx2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")) has = CpuIsa::kAvx512;
  }
#endif
  const char* cap = std::getenv("FASTLANGEVIN_CPU_ISA");
  if (cap == nullptr || *cap == '\0') return has;
  CpuIsa want;
  if (std::strcmp(cap, "generic") == 0) {
    want = CpuIsa::kGeneric;
  } else if (std::strcmp(cap, "avx2") == 0) {
    want = CpuIsa::kAvx2;
  } else if (std::strcmp(cap, "avx512") == 0) {
    want = CpuIsa::kAvx512;
  } else {
    TORCH_CHECK(false, "fastlangevin: FASTLANGEVIN_CPU_ISA must be generic, avx2 or avx512, got '", cap, "'");
  }
  return static_cast<int>(want) < static_cast<int>(has) ? want : has;
}

// The instruction set of this process (detected on the first call).
inline CpuIsa cpu_isa() {
  static const CpuIsa isa = detect_cpu_isa();
  return isa;
}

inline bool cpu_has(CpuIsa level) { return static_cast<int>(cpu_isa()) >= static_cast<int>(level); }

}  // namespace fastlangevin
