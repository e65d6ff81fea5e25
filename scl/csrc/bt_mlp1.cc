// The Bradley-Terry loss, its gradient and its Hessian-vector products for a reward with one hidden SiLU layer:
// XLA FFI custom calls for the CPU (scl/_native.py builds, loads and registers them; scl/reward_model.py calls them).
//
//   SclBtMlp1        pairs (x_i, z_i): the summed loss and its gradient (below)
//   SclMlp1Values    rows x_j: R(x_j)
//   SclMlp1PullBack  rows x_j and cotangents c_j: sum_j c_j dR(x_j)/dtheta, each row's forward pass recomputed
//                    (the last two serve pairs that index a pool of samples; dL/dR between them is JAX's)
//   SclBtMlp1Hvp     pairs and a tangent v of the parameters: the Hessian of the summed loss times v (below)
//   SclMlp1Tangents  rows x_j and a tangent v: R(x_j) and its derivative along v
//   SclMlp1PullBackTangent  rows x_j, a tangent v, cotangents c_j and their tangents c_j': the derivative of
//                    SclMlp1PullBack's sum along v (the last two make H v for pairs that index a pool of samples)
//
// For pairs (x_i, z_i), labels o_i and weights w_i, with R(f) = w2 . silu(f W1 + b1) + b2, d_i = R(z_i) - R(x_i):
//
//   nll = sum_i w_i [o_i softplus(-d_i) + (1 - o_i) softplus(d_i)]      (summed, not averaged)
//   c   = dnll/dR per row: -g_i at x_i, +g_i at z_i, g_i = w_i (sigmoid(d_i) - o_i)
//   dW2 = sum_rows c h,  db2 = sum_rows c,  [db1; dW1] = ([c; c f]^T silu'(a)) * w2
//
// with silu'(a) = s (1 + a (1 - s)), s = sigmoid(a). The same quantities as scl.reward_model's JAX path
// (_nll_sum_and_grad with _silu_mlp1_value_and_pullback), to float rounding. XLA runs that path as about eight
// kernels over [2n, H] arrays, each read from and written to memory; here a block of 16 pairs is made, used and
// dropped in L1, and the sigmoid's exponential is a polynomial over 8-float vectors.
//
// Work is split into fixed chunks of 128 pairs, each summed on its own and the chunks added in order, so the
// result does not depend on how many threads ran them; the chunks are shared with XLA's intra-op thread pool.
// Shapes: w1 [d, H] (1 <= d <= 4, H a multiple of 8), b1 [H], w2 [H, 1], b2 [1], x and z [n, d], o and w [n];
// float32 only. The Python side checks these before it calls.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"
#include "simd.h"

namespace ffi = xla::ffi;

namespace {

using namespace scl_native;  // vf, load, store, splat, vexp, vlog1p_unit, hsum, ParallelChunks

constexpr int64_t kBlock = 16;   // pairs per block: 32 rows of h and silu' (16 KiB at H = 64) stay in L1
constexpr int64_t kChunk = 128;  // pairs per partial sum

struct Args {
  int64_t H, n;
  const float *W1, *B1, *W2;
  float b2;
  const float *X, *Z, *O, *WT;
};

constexpr int kRows = 8;  // rows whose forward passes are interleaved

// h = silu(a), silu'(a) and R of NR consecutive rows (features f[j], outputs at h + j H, s + j H, r[j]).
template <int D, int NR>
inline void Forward(const Args& A, const float* const* f, float* h, float* s, float* r) {
  const int64_t H = A.H, V = H / kW;
  float fk[NR][D];
  for (int j = 0; j < NR; ++j)
    for (int k = 0; k < D; ++k) fk[j][k] = f[j][k];
  vf acc[NR] = {};
  for (int64_t v = 0; v < V; ++v) {
    vf b = load(A.B1 + v * kW), w2 = load(A.W2 + v * kW), a[NR], sg[NR];
    for (int j = 0; j < NR; ++j) a[j] = b;
    for (int k = 0; k < D; ++k) {
      vf w = load(A.W1 + k * H + v * kW);
      for (int j = 0; j < NR; ++j) a[j] += fk[j][k] * w;
    }
    for (int j = 0; j < NR; ++j) sg[j] = 1.0f / (1.0f + vexp(-a[j]));
    for (int j = 0; j < NR; ++j) {
      vf hv = a[j] * sg[j];
      store(h + j * H + v * kW, hv);
      store(s + j * H + v * kW, sg[j] * (1.0f + a[j] * (1.0f - sg[j])));
      acc[j] += hv * w2;
    }
  }
  for (int j = 0; j < NR; ++j) r[j] = hsum(acc[j]) + A.b2;
}

// Adds the rows' pull-back of cotangents c: dW2 += sum c h, db1 / w2 += sum c silu', dW1 / w2 += sum c silu' f;
// for each 8 hidden units, all rows into accumulators held in registers.
template <int D>
inline void PullBack(int64_t H, int64_t rows, const float* const* rowf, const float* c, const float* hbuf,
                     const float* sbuf, float* gw2, float* gb1, float* gw1) {
  for (int64_t v = 0; v < H / kW; ++v) {
    vf a2 = load(gw2 + v * kW), a1 = load(gb1 + v * kW), ak[D];
    for (int k = 0; k < D; ++k) ak[k] = load(gw1 + k * H + v * kW);
    for (int64_t row = 0; row < rows; ++row) {
      const float cr = c[row];
      a2 += cr * load(hbuf + row * H + v * kW);
      vf t = cr * load(sbuf + row * H + v * kW);
      a1 += t;
      for (int k = 0; k < D; ++k) ak[k] += rowf[row][k] * t;
    }
    store(gw2 + v * kW, a2);
    store(gb1 + v * kW, a1);
    for (int k = 0; k < D; ++k) store(gw1 + k * H + v * kW, ak[k]);
  }
}

// Forward passes of rows rowf[0 .. rows), kRows at a time.
template <int D>
inline void ForwardRows(const Args& A, int64_t rows, const float* const* rowf, float* hbuf, float* sbuf, float* r) {
  const int64_t H = A.H;
  int64_t row = 0;
  for (; row + kRows <= rows; row += kRows) Forward<D, kRows>(A, rowf + row, hbuf + row * H, sbuf + row * H, r + row);
  for (; row < rows; ++row) Forward<D, 1>(A, rowf + row, hbuf + row * H, sbuf + row * H, r + row);
}

// Sums over pairs [p0, p1) into out = [nll, db2, dW2 (H), db1 / w2 (H), dW1 / w2 (D H)].
template <int D>
void Range(const Args& A, int64_t p0, int64_t p1, float* out, float* scratch) {
  const int64_t H = A.H;
  float* hbuf = scratch;                 // h of rows (x_0, z_0, x_1, z_1, ...), [2 kBlock, H]
  float* sbuf = scratch + 2 * kBlock * H;  // silu'(a) of the same rows
  float r[2 * kBlock], c[2 * kBlock];
  const float* rowf[2 * kBlock];
  float* gw2 = out + 2;
  float* gb1 = gw2 + H;
  float* gw1 = gb1 + H;
  std::fill(out, out + 2 + (D + 2) * H, 0.0f);
  double nll_sum = 0.0, gb2 = 0.0;
  for (int64_t start = p0; start < p1; start += kBlock) {
    const int64_t m = std::min(kBlock, p1 - start);
    // forward: NR rows at a time, their chains of dependent FMAs interleaved
    for (int64_t i = 0; i < m; ++i) {
      rowf[2 * i] = A.X + (start + i) * D;
      rowf[2 * i + 1] = A.Z + (start + i) * D;
    }
    ForwardRows<D>(A, 2 * m, rowf, hbuf, sbuf, r);
    // the pairs' losses and their derivatives in the gaps, 8 pairs at a time
    vf blk_nll = {};
    for (int64_t i = 0; i < m; i += kW) {
      vf gap, lab, w;
      for (int l = 0; l < kW; ++l) {
        bool in = i + l < m;
        gap[l] = in ? r[2 * (i + l) + 1] - r[2 * (i + l)] : 0.0f;
        lab[l] = in ? A.O[start + i + l] : 0.0f;
        w[l] = in ? A.WT[start + i + l] : 0.0f;
      }
      vf mag = gap < 0.0f ? -gap : gap;
      vf e = vexp(-mag);
      vf sp = vlog1p_unit(e);  // softplus(-|d|); softplus(d) = sp + max(d, 0), softplus(-d) = that - d
      vf pos = gap > 0.0f ? gap : vf{};
      blk_nll += w * (lab * (sp + pos - gap) + (1.0f - lab) * (sp + pos));
      vf sig = (gap >= 0.0f ? splat(1.0f) : e) / (1.0f + e);
      vf g = w * (sig - lab);
      for (int l = 0; l < kW && i + l < m; ++l) {
        c[2 * (i + l)] = -g[l];
        c[2 * (i + l) + 1] = g[l];
      }
    }
    nll_sum += hsum(blk_nll);
    float blk_gb2 = 0.0f;
    for (int64_t row = 0; row < 2 * m; ++row) blk_gb2 += c[row];
    gb2 += blk_gb2;
    PullBack<D>(H, 2 * m, rowf, c, hbuf, sbuf, gw2, gb1, gw1);
  }
  out[0] = static_cast<float>(nll_sum);
  out[1] = static_cast<float>(gb2);
}

// Adds per-chunk partial sums in chunk order (float64) and writes the gradient: part = [.., dW2 (H), db1 (H),
// dW1 (D H)] from offset `head`, db1 and dW1 multiplied by w2 unless w2 is null.
template <int D>
void WriteGradient(int64_t H, const float* w2, const std::vector<float>& partial, int64_t chunks, int64_t stride,
                   int64_t head, std::vector<double>& sum, float* gw1, float* gb1, float* gw2) {
  sum.assign(stride, 0.0);
  for (int64_t i = 0; i < chunks; ++i)
    for (int64_t j = 0; j < stride; ++j) sum[j] += partial[i * stride + j];
  for (int64_t j = 0; j < H; ++j) {
    const double scale = w2 ? w2[j] : 1.0;
    gw2[j] = static_cast<float>(sum[head + j]);
    gb1[j] = static_cast<float>(sum[head + H + j] * scale);
    for (int k = 0; k < D; ++k) gw1[k * H + j] = static_cast<float>(sum[head + (2 + k) * H + j] * scale);
  }
}

template <int D>
void Run(ffi::ThreadPool& pool, const Args& A, float* nll, float* gw1, float* gb1, float* gw2, float* gb2) {
  const int64_t stride = 2 + (D + 2) * A.H, chunks = std::max<int64_t>(1, (A.n + kChunk - 1) / kChunk);
  std::vector<float> partial(chunks * stride);
  float* part = partial.data();
  ParallelChunks(pool, chunks, 4 * kBlock * A.H, [A, part, stride](int64_t i, float* scratch) {
    Range<D>(A, i * kChunk, std::min(A.n, (i + 1) * kChunk), part + i * stride, scratch);
  });
  std::vector<double> sum;
  WriteGradient<D>(A.H, A.W2, partial, chunks, stride, 2, sum, gw1, gb1, gw2);
  nll[0] = static_cast<float>(sum[0]);
  gb2[0] = static_cast<float>(sum[1]);
}

// ---- the reward of rows (A.X: [n, D]) and the pull-back of cotangents over them (A.O: c [n]) ----

constexpr int64_t kRowChunk = 256;  // rows per chunk

constexpr int64_t kMaxBlockRows = 32;  // rows per block, at most
static_assert(kRows <= kMaxBlockRows && 2 * kBlock <= kMaxBlockRows, "ForEachBlock's rowf holds a block");

// The number of chunks of A.n rows (at least one).
inline int64_t RowChunks(const Args& A) { return std::max<int64_t>(1, (A.n + kRowChunk - 1) / kRowChunk); }

// Calls block(start, m, rowf) for the blocks of chunk i (rows [i kRowChunk, (i + 1) kRowChunk) of A.X), at most
// `rows` (<= kMaxBlockRows) rows each: m rows from `start`, rowf[j] the features of row start + j.
template <int D, typename Block>
inline void ForEachBlock(const Args& A, int64_t i, int64_t rows, Block block) {
  const float* rowf[kMaxBlockRows];
  for (int64_t start = i * kRowChunk, end = std::min(A.n, start + kRowChunk); start < end; start += rows) {
    const int64_t m = std::min(rows, end - start);
    for (int64_t j = 0; j < m; ++j) rowf[j] = A.X + (start + j) * D;
    block(start, m, rowf);
  }
}

// The pull-backs' common loop: per chunk, a partial sum [sum of weight over its rows, dW2 (H), db1 (H), dW1 (D H)]
// that pull(start, m, rowf, scratch, gw2, gb1, gw1) adds each block of `rows` rows to; then the partials in chunk
// order (WriteGradient, db1 and dW1 times w2 unless it is null), the weights' sum in gb2.
template <int D, typename Pull>
void RunPullBackSums(ffi::ThreadPool& pool, const Args& A, int64_t rows, int64_t scratch_size, const float* weight,
                     const float* w2, Pull pull, float* gw1, float* gb1, float* gw2, float* gb2) {
  const int64_t H = A.H, stride = 1 + (D + 2) * H;
  const int64_t chunks = RowChunks(A);
  std::vector<float> partial(chunks * stride);
  float* part = partial.data();
  ParallelChunks(pool, chunks, scratch_size, [A, part, stride, rows, weight, pull](int64_t i, float* scratch) {
    const int64_t H = A.H;
    float* out = part + i * stride;
    std::fill(out, out + stride, 0.0f);
    double sum0 = 0.0;
    ForEachBlock<D>(A, i, rows, [&](int64_t start, int64_t m, const float* const* rowf) {
      pull(start, m, rowf, scratch, out + 1, out + 1 + H, out + 1 + 2 * H);
      for (int64_t j = 0; j < m; ++j) sum0 += weight[start + j];
    });
    out[0] = static_cast<float>(sum0);
  });
  std::vector<double> sum;
  WriteGradient<D>(H, w2, partial, chunks, stride, 1, sum, gw1, gb1, gw2);
  gb2[0] = static_cast<float>(sum[0]);
}

template <int D>
void RunValues(ffi::ThreadPool& pool, const Args& A, float* r) {
  ParallelChunks(pool, RowChunks(A), 2 * kRows * A.H + kRows, [A, r](int64_t i, float* scratch) {
    ForEachBlock<D>(A, i, kRows, [&](int64_t start, int64_t m, const float* const* rowf) {
      ForwardRows<D>(A, m, rowf, scratch, scratch + kRows * A.H, r + start);
    });
  });
}

template <int D>
void RunPullBack(ffi::ThreadPool& pool, const Args& A, float* gw1, float* gb1, float* gw2, float* gb2) {
  constexpr int64_t rows = 2 * kBlock;
  RunPullBackSums<D>(pool, A, rows, 2 * rows * A.H + rows, A.O, A.W2,
                     [A, rows](int64_t start, int64_t m, const float* const* rowf, float* scratch, float* pw2,
                               float* pb1, float* pw1) {
                       const int64_t H = A.H;
                       float *hbuf = scratch, *sbuf = scratch + rows * H, *r = scratch + 2 * rows * H;
                       ForwardRows<D>(A, m, rowf, hbuf, sbuf, r);
                       PullBack<D>(H, m, rowf, A.O + start, hbuf, sbuf, pw2, pb1, pw1);
                     },
                     gw1, gb1, gw2, gb2);
}

// ---- Hessian-vector products of the pairs' summed loss ----
//
// For a tangent v = (V1, vb1, vw2, vb2) of the parameters, each row (features f, cotangent c as above) has
//   a' = f V1 + vb1,   R' = vw2 . h + w2 . (silu'(a) a') + vb2,
// each pair d_i' = R'(z_i) - R'(x_i) and g_i' = w_i sigmoid'(d_i) d_i' (the loss's second derivative in d_i is
// sigmoid'(d_i) = e / (1 + e)^2, e = exp(-|d_i|), whatever o_i), so c' = -g_i' at x_i, +g_i' at z_i, and
//   (H v): dW2 = sum_rows c' h + c silu'(a) a',  db2 = sum_rows c',  db1 = sum_rows t,  dW1 = sum_rows t f,
//          t = w2 (c' silu'(a) + c silu''(a) a') + vw2 c silu'(a),
// with silu''(a) = s (1 - s) (2 + a (1 - 2 s)): the derivative of the gradient above along v, which is what
// jax.jvp of scl.reward_model's JAX gradient computes (about twenty kernels over [2n, H] arrays).

struct Tangent {
  const float *V1, *VB1, *VW2;
  float vb2;
};

// As Forward, with the tangent: h, silu'(a), silu'(a) a', silu''(a) a' of NR rows and their R and R'.
template <int D, int NR>
inline void ForwardTangent(const Args& A, const Tangent& T, const float* const* f, float* h, float* s, float* u,
                           float* q, float* r, float* rt) {
  const int64_t H = A.H, V = H / kW;
  float fk[NR][D];
  for (int j = 0; j < NR; ++j)
    for (int k = 0; k < D; ++k) fk[j][k] = f[j][k];
  vf acc[NR] = {}, acct[NR] = {};
  for (int64_t v = 0; v < V; ++v) {
    vf b = load(A.B1 + v * kW), vb = load(T.VB1 + v * kW), a[NR], at[NR];
    vf w2 = load(A.W2 + v * kW), vw2 = load(T.VW2 + v * kW);
    for (int j = 0; j < NR; ++j) a[j] = b, at[j] = vb;
    for (int k = 0; k < D; ++k) {
      vf w = load(A.W1 + k * H + v * kW), wt = load(T.V1 + k * H + v * kW);
      for (int j = 0; j < NR; ++j) a[j] += fk[j][k] * w, at[j] += fk[j][k] * wt;
    }
    for (int j = 0; j < NR; ++j) {
      const vf sg = 1.0f / (1.0f + vexp(-a[j])), one_s = 1.0f - sg;
      const vf hv = a[j] * sg, d1 = sg * (1.0f + a[j] * one_s);
      const vf d2 = sg * one_s * (2.0f + a[j] * (one_s - sg));
      const vf uv = d1 * at[j];
      store(h + j * H + v * kW, hv);
      store(s + j * H + v * kW, d1);
      store(u + j * H + v * kW, uv);
      store(q + j * H + v * kW, d2 * at[j]);
      acc[j] += hv * w2;
      acct[j] += vw2 * hv + w2 * uv;
    }
  }
  for (int j = 0; j < NR; ++j) r[j] = hsum(acc[j]) + A.b2, rt[j] = hsum(acct[j]) + T.vb2;
}

// Adds the rows' part of H v (above) for cotangents c and their tangents ct.
template <int D>
inline void PullBackTangent(const Args& A, const Tangent& T, int64_t rows, const float* const* rowf, const float* c,
                            const float* ct, const float* hbuf, const float* sbuf, const float* ubuf,
                            const float* qbuf, float* hw2, float* hb1, float* hw1) {
  const int64_t H = A.H;
  for (int64_t v = 0; v < H / kW; ++v) {
    const vf w2 = load(A.W2 + v * kW), vw2 = load(T.VW2 + v * kW);
    vf a2 = load(hw2 + v * kW), a1 = load(hb1 + v * kW), ak[D];
    for (int k = 0; k < D; ++k) ak[k] = load(hw1 + k * H + v * kW);
    for (int64_t row = 0; row < rows; ++row) {
      const float cr = c[row], ctr = ct[row];
      const int64_t at = row * H + v * kW;
      const vf sv = load(sbuf + at);
      a2 += ctr * load(hbuf + at) + cr * load(ubuf + at);
      const vf t = w2 * (ctr * sv + cr * load(qbuf + at)) + vw2 * (cr * sv);
      a1 += t;
      for (int k = 0; k < D; ++k) ak[k] += rowf[row][k] * t;
    }
    store(hw2 + v * kW, a2);
    store(hb1 + v * kW, a1);
    for (int k = 0; k < D; ++k) store(hw1 + k * H + v * kW, ak[k]);
  }
}

constexpr int kTangentRows = 4;   // rows whose forward passes are interleaved (twice the registers of Forward's)
constexpr int64_t kHvpBlock = 8;  // pairs per block: 16 rows of four [H] vectors (16 KiB at H = 64) in L1
static_assert(kHvpBlock <= kW, "HvpRange puts a block's pairs in the lanes of one vector");
static_assert(2 * kHvpBlock <= kMaxBlockRows, "ForEachBlock's rowf holds a block");

// ForwardTangent of rows rowf[0 .. rows), kTangentRows at a time.
template <int D>
inline void ForwardTangentRows(const Args& A, const Tangent& T, int64_t rows, const float* const* rowf, float* h,
                               float* s, float* u, float* q, float* r, float* rt) {
  const int64_t H = A.H;
  int64_t row = 0;
  for (; row + kTangentRows <= rows; row += kTangentRows)
    ForwardTangent<D, kTangentRows>(A, T, rowf + row, h + row * H, s + row * H, u + row * H, q + row * H, r + row,
                                    rt + row);
  for (; row < rows; ++row)
    ForwardTangent<D, 1>(A, T, rowf + row, h + row * H, s + row * H, u + row * H, q + row * H, r + row, rt + row);
}

// Sums over pairs [p0, p1) into out = [db2, dW2 (H), db1 (H), dW1 (D H)] of H v.
template <int D>
void HvpRange(const Args& A, const Tangent& T, int64_t p0, int64_t p1, float* out, float* scratch) {
  const int64_t H = A.H, rows = 2 * kHvpBlock;
  float *hbuf = scratch, *sbuf = hbuf + rows * H, *ubuf = sbuf + rows * H, *qbuf = ubuf + rows * H;
  float r[2 * kHvpBlock], rt[2 * kHvpBlock], c[2 * kHvpBlock], ct[2 * kHvpBlock];
  const float* rowf[2 * kHvpBlock];
  std::fill(out, out + 1 + (D + 2) * H, 0.0f);
  double hb2 = 0.0;
  for (int64_t start = p0; start < p1; start += kHvpBlock) {
    const int64_t m = std::min(kHvpBlock, p1 - start);
    for (int64_t i = 0; i < m; ++i) {
      rowf[2 * i] = A.X + (start + i) * D;
      rowf[2 * i + 1] = A.Z + (start + i) * D;
    }
    ForwardTangentRows<D>(A, T, 2 * m, rowf, hbuf, sbuf, ubuf, qbuf, r, rt);
    vf gap = {}, gapt = {}, lab = {}, w = {};
    for (int64_t i = 0; i < m; ++i) {
      gap[i] = r[2 * i + 1] - r[2 * i];
      gapt[i] = rt[2 * i + 1] - rt[2 * i];
      lab[i] = A.O[start + i];
      w[i] = A.WT[start + i];
    }
    const vf e = vexp(gap < 0.0f ? gap : -gap);
    const vf sig = (gap >= 0.0f ? splat(1.0f) : e) / (1.0f + e);
    const vf g = w * (sig - lab), gt = w * (e / ((1.0f + e) * (1.0f + e))) * gapt;
    for (int64_t i = 0; i < m; ++i) {
      c[2 * i] = -g[i], c[2 * i + 1] = g[i];
      ct[2 * i] = -gt[i], ct[2 * i + 1] = gt[i];
      hb2 += static_cast<double>(ct[2 * i]) + ct[2 * i + 1];
    }
    PullBackTangent<D>(A, T, 2 * m, rowf, c, ct, hbuf, sbuf, ubuf, qbuf, out + 1, out + 1 + H, out + 1 + 2 * H);
  }
  out[0] = static_cast<float>(hb2);
}

template <int D>
void RunHvp(ffi::ThreadPool& pool, const Args& A, const Tangent& T, float* hw1, float* hb1, float* hw2,
            float* hb2) {
  const int64_t stride = 1 + (D + 2) * A.H, chunks = std::max<int64_t>(1, (A.n + kChunk - 1) / kChunk);
  std::vector<float> partial(chunks * stride);
  float* part = partial.data();
  ParallelChunks(pool, chunks, 8 * kHvpBlock * A.H, [A, T, part, stride](int64_t i, float* scratch) {
    HvpRange<D>(A, T, i * kChunk, std::min(A.n, (i + 1) * kChunk), part + i * stride, scratch);
  });
  std::vector<double> sum;
  WriteGradient<D>(A.H, nullptr, partial, chunks, stride, 1, sum, hw1, hb1, hw2);
  hb2[0] = static_cast<float>(sum[0]);
}

// R and R' of rows A.X [n, D] (the tangent's forward pass; its other buffers are scratch).
template <int D>
void RunValuesTangent(ffi::ThreadPool& pool, const Args& A, const Tangent& T, float* r, float* rt) {
  const int64_t rows = 2 * kHvpBlock;
  ParallelChunks(pool, RowChunks(A), 4 * rows * A.H, [A, T, r, rt, rows](int64_t i, float* scratch) {
    const int64_t H = A.H;
    ForEachBlock<D>(A, i, rows, [&](int64_t start, int64_t m, const float* const* rowf) {
      ForwardTangentRows<D>(A, T, m, rowf, scratch, scratch + rows * H, scratch + 2 * rows * H,
                            scratch + 3 * rows * H, r + start, rt + start);
    });
  });
}

// The derivative along v of RunPullBack's sum for cotangents c (A.O) with tangents c' (A.WT): the rows' part of
// H v above, [db2, dW2, db1, dW1] = sum_rows [c', c' h + c silu'(a) a', t, t f].
template <int D>
void RunPullBackTangent(ffi::ThreadPool& pool, const Args& A, const Tangent& T, float* hw1, float* hb1, float* hw2,
                        float* hb2) {
  constexpr int64_t rows = 2 * kHvpBlock;
  RunPullBackSums<D>(pool, A, rows, 4 * rows * A.H + 2 * rows, A.WT, nullptr,
                     [A, T, rows](int64_t start, int64_t m, const float* const* rowf, float* scratch, float* pw2,
                                  float* pb1, float* pw1) {
                       const int64_t H = A.H;
                       float *h = scratch, *s = h + rows * H, *u = s + rows * H, *q = u + rows * H, *r = q + rows * H,
                             *rt = r + rows;
                       ForwardTangentRows<D>(A, T, m, rowf, h, s, u, q, r, rt);
                       PullBackTangent<D>(A, T, m, rowf, A.O + start, A.WT + start, h, s, u, q, pw2, pb1, pw1);
                     },
                     hw1, hb1, hw2, hb2);
}

// Checks the reward's parameters and rows x [n, d] (1 <= d <= 4, H a multiple of 8).
ffi::Error CheckRows(const char* name, ffi::Buffer<ffi::F32>& w1, ffi::Buffer<ffi::F32>& b1,
                     ffi::Buffer<ffi::F32>& w2, ffi::Buffer<ffi::F32>& b2, ffi::Buffer<ffi::F32>& x, int64_t n) {
  if (w1.dimensions().size() != 2 || w1.dimensions()[0] < 1 || w1.dimensions()[0] > 4)
    return ffi::Error::InvalidArgument(std::string(name) + ": w1 must be [d, H] with 1 <= d <= 4");
  const int64_t d = w1.dimensions()[0], H = w1.dimensions()[1];
  if (H % kW != 0) return ffi::Error::InvalidArgument(std::string(name) + ": H must be a multiple of 8");
  if (b1.element_count() != H || w2.element_count() != H || b2.element_count() != 1 || x.element_count() != n * d)
    return ffi::Error::InvalidArgument(std::string(name) + ": inconsistent shapes");
  return ffi::Error::Success();
}

// Checks that the tangent (v1, vb1, vw2, vb2) has the parameters' shapes.
ffi::Error CheckTangent(const char* name, ffi::Buffer<ffi::F32>& w1, ffi::Buffer<ffi::F32>& b1,
                        ffi::Buffer<ffi::F32>& w2, ffi::Buffer<ffi::F32>& v1, ffi::Buffer<ffi::F32>& vb1,
                        ffi::Buffer<ffi::F32>& vw2, ffi::Buffer<ffi::F32>& vb2) {
  if (v1.element_count() != w1.element_count() || vb1.element_count() != b1.element_count() ||
      vw2.element_count() != w2.element_count() || vb2.element_count() != 1)
    return ffi::Error::InvalidArgument(std::string(name) + ": the tangent's shapes are not the parameters'");
  return ffi::Error::Success();
}

Tangent MakeTangent(ffi::Buffer<ffi::F32>& v1, ffi::Buffer<ffi::F32>& vb1, ffi::Buffer<ffi::F32>& vw2,
                    ffi::Buffer<ffi::F32>& vb2) {
  return Tangent{v1.typed_data(), vb1.typed_data(), vw2.typed_data(), vb2.typed_data()[0]};
}

Args MakeArgs(ffi::Buffer<ffi::F32>& w1, ffi::Buffer<ffi::F32>& b1, ffi::Buffer<ffi::F32>& w2,
              ffi::Buffer<ffi::F32>& b2, ffi::Buffer<ffi::F32>& x, int64_t n, const float* z, const float* o,
              const float* wt) {
  return Args{w1.dimensions()[1], n, w1.typed_data(), b1.typed_data(), w2.typed_data(), b2.typed_data()[0],
              x.typed_data(), z, o, wt};
}

// f(std::integral_constant<int, d>{}) for d in 1..4 (checked by CheckRows): the input width as a template
// argument, so the inner loops over features unroll.
template <typename F>
void WithFeatures(int64_t d, F f) {
  switch (d) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    default: f(std::integral_constant<int, 4>{});
  }
}

ffi::Error Impl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> w1, ffi::Buffer<ffi::F32> b1,
                ffi::Buffer<ffi::F32> w2, ffi::Buffer<ffi::F32> b2, ffi::Buffer<ffi::F32> x,
                ffi::Buffer<ffi::F32> z, ffi::Buffer<ffi::F32> o, ffi::Buffer<ffi::F32> wt,
                ffi::ResultBuffer<ffi::F32> nll, ffi::ResultBuffer<ffi::F32> gw1,
                ffi::ResultBuffer<ffi::F32> gb1, ffi::ResultBuffer<ffi::F32> gw2,
                ffi::ResultBuffer<ffi::F32> gb2) {
  const int64_t n = o.element_count();
  if (ffi::Error e = CheckRows("scl_bt_mlp1", w1, b1, w2, b2, x, n); e.failure()) return e;
  if (z.element_count() != x.element_count() || wt.element_count() != n)
    return ffi::Error::InvalidArgument("scl_bt_mlp1: inconsistent shapes");
  const Args A = MakeArgs(w1, b1, w2, b2, x, n, z.typed_data(), o.typed_data(), wt.typed_data());
  WithFeatures(w1.dimensions()[0], [&](auto D) {
    Run<D>(pool, A, nll->typed_data(), gw1->typed_data(), gb1->typed_data(), gw2->typed_data(), gb2->typed_data());
  });
  return ffi::Error::Success();
}

ffi::Error ValuesImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> w1, ffi::Buffer<ffi::F32> b1,
                      ffi::Buffer<ffi::F32> w2, ffi::Buffer<ffi::F32> b2, ffi::Buffer<ffi::F32> x,
                      ffi::ResultBuffer<ffi::F32> r) {
  const int64_t n = r->element_count();
  if (ffi::Error e = CheckRows("scl_mlp1_values", w1, b1, w2, b2, x, n); e.failure()) return e;
  const Args A = MakeArgs(w1, b1, w2, b2, x, n, nullptr, nullptr, nullptr);
  WithFeatures(w1.dimensions()[0], [&](auto D) { RunValues<D>(pool, A, r->typed_data()); });
  return ffi::Error::Success();
}

ffi::Error PullBackImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> w1, ffi::Buffer<ffi::F32> b1,
                        ffi::Buffer<ffi::F32> w2, ffi::Buffer<ffi::F32> b2, ffi::Buffer<ffi::F32> x,
                        ffi::Buffer<ffi::F32> c, ffi::ResultBuffer<ffi::F32> gw1,
                        ffi::ResultBuffer<ffi::F32> gb1, ffi::ResultBuffer<ffi::F32> gw2,
                        ffi::ResultBuffer<ffi::F32> gb2) {
  const int64_t n = c.element_count();
  if (ffi::Error e = CheckRows("scl_mlp1_pullback", w1, b1, w2, b2, x, n); e.failure()) return e;
  const Args A = MakeArgs(w1, b1, w2, b2, x, n, nullptr, c.typed_data(), nullptr);
  WithFeatures(w1.dimensions()[0], [&](auto D) {
    RunPullBack<D>(pool, A, gw1->typed_data(), gb1->typed_data(), gw2->typed_data(), gb2->typed_data());
  });
  return ffi::Error::Success();
}

ffi::Error HvpImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> w1, ffi::Buffer<ffi::F32> b1,
                   ffi::Buffer<ffi::F32> w2, ffi::Buffer<ffi::F32> b2, ffi::Buffer<ffi::F32> v1,
                   ffi::Buffer<ffi::F32> vb1, ffi::Buffer<ffi::F32> vw2, ffi::Buffer<ffi::F32> vb2,
                   ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> z, ffi::Buffer<ffi::F32> o,
                   ffi::Buffer<ffi::F32> wt, ffi::ResultBuffer<ffi::F32> hw1, ffi::ResultBuffer<ffi::F32> hb1,
                   ffi::ResultBuffer<ffi::F32> hw2, ffi::ResultBuffer<ffi::F32> hb2) {
  const int64_t n = o.element_count();
  if (ffi::Error e = CheckRows("scl_bt_mlp1_hvp", w1, b1, w2, b2, x, n); e.failure()) return e;
  if (ffi::Error e = CheckTangent("scl_bt_mlp1_hvp", w1, b1, w2, v1, vb1, vw2, vb2); e.failure()) return e;
  if (z.element_count() != x.element_count() || wt.element_count() != n)
    return ffi::Error::InvalidArgument("scl_bt_mlp1_hvp: inconsistent shapes");
  const Args A = MakeArgs(w1, b1, w2, b2, x, n, z.typed_data(), o.typed_data(), wt.typed_data());
  const Tangent T = MakeTangent(v1, vb1, vw2, vb2);
  WithFeatures(w1.dimensions()[0], [&](auto D) {
    RunHvp<D>(pool, A, T, hw1->typed_data(), hb1->typed_data(), hw2->typed_data(), hb2->typed_data());
  });
  return ffi::Error::Success();
}

ffi::Error ValuesTangentImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> w1, ffi::Buffer<ffi::F32> b1,
                             ffi::Buffer<ffi::F32> w2, ffi::Buffer<ffi::F32> b2, ffi::Buffer<ffi::F32> v1,
                             ffi::Buffer<ffi::F32> vb1, ffi::Buffer<ffi::F32> vw2, ffi::Buffer<ffi::F32> vb2,
                             ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> r,
                             ffi::ResultBuffer<ffi::F32> rt) {
  const int64_t n = r->element_count();
  if (ffi::Error e = CheckRows("scl_mlp1_tangents", w1, b1, w2, b2, x, n); e.failure()) return e;
  if (ffi::Error e = CheckTangent("scl_mlp1_tangents", w1, b1, w2, v1, vb1, vw2, vb2); e.failure()) return e;
  const Args A = MakeArgs(w1, b1, w2, b2, x, n, nullptr, nullptr, nullptr);
  const Tangent T = MakeTangent(v1, vb1, vw2, vb2);
  WithFeatures(w1.dimensions()[0], [&](auto D) { RunValuesTangent<D>(pool, A, T, r->typed_data(), rt->typed_data()); });
  return ffi::Error::Success();
}

ffi::Error PullBackTangentImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> w1, ffi::Buffer<ffi::F32> b1,
                               ffi::Buffer<ffi::F32> w2, ffi::Buffer<ffi::F32> b2, ffi::Buffer<ffi::F32> v1,
                               ffi::Buffer<ffi::F32> vb1, ffi::Buffer<ffi::F32> vw2, ffi::Buffer<ffi::F32> vb2,
                               ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> c, ffi::Buffer<ffi::F32> ct,
                               ffi::ResultBuffer<ffi::F32> hw1, ffi::ResultBuffer<ffi::F32> hb1,
                               ffi::ResultBuffer<ffi::F32> hw2, ffi::ResultBuffer<ffi::F32> hb2) {
  const int64_t n = c.element_count();
  if (ffi::Error e = CheckRows("scl_mlp1_pullback_tangent", w1, b1, w2, b2, x, n); e.failure()) return e;
  if (ffi::Error e = CheckTangent("scl_mlp1_pullback_tangent", w1, b1, w2, v1, vb1, vw2, vb2); e.failure()) return e;
  if (ct.element_count() != n) return ffi::Error::InvalidArgument("scl_mlp1_pullback_tangent: inconsistent shapes");
  const Args A = MakeArgs(w1, b1, w2, b2, x, n, nullptr, c.typed_data(), ct.typed_data());
  const Tangent T = MakeTangent(v1, vb1, vw2, vb2);
  WithFeatures(w1.dimensions()[0], [&](auto D) {
    RunPullBackTangent<D>(pool, A, T, hw1->typed_data(), hb1->typed_data(), hw2->typed_data(), hb2->typed_data());
  });
  return ffi::Error::Success();
}

// The binding every handler starts with: XLA's intra-op pool, then the reward's w1, b1, w2, b2.
auto BindReward() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::F32>>()   // w1 [d, H]
      .Arg<ffi::Buffer<ffi::F32>>()   // b1 [H]
      .Arg<ffi::Buffer<ffi::F32>>()   // w2 [H, 1]
      .Arg<ffi::Buffer<ffi::F32>>();  // b2 [1]
}

// BindReward, then a tangent of the reward's parameters (shaped as w1, b1, w2, b2).
auto BindRewardAndTangent() {
  return BindReward()
      .Arg<ffi::Buffer<ffi::F32>>()   // v1 [d, H]
      .Arg<ffi::Buffer<ffi::F32>>()   // vb1 [H]
      .Arg<ffi::Buffer<ffi::F32>>()   // vw2 [H, 1]
      .Arg<ffi::Buffer<ffi::F32>>();  // vb2 [1]
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SclBtMlp1, Impl,
                              BindReward()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x [n, d]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // z [n, d]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // o [n]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w [n]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // nll (sum)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dW1
                                  .Ret<ffi::Buffer<ffi::F32>>()  // db1
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dW2
                                  .Ret<ffi::Buffer<ffi::F32>>());  // db2

XLA_FFI_DEFINE_HANDLER_SYMBOL(SclMlp1Values, ValuesImpl,
                              BindReward()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x [n, d]
                                  .Ret<ffi::Buffer<ffi::F32>>());  // R(x) [n]

XLA_FFI_DEFINE_HANDLER_SYMBOL(SclMlp1PullBack, PullBackImpl,
                              BindReward()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x [n, d]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // c [n]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // sum_i c_i dR(x_i)/dW1
                                  .Ret<ffi::Buffer<ffi::F32>>()  // ... /db1
                                  .Ret<ffi::Buffer<ffi::F32>>()  // ... /dW2
                                  .Ret<ffi::Buffer<ffi::F32>>());  // ... /db2

XLA_FFI_DEFINE_HANDLER_SYMBOL(SclBtMlp1Hvp, HvpImpl,
                              BindRewardAndTangent()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x [n, d]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // z [n, d]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // o [n]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w [n]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // (H v) in W1
                                  .Ret<ffi::Buffer<ffi::F32>>()  // ... b1
                                  .Ret<ffi::Buffer<ffi::F32>>()  // ... W2
                                  .Ret<ffi::Buffer<ffi::F32>>());  // ... b2

XLA_FFI_DEFINE_HANDLER_SYMBOL(SclMlp1Tangents, ValuesTangentImpl,
                              BindRewardAndTangent()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x [n, d]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // R(x) [n]
                                  .Ret<ffi::Buffer<ffi::F32>>());  // R'(x) [n]

XLA_FFI_DEFINE_HANDLER_SYMBOL(SclMlp1PullBackTangent, PullBackTangentImpl,
                              BindRewardAndTangent()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x [n, d]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // c [n]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // c' [n]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // the tangent of sum_i c_i dR(x_i)/dW1
                                  .Ret<ffi::Buffer<ffi::F32>>()  // ... /db1
                                  .Ret<ffi::Buffer<ffi::F32>>()  // ... /dW2
                                  .Ret<ffi::Buffer<ffi::F32>>());  // ... /db2
