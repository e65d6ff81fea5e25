// The flow model's training gradient and its velocity as XLA FFI custom calls for the CPU (scl/_native.py builds,
// loads and registers them; scl/models/flow.py calls the first in every training step of the residual SiLU
// velocity MLP and the second in every network evaluation of its sampler).
//
//   SclFlowMlpGrad     rows X [B, D0] (the point on the path and its time features) and targets U [B, d]:
//                      the loss mean_b |v(X_b) - U_b|^2 and its gradient in every parameter of v
//   SclFlowMlpForward  rows Z [n, d] at one time t: the velocity v(Z) [n, d] (the sampler's network evaluations)
//
// with v(X) = h_L Wo + bo, h_0 = silu(a_0), a_0 = X W0 + b0, h_{l+1} = h_l + silu(a_{l+1}), a_{l+1} = h_l K_l + b_l.
// The backward pass: gv = 2 (v - U) / B, dWo = h_L^T gv, dbo = sum gv, gh = gv Wo^T; for l = L-1, ..., 0:
// ga = gh silu'(a_{l+1}), dK_l = h_l^T ga, db_l = sum ga, gh += ga K_l^T; then ga = gh silu'(a_0), dW0 = X^T ga,
// db0 = sum ga. The same quantities as jax.grad of scl.models.flow's loss, to float rounding.
//
// XLA runs a step as about thirty kernels, each writing a [B, W] array to memory and reading it back, with the
// products' epilogues (bias, SiLU, its derivative) as separate passes. Here the batch is walked in chunks of 32
// rows: a chunk's activations and derivatives (2 (L + 1) arrays of [32, W], 128 KiB at W = 128 and L = 3) are
// made and used in L2, and every product runs on one register-tiled loop (6 rows x 16 columns of accumulators,
// the broadcast operand read in place, so the same loop serves A B and A^T B; A K^T takes K's transpose as an
// argument). The batch's groups of 128 rows are split into as many contiguous parts as the pool has threads (at
// most one per group); each part's gradient is summed on its own, in row order, and the parts are added in order.
// So a call reads one partial gradient per thread back from the other cores, not one per group (which cost 5% of
// the step when the vCPUs share a cache and 8% when they do not), and the result depends only on the inputs and
// the pool's size, not on which thread ran which part.
//
// Shapes: X [B, D0], U [B, d], W0 [D0, W], b0 [W], K and its transposes K^T [L, W, W], b [L, W], Wo [W, d] and
// Wo^T [d, W], bo [d]; W a multiple of 16, 1 <= d <= 4, float32. The Python side checks these before it calls.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"
#include "simd.h"

namespace ffi = xla::ffi;

namespace {

using namespace scl_native;  // vf, kW, load, store, splat, vexp, hsum, ParallelChunks

constexpr int64_t kCols = 2 * kW;     // columns of a register tile
constexpr int kTileRows = 6;          // rows of a register tile: 12 accumulators of the 16 vector registers
constexpr int64_t kChunkRows = 32;    // rows whose activations are made and used together
constexpr int64_t kGroupRows = 128;   // the unit of rows the parts are made of
constexpr int64_t kMaxOut = 4;        // widest output (d)

inline vf fmadd(vf a, vf b, vf c) {
#if defined(__FMA__)
  return (vf)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
  return a * b + c;
#endif
}

inline vf broadcast(const float* p) {
#if defined(__AVX__)
  return (vf)_mm256_broadcast_ss(p);
#else
  return splat(*p);
#endif
}

// C[MR, 16] = (C if Acc) + sum_{k < K} A(i, k) B[k, 0:16], with A(i, k) = A[i * ars + k * aks]. The
// accumulators stay in registers only when MR and Acc are compile-time constants (GCC keeps them on the stack
// otherwise: a third of the speed).
template <int MR, bool Acc>
inline void Tile(const float* A, int64_t ars, int64_t aks, const float* B, int64_t ldb, int64_t K, float* C,
                 int64_t ldc) {
  vf c0[MR], c1[MR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    c0[i] = Acc ? load(C + i * ldc) : vf{};
    c1[i] = Acc ? load(C + i * ldc + kW) : vf{};
  }
  for (int64_t k = 0; k < K; ++k) {
    const vf b0 = load(B + k * ldb), b1 = load(B + k * ldb + kW);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const vf a = broadcast(A + i * ars + k * aks);
      c0[i] = fmadd(a, b0, c0[i]);
      c1[i] = fmadd(a, b1, c1[i]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    store(C + i * ldc, c0[i]);
    store(C + i * ldc + kW, c1[i]);
  }
}

// Tile<rows> for 1 <= rows <= MR.
template <int MR, bool Acc>
inline void TileRows(int64_t rows, const float* A, int64_t ars, int64_t aks, const float* B, int64_t ldb, int64_t K,
                     float* C, int64_t ldc) {
  if (rows == MR) return Tile<MR, Acc>(A, ars, aks, B, ldb, K, C, ldc);
  if constexpr (MR > 1) TileRows<MR - 1, Acc>(rows, A, ars, aks, B, ldb, K, C, ldc);
}

// C [M, N] = (C if Acc) + A [M, K] B [K, N], with A(i, k) = A[i * ars + k * aks] (so A or a transpose), B and C
// row-major (leading dimensions ldb, ldc), N a multiple of 16.
template <bool Acc>
void Gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t ars, int64_t aks, const float* B, int64_t ldb,
          float* C, int64_t ldc) {
  for (int64_t j = 0; j < N; j += kCols) {
    int64_t i = 0;
    for (; i + kTileRows <= M; i += kTileRows)
      Tile<kTileRows, Acc>(A + i * ars, ars, aks, B + j, ldb, K, C + i * ldc + j, ldc);
    if (i < M) TileRows<kTileRows - 1, Acc>(M - i, A + i * ars, ars, aks, B + j, ldb, K, C + i * ldc + j, ldc);
  }
}

// For rows x W pre-activations a (without the bias) at s: h_out = h_in + silu(a + bias) (h_in null: no residual),
// and s overwritten with silu'(a + bias) = sigmoid (1 + a (1 - sigmoid)).
void Activate(int64_t rows, int64_t W, const float* bias, float* s, const float* h_in, float* h_out) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t v = 0; v < W; v += kW) {
      const int64_t o = r * W + v;
      const vf a = load(s + o) + load(bias + v);
      const vf sg = 1.0f / (1.0f + vexp(-a));
      store(h_out + o, h_in ? load(h_in + o) + a * sg : a * sg);
      store(s + o, sg * (1.0f + a * (1.0f - sg)));
    }
}

// g = gh * s over rows x W, and bias_grad += its column sums.
void Gate(int64_t rows, int64_t W, const float* gh, const float* s, float* g, float* bias_grad) {
  for (int64_t v = 0; v < W; v += kW) {
    vf sum = load(bias_grad + v);
    for (int64_t r = 0; r < rows; ++r) {
      const vf x = load(gh + r * W + v) * load(s + r * W + v);
      store(g + r * W + v, x);
      sum += x;
    }
    store(bias_grad + v, sum);
  }
}

struct Args {
  int64_t B, D0, W, L, d;
  const float *X, *U, *W0, *b0, *K, *b, *bo;
  const float* KT;   // K_l^T, [L, W, W]
  const float* WoT;  // Wo^T, [d, W]
};

// Offsets into a group's partial gradient: [dW0 (D0 W), db0 (W), dK (L W W), db (L W), dWo^T (d W), dbo (d)].
struct Layout {
  int64_t w0, b0, k, b, wo, bo, size;
  explicit Layout(const Args& A) {
    w0 = 0;
    b0 = w0 + A.D0 * A.W;
    k = b0 + A.W;
    b = k + A.L * A.W * A.W;
    wo = b + A.L * A.W;
    bo = wo + A.d * A.W;
    size = bo + A.d;
  }
};

// Adds the gradient of rows [r0, r0 + m) (m <= kChunkRows) to the group's partial `part` and their summed squared
// error to *loss. scratch: h_0..h_L and s_0..s_L ([m, W] each), then gh and ga.
void Chunk(const Args& A, const Layout& P, int64_t r0, int64_t m, float* part, double* loss, float* scratch) {
  const int64_t W = A.W, L = A.L, d = A.d, slab = kChunkRows * W;
  float *h = scratch, *s = scratch + (L + 1) * slab, *gh = scratch + 2 * (L + 1) * slab, *ga = gh + slab;
  const float* X = A.X + r0 * A.D0;
  // forward
  Gemm<false>(m, W, A.D0, X, A.D0, 1, A.W0, W, s, W);
  Activate(m, W, A.b0, s, nullptr, h);
  for (int64_t l = 0; l < L; ++l) {
    Gemm<false>(m, W, W, h + l * slab, W, 1, A.K + l * W * W, W, s + (l + 1) * slab, W);
    Activate(m, W, A.b + l * W, s + (l + 1) * slab, h + l * slab, h + (l + 1) * slab);
  }
  // the output layer, its error and gradients, and gh = gv Wo^T
  const float* hL = h + L * slab;
  float* gwo = part + P.wo;
  double sq = 0.0;
  for (int64_t r = 0; r < m; ++r) {
    float gv[kMaxOut];
    for (int64_t j = 0; j < d; ++j) {
      vf acc{};
      for (int64_t v = 0; v < W; v += kW) acc = fmadd(load(hL + r * W + v), load(A.WoT + j * W + v), acc);
      const float e = hsum(acc) + A.bo[j] - A.U[(r0 + r) * d + j];
      sq += static_cast<double>(e) * e;
      gv[j] = 2.0f * e / static_cast<float>(A.B);
      part[P.bo + j] += gv[j];
    }
    for (int64_t v = 0; v < W; v += kW) {
      const vf hv = load(hL + r * W + v);
      vf g{};
      for (int64_t j = 0; j < d; ++j) {
        const vf c = splat(gv[j]);
        store(gwo + j * W + v, fmadd(c, hv, load(gwo + j * W + v)));
        g = fmadd(c, load(A.WoT + j * W + v), g);
      }
      store(gh + r * W + v, g);
    }
  }
  *loss += sq;
  // backward through the residual blocks, then the input layer
  for (int64_t l = L - 1; l >= 0; --l) {
    Gate(m, W, gh, s + (l + 1) * slab, ga, part + P.b + l * W);
    Gemm<true>(W, W, m, h + l * slab, 1, W, ga, W, part + P.k + l * W * W, W);  // dK_l += h_l^T ga
    Gemm<true>(m, W, W, ga, W, 1, A.KT + l * W * W, W, gh, W);                    // gh += ga K_l^T
  }
  Gate(m, W, gh, s, ga, part + P.b0);
  Gemm<true>(A.D0, W, m, X, 1, A.D0, ga, W, part + P.w0, W);  // dW0 += X^T ga
}

void Run(ffi::ThreadPool& pool, const Args& A, float* loss, float* gw0, float* gb0, float* gk, float* gb,
         float* gwo, float* gbo) {
  const Layout P(A);
  const int64_t groups = std::max<int64_t>(1, (A.B + kGroupRows - 1) / kGroupRows);
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(groups, pool.num_threads()));
  // Kept between calls (a fresh allocation of parts partial gradients is an mmap and page faults per call); each
  // part zeroes its own partial in the thread that runs it.
  thread_local std::vector<float> partial;
  if (static_cast<int64_t>(partial.size()) < parts * P.size) partial.resize(parts * P.size);
  std::vector<double> losses(parts, 0.0);
  float* part = partial.data();
  double* part_loss = losses.data();
  const int64_t scratch = (2 * (A.L + 1) + 2) * kChunkRows * A.W;
  ParallelChunks(pool, parts, scratch, [A, P, part, part_loss, groups, parts](int64_t q, float* scratch) {
    float* out = part + q * P.size;
    std::fill(out, out + P.size, 0.0f);
    const int64_t begin = std::min(A.B, q * groups / parts * kGroupRows);
    const int64_t end = std::min(A.B, (q + 1) * groups / parts * kGroupRows);
    for (int64_t r0 = begin; r0 < end; r0 += kChunkRows)
      Chunk(A, P, r0, std::min(kChunkRows, end - r0), out, part_loss + q, scratch);
  });
  // the parts' sums, in order
  for (int64_t q = 1; q < parts; ++q) {
    const float* add = part + q * P.size;
    for (int64_t i = 0; i < P.size; ++i) part[i] += add[i];
  }
  double total = 0.0;
  for (int64_t q = 0; q < parts; ++q) total += losses[q];
  loss[0] = static_cast<float>(total / static_cast<double>(A.B));
  std::memcpy(gw0, part + P.w0, sizeof(float) * A.D0 * A.W);
  std::memcpy(gb0, part + P.b0, sizeof(float) * A.W);
  std::memcpy(gk, part + P.k, sizeof(float) * A.L * A.W * A.W);
  std::memcpy(gb, part + P.b, sizeof(float) * A.L * A.W);
  for (int64_t k = 0; k < A.W; ++k)
    for (int64_t j = 0; j < A.d; ++j) gwo[k * A.d + j] = part[P.wo + j * A.W + k];
  std::memcpy(gbo, part + P.bo, sizeof(float) * A.d);
}

// The weights both calls take (their shapes checked by the caller).
void SetWeights(Args& A, ffi::Buffer<ffi::F32> w0, ffi::Buffer<ffi::F32> b0, ffi::Buffer<ffi::F32> k,
                ffi::Buffer<ffi::F32> b, ffi::Buffer<ffi::F32> wot, ffi::Buffer<ffi::F32> bo) {
  A.W0 = w0.typed_data();
  A.b0 = b0.typed_data();
  A.K = k.typed_data();
  A.b = b.typed_data();
  A.WoT = wot.typed_data();
  A.bo = bo.typed_data();
}

ffi::Error Impl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> u, ffi::Buffer<ffi::F32> w0,
                ffi::Buffer<ffi::F32> b0, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> kt, ffi::Buffer<ffi::F32> b,
                ffi::Buffer<ffi::F32> wo, ffi::Buffer<ffi::F32> wot, ffi::Buffer<ffi::F32> bo,
                ffi::ResultBuffer<ffi::F32> loss,
                ffi::ResultBuffer<ffi::F32> gw0, ffi::ResultBuffer<ffi::F32> gb0, ffi::ResultBuffer<ffi::F32> gk,
                ffi::ResultBuffer<ffi::F32> gb, ffi::ResultBuffer<ffi::F32> gwo, ffi::ResultBuffer<ffi::F32> gbo) {
  if (x.dimensions().size() != 2 || w0.dimensions().size() != 2 || k.dimensions().size() != 3 ||
      wo.dimensions().size() != 2)
    return ffi::Error::InvalidArgument("scl_flow_mlp_grad: X, W0, Wo must be 2-D and K 3-D");
  Args A;
  A.B = x.dimensions()[0];
  A.D0 = x.dimensions()[1];
  A.W = w0.dimensions()[1];
  A.L = k.dimensions()[0];
  A.d = wo.dimensions()[1];
  if (A.B < 1 || A.W % kCols != 0 || A.d < 1 || A.d > kMaxOut || w0.dimensions()[0] != A.D0 ||
      b0.element_count() != A.W || k.element_count() != A.L * A.W * A.W || kt.element_count() != k.element_count() ||
      b.element_count() != A.L * A.W || wo.dimensions()[0] != A.W || wot.element_count() != wo.element_count() ||
      bo.element_count() != A.d || u.element_count() != A.B * A.d)
    return ffi::Error::InvalidArgument("scl_flow_mlp_grad: inconsistent shapes");
  SetWeights(A, w0, b0, k, b, wot, bo);
  A.X = x.typed_data();
  A.U = u.typed_data();
  A.KT = kt.typed_data();
  Run(pool, A, loss->typed_data(), gw0->typed_data(), gb0->typed_data(), gk->typed_data(), gb->typed_data(),
      gwo->typed_data(), gbo->typed_data());
  return ffi::Error::Success();
}

// The velocity alone, v(Z) for Z [n, d] at one time t, whose time features the caller has folded into the input
// layer's bias (b0 + features(t) W_t): rows in units of kForwardRows, each walked in chunks of kChunkRows whose
// activations stay in L1/L2, on the pool's threads; each row's arithmetic does not depend on the threads.
constexpr int64_t kForwardRows = 256;

// h = (h if residual) + silu(a + bias) over rows x W: Activate without the derivative, for the velocity alone.
void AddSilu(int64_t rows, int64_t W, const float* bias, const float* a, float* h, bool residual) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t v = 0; v < W; v += kW) {
      const vf x = load(a + r * W + v) + load(bias + v);
      const vf y = x / (1.0f + vexp(-x));
      store(h + r * W + v, residual ? load(h + r * W + v) + y : y);
    }
}

void ForwardRows(const Args& A, int64_t r0, int64_t m, float* V, float* scratch) {
  const int64_t W = A.W, L = A.L, d = A.d, slab = kChunkRows * W;
  float *h = scratch, *g = scratch + slab;
  Gemm<false>(m, W, A.D0, A.X + r0 * A.D0, A.D0, 1, A.W0, W, g, W);
  AddSilu(m, W, A.b0, g, h, false);
  for (int64_t l = 0; l < L; ++l) {
    Gemm<false>(m, W, W, h, W, 1, A.K + l * W * W, W, g, W);
    AddSilu(m, W, A.b + l * W, g, h, true);
  }
  for (int64_t r = 0; r < m; ++r)
    for (int64_t j = 0; j < d; ++j) {
      vf acc{};
      for (int64_t v = 0; v < W; v += kW) acc = fmadd(load(h + r * W + v), load(A.WoT + j * W + v), acc);
      V[(r0 + r) * d + j] = hsum(acc) + A.bo[j];
    }
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> z, ffi::Buffer<ffi::F32> w0,
                       ffi::Buffer<ffi::F32> b0, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> b,
                       ffi::Buffer<ffi::F32> wot, ffi::Buffer<ffi::F32> bo, ffi::ResultBuffer<ffi::F32> v) {
  if (z.dimensions().size() != 2 || w0.dimensions().size() != 2 || k.dimensions().size() != 3 ||
      wot.dimensions().size() != 2)
    return ffi::Error::InvalidArgument("scl_flow_mlp_forward: Z, W0, Wo^T must be 2-D and K 3-D");
  Args A{};
  A.B = z.dimensions()[0];
  A.D0 = z.dimensions()[1];
  A.W = w0.dimensions()[1];
  A.L = k.dimensions()[0];
  A.d = wot.dimensions()[0];
  if (A.W % kCols != 0 || A.d < 1 || A.d > kMaxOut || w0.dimensions()[0] != A.D0 || b0.element_count() != A.W ||
      k.element_count() != A.L * A.W * A.W || b.element_count() != A.L * A.W || wot.dimensions()[1] != A.W ||
      bo.element_count() != A.d || v->element_count() != A.B * A.d)
    return ffi::Error::InvalidArgument("scl_flow_mlp_forward: inconsistent shapes");
  SetWeights(A, w0, b0, k, b, wot, bo);
  A.X = z.typed_data();
  float* V = v->typed_data();
  const int64_t units = (A.B + kForwardRows - 1) / kForwardRows;
  ParallelChunks(pool, units, 2 * kChunkRows * A.W, [A, V](int64_t u, float* scratch) {
    for (int64_t r0 = u * kForwardRows, end = std::min(A.B, r0 + kForwardRows); r0 < end; r0 += kChunkRows)
      ForwardRows(A, r0, std::min(kChunkRows, end - r0), V, scratch);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SclFlowMlpGrad, Impl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()    // X [B, D0]
                                  .Arg<ffi::Buffer<ffi::F32>>()    // U [B, d]
                                  .Arg<ffi::Buffer<ffi::F32>>()    // W0 [D0, W]
                                  .Arg<ffi::Buffer<ffi::F32>>()    // b0 [W]
                                  .Arg<ffi::Buffer<ffi::F32>>()    // K [L, W, W]
                                  .Arg<ffi::Buffer<ffi::F32>>()    // K^T [L, W, W] (K_l^T for each l)
                                  .Arg<ffi::Buffer<ffi::F32>>()    // b [L, W]
                                  .Arg<ffi::Buffer<ffi::F32>>()    // Wo [W, d]
                                  .Arg<ffi::Buffer<ffi::F32>>()    // Wo^T [d, W]
                                  .Arg<ffi::Buffer<ffi::F32>>()    // bo [d]
                                  .Ret<ffi::Buffer<ffi::F32>>()    // loss []
                                  .Ret<ffi::Buffer<ffi::F32>>()    // dW0
                                  .Ret<ffi::Buffer<ffi::F32>>()    // db0
                                  .Ret<ffi::Buffer<ffi::F32>>()    // dK
                                  .Ret<ffi::Buffer<ffi::F32>>()    // db
                                  .Ret<ffi::Buffer<ffi::F32>>()    // dWo
                                  .Ret<ffi::Buffer<ffi::F32>>());  // dbo

XLA_FFI_DEFINE_HANDLER_SYMBOL(SclFlowMlpForward, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()    // Z [n, d]
                                  .Arg<ffi::Buffer<ffi::F32>>()    // W0 [d, W] (the input layer on z)
                                  .Arg<ffi::Buffer<ffi::F32>>()    // b0 + features(t) W_t [W]
                                  .Arg<ffi::Buffer<ffi::F32>>()    // K [L, W, W]
                                  .Arg<ffi::Buffer<ffi::F32>>()    // b [L, W]
                                  .Arg<ffi::Buffer<ffi::F32>>()    // Wo^T [d, W]
                                  .Arg<ffi::Buffer<ffi::F32>>()    // bo [d]
                                  .Ret<ffi::Buffer<ffi::F32>>());  // V [n, d]
