// One iteration of scl._solvers' L-BFGS with a backtracking Armijo line search, after the objective was evaluated
// at the trial point: an XLA FFI custom call for the CPU (scl/_native.py builds, loads and registers it;
// scl/_solvers.py calls it). The loop around it is JAX's: a lax.while_loop whose body evaluates the objective at
// x_try and calls this. XLA runs the same bookkeeping (the trial's acceptance, the curvature pair, the compact-form
// direction with its two triangular solves, the step's interpolation, the stopping test) as about fifty small
// kernels per iteration, each a few hundred nanoseconds of launch for a few hundred floats of work; here it is one
// pass over the 2m + 4 vectors of length p.
//
//   SclLbfgsStep   f(x_try), grad f(x_try), state (aliased in place) -> the next state and trial point
//
// State, for p parameters and history m (leading dimensions, if any, are independent problems: vmap):
//   x, g, d [p]      the accepted point, its gradient, the search direction
//   s, y [m, p]      curvature pairs in a ring: row (head + j) % m is the j-th oldest of `count`
//   rho [m]          1 / (s . y) of each row
//   fs [4]           f(x), the step t, g . d, gamma (the initial inverse-Hessian scale)
//   is [7]           iterations k, rejected trials in a row, started, evaluations, head, count, go
//   x_try [p]        the point the objective was evaluated at, replaced by the next one (x + t d)
//
// The rules are those of scl._solvers._lbfgs_armijo (its docstring states them): a trial is accepted when f
// decreased by the Armijo amount up to 4 ulps of |f| (or it is the first evaluation); an accepted trial adds the
// pair (s, y) when s . y > 1e-10 |s| |y|, sets gamma = s . y / y . y and the direction -H g (the two-loop
// recursion: the same vector as the compact form, to float rounding), falling back to -gamma g when it is not a
// descent direction, with t = 1; a rejected one shrinks t to the minimiser of the quadratic through f, g . d and
// f(x_try), kept in [0.1 t, 0.5 t] (0.1 t when f(x_try) is not finite). `go` is the while loop's condition:
// k < maxiter, |g| > tol (or not started), fewer than max_backtracks rejected trials in a row.
// Float32 only; dot products are accumulated in float64.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

enum FloatState { kF, kT, kGd, kGamma, kFloatState };
enum IntState { kK, kBack, kStarted, kEvals, kHead, kCount, kGo, kIntState };

double Dot(const float* a, const float* b, int64_t p) {
  double acc[4] = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 4 <= p; i += 4)
    for (int l = 0; l < 4; ++l) acc[l] += static_cast<double>(a[i + l]) * b[i + l];
  for (; i < p; ++i) acc[0] += static_cast<double>(a[i]) * b[i];
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

void Axpy(float a, const float* x, float* y, int64_t p) {  // y += a x
  for (int64_t i = 0; i < p; ++i) y[i] += a * x[i];
}

struct Problem {
  float *x, *g, *d, *s, *y, *rho, *fs, *x_try;
  int32_t* is;
  float f_try;
  const float* g_try;
};

// One iteration for one problem; `alpha` holds m doubles.
void Step(const Problem& P, int64_t p, int64_t m, int64_t maxiter, float tol, int64_t max_backtracks,
          double* alpha) {
  float *x = P.x, *g = P.g, *d = P.d, *fs = P.fs;
  int32_t* is = P.is;
  const float eps = std::numeric_limits<float>::epsilon();
  const bool started = is[kStarted] != 0;
  const float f = fs[kF], t = fs[kT], gd = fs[kGd];
  const bool finite = std::isfinite(P.f_try);
  const bool ok = (finite && P.f_try <= f + 1e-4f * t * gd + 4 * eps * std::fabs(f)) || !started;
  if (ok) {
    if (started) {  // the curvature pair (s, y) = (x_try - x, g_try - g), kept if s . y > 1e-10 |s| |y|
      double ss = 0, yy = 0, sy = 0;
      for (int64_t i = 0; i < p; ++i) {
        const double si = static_cast<double>(P.x_try[i]) - x[i], yi = static_cast<double>(P.g_try[i]) - g[i];
        ss += si * si;
        yy += yi * yi;
        sy += si * yi;
      }
      if (sy > 1e-10 * std::sqrt(ss) * std::sqrt(yy)) {  // into the next free row, or over the oldest
        const int64_t head = is[kHead], count = is[kCount];
        const int64_t row = count < m ? (head + count) % m : head;
        float* s = P.s + row * p;
        float* yv = P.y + row * p;
        for (int64_t i = 0; i < p; ++i) {
          s[i] = P.x_try[i] - x[i];
          yv[i] = P.g_try[i] - g[i];
        }
        P.rho[row] = static_cast<float>(1.0 / sy);
        if (count < m) is[kCount] = static_cast<int32_t>(count + 1);
        else is[kHead] = static_cast<int32_t>((head + 1) % m);
        fs[kGamma] = static_cast<float>(sy / yy);
      }
    } else {
      const double gn = std::sqrt(Dot(P.g_try, P.g_try, p));
      fs[kGamma] = static_cast<float>(std::fmin(1.0, 1.0 / std::fmax(gn, eps)));
    }
    std::memcpy(x, P.x_try, p * sizeof(float));
    std::memcpy(g, P.g_try, p * sizeof(float));
    fs[kF] = P.f_try;
    // d = -H g by the two-loop recursion over the ring, newest first, then oldest first
    const int64_t head = is[kHead], count = is[kCount];
    const float gamma = fs[kGamma];
    for (int64_t i = 0; i < p; ++i) d[i] = -g[i];
    for (int64_t j = count - 1; j >= 0; --j) {
      const int64_t row = (head + j) % m;
      alpha[j] = P.rho[row] * Dot(P.s + row * p, d, p);
      Axpy(static_cast<float>(-alpha[j]), P.y + row * p, d, p);
    }
    for (int64_t i = 0; i < p; ++i) d[i] *= gamma;
    for (int64_t j = 0; j < count; ++j) {
      const int64_t row = (head + j) % m;
      const double beta = P.rho[row] * Dot(P.y + row * p, d, p);
      Axpy(static_cast<float>(alpha[j] - beta), P.s + row * p, d, p);
    }
    double gd_new = Dot(g, d, p);
    if (!(gd_new < 0)) {  // not a descent direction: steepest descent
      for (int64_t i = 0; i < p; ++i) d[i] = -gamma * g[i];
      gd_new = -static_cast<double>(gamma) * Dot(g, g, p);
    }
    fs[kGd] = static_cast<float>(gd_new);
    fs[kT] = 1.0f;
    is[kBack] = 0;
    if (started) is[kK] += 1;
  } else {
    const float denom = 2 * (P.f_try - f - t * gd);
    const float t_quad = denom > 0 ? -gd * t * t / denom : 0.5f * t;
    fs[kT] = finite ? std::fmin(std::fmax(t_quad, 0.1f * t), 0.5f * t) : 0.1f * t;
    is[kBack] += 1;
  }
  is[kStarted] = 1;
  is[kEvals] += 1;
  const double gnorm = std::sqrt(Dot(g, g, p));
  is[kGo] = is[kK] < maxiter && gnorm > tol && is[kBack] < max_backtracks;
  const float step = fs[kT];
  for (int64_t i = 0; i < p; ++i) P.x_try[i] = x[i] + step * d[i];
}

ffi::Error StepImpl(ffi::Buffer<ffi::F32> f_try, ffi::Buffer<ffi::F32> g_try, ffi::Buffer<ffi::F32> x,
                    ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> d, ffi::Buffer<ffi::F32> s,
                    ffi::Buffer<ffi::F32> y, ffi::Buffer<ffi::F32> rho, ffi::Buffer<ffi::F32> fs,
                    ffi::Buffer<ffi::S32> is, ffi::Buffer<ffi::F32> x_try,
                    ffi::ResultBuffer<ffi::F32> x_out, ffi::ResultBuffer<ffi::F32> g_out,
                    ffi::ResultBuffer<ffi::F32> d_out, ffi::ResultBuffer<ffi::F32> s_out,
                    ffi::ResultBuffer<ffi::F32> y_out, ffi::ResultBuffer<ffi::F32> rho_out,
                    ffi::ResultBuffer<ffi::F32> fs_out, ffi::ResultBuffer<ffi::S32> is_out,
                    ffi::ResultBuffer<ffi::F32> x_try_out, int64_t maxiter, float tol, int64_t max_backtracks) {
  const auto dims = x.dimensions();
  if (dims.size() < 1) return ffi::Error::InvalidArgument("scl_lbfgs_step: x must be [..., p]");
  const int64_t p = dims.back(), batch = f_try.element_count();
  const int64_t m = rho.element_count() / (batch > 0 ? batch : 1);
  if (x.element_count() != batch * p || g.element_count() != batch * p || d.element_count() != batch * p ||
      x_try.element_count() != batch * p || g_try.element_count() != batch * p ||
      s.element_count() != batch * m * p || y.element_count() != batch * m * p || m < 1 ||
      fs.element_count() != batch * kFloatState || is.element_count() != batch * kIntState)
    return ffi::Error::InvalidArgument("scl_lbfgs_step: inconsistent shapes");
  // The state is aliased to the results (input_output_aliases), so XLA hands the same buffers; copy otherwise.
  auto place = [](const auto& in, auto& out) {
    if (out->untyped_data() != in.untyped_data())
      std::memcpy(out->untyped_data(), in.untyped_data(), in.size_bytes());
  };
  place(x, x_out);
  place(g, g_out);
  place(d, d_out);
  place(s, s_out);
  place(y, y_out);
  place(rho, rho_out);
  place(fs, fs_out);
  place(is, is_out);
  place(x_try, x_try_out);
  std::vector<double> alpha(m);
  for (int64_t b = 0; b < batch; ++b) {
    const Problem P{x_out->typed_data() + b * p, g_out->typed_data() + b * p, d_out->typed_data() + b * p,
                    s_out->typed_data() + b * m * p, y_out->typed_data() + b * m * p,
                    rho_out->typed_data() + b * m, fs_out->typed_data() + b * kFloatState,
                    x_try_out->typed_data() + b * p, is_out->typed_data() + b * kIntState,
                    f_try.typed_data()[b], g_try.typed_data() + b * p};
    Step(P, p, m, maxiter, tol, max_backtracks, alpha.data());
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SclLbfgsStep, StepImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // f(x_try) [...]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // grad f(x_try) [..., p]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x [..., p]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // g [..., p]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // d [..., p]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // s [..., m, p]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // y [..., m, p]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // rho [..., m]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // fs [..., 4]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // is [..., 7]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x_try [..., p]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // x
                                  .Ret<ffi::Buffer<ffi::F32>>()  // g
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d
                                  .Ret<ffi::Buffer<ffi::F32>>()  // s
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y
                                  .Ret<ffi::Buffer<ffi::F32>>()  // rho
                                  .Ret<ffi::Buffer<ffi::F32>>()  // fs
                                  .Ret<ffi::Buffer<ffi::S32>>()  // is
                                  .Ret<ffi::Buffer<ffi::F32>>()  // the next x_try
                                  .Attr<int64_t>("maxiter")
                                  .Attr<float>("tol")
                                  .Attr<int64_t>("max_backtracks"));
