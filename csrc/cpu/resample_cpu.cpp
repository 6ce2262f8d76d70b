// CPU kernels for SMC resampling: the uniform stream and the ancestor indices.
//
// The weights come from at::softmax (float64, vectorised exp: the same call and so the same
// bits as the reference's torch.softmax). Everything after it is one sequential pass for the
// cdf (torch.cumsum on CPU is a sequential float64 loop too, so the cdfs agree bit for bit
// and every backend picks the same ancestors from the same uniforms), then the searches on
// at::parallel_for chunks:
//  * stratified / systematic positions are sorted: one binary search per chunk for its first
//    position, then a merge walk, O(N) in all;
//  * multinomial and the residual slots of residual: one binary search per slot;
//  * the deterministic slots of residual: each walker writes its floor(N w_i) copies.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/softmax.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <vector>

#include "../philox.h"
#include "../resample.h"
#include "isa_cpu.h"
#include "normals_cpu.h"

namespace fastlangevin {
namespace {

// Slots per parallel chunk; every chunk starts with one binary search (sorted schemes) and
// fills a stack buffer of uniforms (16 KiB).
constexpr int64_t kSlots = 2048;

// fill_uniform_pairs compiled for AVX2 / AVX-512 too (integer arithmetic and exact conversions
// only, so every clone gives the same doubles), picked at run time.
#if defined(__x86_64__) || defined(_M_X64)
__attribute__((target("avx2,fma"))) void uniform_pairs_avx2(uint64_t seed, uint64_t offset, int64_t b0, int64_t b1,
                                                            double* __restrict__ out) {
  fill_uniform_pairs(seed, offset, b0, b1, out);
}
__attribute__((target("avx2,fma,avx512f,avx512vl"))) void uniform_pairs_avx512(uint64_t seed, uint64_t offset,
                                                                              int64_t b0, int64_t b1,
                                                                              double* __restrict__ out) {
  fill_uniform_pairs(seed, offset, b0, b1, out);
}
#endif
void uniform_pairs(uint64_t seed, uint64_t offset, int64_t b0, int64_t b1, double* __restrict__ out) {
#if defined(__x86_64__) || defined(_M_X64)
  if (cpu_has(CpuIsa::kAvx512)) return uniform_pairs_avx512(seed, offset, b0, b1, out);
  if (cpu_has(CpuIsa::kAvx2)) return uniform_pairs_avx2(seed, offset, b0, b1, out);
#endif
  fill_uniform_pairs(seed, offset, b0, b1, out);
}

// Uniforms j0 .. j1 - 1 of stream (seed, offset) into buf[0 .. j1 - j0): whole blocks through
// the vectorised uniform_pairs, an odd first or last uniform on its own.
void fill_uniforms(uint64_t seed, uint64_t offset, int64_t j0, int64_t j1, double* buf) {
  int64_t j = j0;
  if ((j & 1) && j < j1) {
    buf[0] = resample_uniform(seed, offset, static_cast<uint64_t>(j));
    ++j;
  }
  const int64_t b1 = j1 >> 1;  // blocks [j / 2, b1) are whole
  if (j < 2 * b1) {
    uniform_pairs(seed, offset, j >> 1, b1, buf + (j - j0));
    j = 2 * b1;
  }
  if (j < j1) buf[j - j0] = resample_uniform(seed, offset, static_cast<uint64_t>(j));
}

void resample_uniforms_out_cpu(at::Tensor& out, int64_t seed, int64_t offset) {
  TORCH_CHECK(out.is_contiguous() && out.scalar_type() == at::kDouble,
              "resample_uniforms: out must be a contiguous float64 tensor, got ", out.scalar_type());
  const int64_t n = out.numel();
  double* o = out.data_ptr<double>();
  at::parallel_for(0, (n + kSlots - 1) / kSlots, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      const int64_t j0 = c * kSlots;
      fill_uniforms(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), j0, std::min(n, j0 + kSlots), o + j0);
    }
  });
}

// cum[i] -> min(cum[i], 1), and 1 from the last positive weight on; returns that index (-1 if
// none). Exactly reference.py's _capped_cdf(cum, _last_positive(w)).
int64_t cap_cdf(double* cum, const double* w, int64_t n) {
  int64_t last = -1;
  for (int64_t i = n - 1; i >= 0; --i) {
    if (w[i] > 0) {
      last = i;
      break;
    }
  }
  for (int64_t i = 0; i < n; ++i) cum[i] = i >= last ? 1.0 : std::min(cum[i], 1.0);
  return last;
}

at::Tensor resample_cpu(const at::Tensor& log_w, c10::string_view scheme_name, const std::optional<at::Tensor>& uniforms,
                        int64_t seed, int64_t offset) {
  const ResampleScheme scheme = parse_resample_scheme(scheme_name);
  check_resample_args(log_w, uniforms);
  const int64_t n = log_w.size(0);
  auto out = at::empty({n}, log_w.options().dtype(at::kLong));
  int64_t* a = out.data_ptr<int64_t>();
  const at::Tensor lw = log_w.to(at::kDouble).contiguous();
  const double* l = lw.data_ptr<double>();
  double lw_max = -std::numeric_limits<double>::infinity();
  bool has_nan = false;
  for (int64_t i = 0; i < n; ++i) {
    has_nan |= std::isnan(l[i]);
    lw_max = std::max(lw_max, l[i]);
  }
  if (has_nan || !std::isfinite(lw_max)) {  // NaN, +inf or all -inf: no valid weights
    out.fill_(-1);
    return out;
  }
  const at::Tensor w_t = at::softmax(lw, 0);
  const double* w = w_t.data_ptr<double>();
  at::Tensor u_t;
  const double* u = nullptr;
  if (uniforms) {
    u_t = uniforms->contiguous();
    u = u_t.data_ptr<double>();
  }
  const uint64_t s = static_cast<uint64_t>(seed), off = static_cast<uint64_t>(offset);
  const int64_t nchunks = (n + kSlots - 1) / kSlots;

  if (scheme == ResampleScheme::kResidual) {
    // counts c_i = floor(N w_i), their running sum C, residuals r_i = N w_i - c_i and their
    // running sum, in reference.py's order of operations.
    std::vector<int64_t> counts_cum(n);
    std::vector<double> res_cdf(n), r(n);
    int64_t csum = 0;
    double rsum = 0.0;
    const double nd = static_cast<double>(n);
    for (int64_t i = 0; i < n; ++i) {
      const double nw = w[i] * nd;
      const double c = std::floor(nw);
      r[i] = nw - c;
      csum += static_cast<int64_t>(c);
      counts_cum[i] = csum;
      rsum += r[i];
      res_cdf[i] = rsum;
    }
    const int64_t F = csum;
    for (int64_t i = 0; i < n; ++i) res_cdf[i] /= rsum;  // all 0 / 0 only if F = N: then unused
    const int64_t res_last = cap_cdf(res_cdf.data(), r.data(), n);
    // deterministic slots [0, F): walker i fills [C_{i-1}, C_i)
    at::parallel_for(0, n, kSlots, [&](int64_t ib, int64_t ie) {
      for (int64_t i = ib; i < ie; ++i) {
        for (int64_t j = i ? counts_cum[i - 1] : 0; j < counts_cum[i]; ++j) a[j] = i;
      }
    });
    // residual slots [F, n): multinomial draws with u_j from the residual weights
    at::parallel_for(F, n, kSlots, [&](int64_t jb, int64_t je) {
      alignas(64) double buf[kSlots];
      for (int64_t j0 = jb; j0 < je; j0 += kSlots) {
        const int64_t j1 = std::min(je, j0 + kSlots);
        const double* uj = u ? u + j0 : buf;
        if (!u) fill_uniforms(s, off, j0, j1, buf);
        for (int64_t j = j0; j < j1; ++j) a[j] = std::min(count_le(res_cdf.data(), n, uj[j - j0]), res_last);
      }
    });
    return out;
  }

  std::vector<double> cdf(n);
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) cdf[i] = sum += w[i];  // torch.cumsum's sequential order
  const int64_t last = cap_cdf(cdf.data(), w, n);
  const double* c = cdf.data();
  const double u0 = scheme != ResampleScheme::kSystematic ? 0.0 : u ? u[0] : resample_uniform(s, off, 0);
  at::parallel_for(0, nchunks, 1, [&](int64_t cb, int64_t ce) {
    alignas(64) double buf[kSlots];
    for (int64_t ch = cb; ch < ce; ++ch) {
      const int64_t j0 = ch * kSlots, j1 = std::min(n, j0 + kSlots);
      const double* uj = buf;
      if (scheme != ResampleScheme::kSystematic) {
        if (u) {
          uj = u + j0;
        } else {
          fill_uniforms(s, off, j0, j1, buf);
        }
      }
      if (scheme == ResampleScheme::kMultinomial) {
        for (int64_t j = j0; j < j1; ++j) a[j] = std::min(count_le(c, n, uj[j - j0]), last);
        continue;
      }
      // Sorted positions: a binary search for the first, then a merge walk. Measured on the
      // 2-core dev box, N = 10^6 systematic on one thread: 30 ms in all, about 20 ms of it in
      // this walk (its exits are coin flips: branch misses); a branch-free walk (advance i or j
      // per step) was 26 ms, not worth the less obvious code. torch.multinomial: 295 ms.
      auto pos = [&](int64_t j) {
        return strat_position(j, scheme == ResampleScheme::kSystematic ? u0 : uj[j - j0], n);
      };
      int64_t i = count_le(c, n, pos(j0));
      for (int64_t j = j0; j < j1; ++j) {
        const double p = pos(j);
        while (i < n && c[i] <= p) ++i;
        a[j] = std::min(i, last);
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlangevin, CPU, m) {
  m.impl("resample_uniforms_out", &resample_uniforms_out_cpu);
  m.impl("resample", &resample_cpu);
}

}  // namespace fastlangevin
