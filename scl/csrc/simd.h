// Shared by scl's native CPU kernels (bt_mlp1.cc, flow_mlp.cc): 8-float vectors, a vectorised exp, and the
// chunked parallel loop over XLA's intra-op thread pool. Header-only (inline functions and templates).
#ifndef SCL_CSRC_SIMD_H_
#define SCL_CSRC_SIMD_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace scl_native {

namespace ffi = xla::ffi;

constexpr int kW = 8;  // floats per vector (GCC/Clang vector extensions: AVX on x86, two NEON registers on ARM)
typedef float vf __attribute__((vector_size(32)));
typedef int32_t vi __attribute__((vector_size(32)));

inline vf load(const float* p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline vf splat(float a) { return vf{} + a; }

// exp(x), x clamped to [-87, 88] (no overflow, no denormal results): Cody-Waite reduction by ln 2, Cephes'
// polynomial for exp on [-ln 2 / 2, ln 2 / 2] (about 1 ulp), 2^n from the exponent bits.
inline vf vexp(vf x) {
  const vf lo = splat(-87.0f), hi = splat(88.0f), magic = splat(12582912.0f);  // 1.5 * 2^23
#ifdef __AVX__
  x = __builtin_ia32_minps256(__builtin_ia32_maxps256(x, lo), hi);
#else
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
#endif
  vf tm = x * 1.44269504088896341f + magic;  // round(x / ln 2) in the low mantissa bits
  vf n = tm - magic;
  vf r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  vf p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  vi bits = ((vi)tm - (vi)magic + 127) << 23;
  return p * (vf)bits;
}

// log(1 + e) for e in [0, 1]: 2 atanh(u), u = e / (2 + e) in [0, 1/3] (series to u^15: error below 1e-8).
inline vf vlog1p_unit(vf e) {
  vf u = e / (2.0f + e);
  vf u2 = u * u;
  vf p = splat(1.0f / 15);
  p = p * u2 + 1.0f / 13;
  p = p * u2 + 1.0f / 11;
  p = p * u2 + 1.0f / 9;
  p = p * u2 + 1.0f / 7;
  p = p * u2 + 1.0f / 5;
  p = p * u2 + 1.0f / 3;
  p = p * u2 + 1.0f;
  return 2.0f * u * p;
}

inline float hsum(vf v) {
  float a = (v[0] + v[4]) + (v[2] + v[6]), b = (v[1] + v[5]) + (v[3] + v[7]);
  return a + b;
}

// Runs body(i, scratch) for each chunk i in [0, chunks), on the calling thread and on helpers scheduled on XLA's
// intra-op pool; each thread has its own scratch of scratch_size floats, zeroed at the start of each call and
// kept between calls (a thread-local buffer: no allocation per call). Chunks are claimed from a counter: the
// caller claims until none is left and then waits only for chunks a helper has claimed (and is running), so it
// never waits on a helper that has not started; a helper that starts late finds nothing to claim (the counters
// are shared, not on the caller's stack, for such helpers, and body is not called).
template <typename Body>
void ParallelChunks(ffi::ThreadPool& pool, int64_t chunks, int64_t scratch_size, Body body) {
  struct Counters {
    std::atomic<int64_t> next{0}, done{0};
  };
  auto S = std::make_shared<Counters>();
  auto work = [S, chunks, scratch_size, body] {
    thread_local std::vector<float> scratch;  // kept between calls: no allocation and no page faults per call
    if (static_cast<int64_t>(scratch.size()) < scratch_size) scratch.resize(scratch_size);
    std::fill(scratch.begin(), scratch.begin() + scratch_size, 0.0f);
    for (int64_t i; (i = S->next.fetch_add(1)) < chunks;) {
      body(i, scratch.data());
      S->done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), chunks) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule(decltype(work)(work));  // a copy per helper
  work();
  while (S->done.load(std::memory_order_acquire) < chunks) std::this_thread::yield();
}

}  // namespace scl_native

#endif  // SCL_CSRC_SIMD_H_
