"""scl's native CPU kernels: the Bradley–Terry loss and gradient of a one-hidden-layer SiLU reward, fused, the
bookkeeping of one L-BFGS iteration, and the flow model's training gradient and velocity.

``scl/csrc/bt_mlp1.cc`` holds XLA FFI custom calls (``jax.ffi``): one pass over the pairs that computes the summed
loss and its gradient, where XLA runs the same arithmetic as about eight kernels over ``[2n, H]`` arrays; for pairs
that index a pool of samples, the reward of each sample and the pull-back of the samples' cotangents; and the loss's
Hessian-vector products on either layout. ``scl/csrc/lbfgs.cc`` holds one iteration of :mod:`scl._solvers`' L-BFGS
after the objective's evaluation (the trial's acceptance, the curvature pair, the direction, the step), which XLA
runs as about fifty small kernels. ``scl/csrc/flow_mlp.cc`` holds the loss of :mod:`scl.models.flow`'s residual
SiLU velocity MLP and its gradient in every parameter, one pass over the minibatch in chunks of rows that stay in
the core's cache, where XLA runs a training step as about thirty kernels, each split over the threads: on a
virtual machine whose two vCPUs do not share a cache, every hand-off between them costs, and the step with it;
and the velocity alone at one time, for the sampler's network evaluations, with the activations kept in cache.
All are compiled on first use with the machine's C++ compiler (``$CXX``, else ``g++``, ``-O3 -march=native``; a
few seconds) into one library in a cache directory (``$SCL_NATIVE_CACHE``, else ``~/.cache/scl/native``), keyed by
the sources, the compiler, the flags, jaxlib's version and the CPU, and written atomically (concurrent processes
do not see half a library). Without a compiler, or with ``SCL_NATIVE=0``, :func:`available` is False and
:mod:`scl.reward_model`, :mod:`scl._solvers` and :mod:`scl.models.flow` keep their ``jax.numpy`` paths, which
compute the same values to float rounding; a failed build is reported once as a warning.

The loss kernel only replaces the primal computation: derivatives of it (Hessian-vector products, derivatives in
the labels) come from the ``jax.numpy`` path through a ``custom_jvp`` in :mod:`scl.reward_model`, so it is
differentiable, jittable, and (one member at a time) vmappable. The Hessian of the loss times a tangent (one
pass over the pairs, or two over a pool's samples) serves the attack's conjugate-gradient solves directly
(:func:`scl.reward_model.bt_hvp`) and has no derivative rules: nothing differentiates or transposes it. The
L-BFGS step is not differentiated (the solver's derivatives are implicit) and takes a batch of independent
problems at once under ``vmap``. The flow's kernels serve its optimiser steps and its sampler only and have no
derivative rules.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import warnings

import jax
import jax.numpy as jnp
import numpy as np

_CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
_SOURCES = tuple(os.path.join(_CSRC, name) for name in ("bt_mlp1.cc", "lbfgs.cc", "flow_mlp.cc"))
_HEADERS = (os.path.join(_CSRC, "simd.h"),)
_TARGETS = {"scl_bt_mlp1": "SclBtMlp1", "scl_mlp1_values": "SclMlp1Values", "scl_mlp1_pullback": "SclMlp1PullBack",
            "scl_bt_mlp1_hvp": "SclBtMlp1Hvp", "scl_mlp1_tangents": "SclMlp1Tangents",
            "scl_mlp1_pullback_tangent": "SclMlp1PullBackTangent", "scl_lbfgs_step": "SclLbfgsStep",
            "scl_flow_mlp_grad": "SclFlowMlpGrad", "scl_flow_mlp_forward": "SclFlowMlpForward"}
_FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-std=c++17", "-shared", "-fPIC", "-w")
#: Widest input the kernel takes (``d`` features) and the multiple its hidden width must be.
MAX_FEATURES, WIDTH_MULTIPLE = 4, 8

_log = logging.getLogger(__name__)


def _cpu_description() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      lines = [line for line in f if line.startswith(("model name", "flags"))]
    return "".join(sorted(set(lines)))
  except OSError:
    return platform.processor()


def _cache_dir() -> str:
  return os.environ.get("SCL_NATIVE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "scl", "native")


def _build() -> str | None:
  """Path of the compiled library (compiled now if not cached), or None when it cannot be built."""
  compiler = shutil.which(os.environ.get("CXX", "g++"))
  if compiler is None:
    _log.info("scl native kernel: no C++ compiler found (set CXX); using the jax.numpy path")
    return None
  cmd = [compiler, *_FLAGS, "-I", jax.ffi.include_dir(), *_SOURCES, "-o"]
  try:  # any failure (a source file missing from an install, a compiler that fails) falls back, with a warning
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    sources = []
    for name in _SOURCES + _HEADERS:
      with open(name, "rb") as f:
        sources.append(f.read())
    parts = [*sources, version.encode(), " ".join(_FLAGS).encode(), importlib.metadata.version("jaxlib").encode(),
             _cpu_description().encode()]
    key = hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]
    path = os.path.join(_cache_dir(), f"scl_native-{key}.so")
    cmd.append(path)
    if os.path.exists(path):
      return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".scl_native-", suffix=".so")
    os.close(fd)
    result = subprocess.run(cmd[:-1] + [tmp], capture_output=True, text=True)
    if result.returncode != 0:
      os.unlink(tmp)
      raise RuntimeError(f"compiler output (end): {result.stderr[-2000:]}")
    os.replace(tmp, path)  # atomic: another process sees the whole library or none
  except (OSError, RuntimeError, importlib.metadata.PackageNotFoundError) as e:
    warnings.warn(f"scl native kernel: building {' '.join(_SOURCES)} failed ({' '.join(cmd)}): {e}; using the "
                  "jax.numpy path", RuntimeWarning, stacklevel=3)
    return None
  return path


@functools.lru_cache(maxsize=None)
def available() -> bool:
  """Whether the native kernels are built, loaded and registered with XLA (built on the first call)."""
  if os.environ.get("SCL_NATIVE", "1") == "0":
    return False
  path = _build()
  if path is None:
    return False
  try:
    library = ctypes.cdll.LoadLibrary(path)
  except OSError as e:
    warnings.warn(f"scl native kernel: loading {path} failed: {e}; using the jax.numpy path", RuntimeWarning,
                  stacklevel=2)
    return False
  for target, symbol in _TARGETS.items():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
  return True


def supports(w1: jax.Array, features: jax.Array) -> bool:
  """Whether a call with first-layer kernel ``w1 [d, H]`` on ``features [n, d]`` can use the kernel: float32
  throughout, ``d <= 4``, ``H`` a multiple of 8, the CPU as the default backend, and the kernel available."""
  return _supports_mlp1(w1, features)


def _supports_mlp1(w1: jax.Array, features: jax.Array) -> bool:
  return (w1.ndim == 2 and 1 <= w1.shape[0] <= MAX_FEATURES and w1.shape[1] % WIDTH_MULTIPLE == 0
          and w1.dtype == jnp.float32 and features.dtype == jnp.float32
          and jax.default_backend() == "cpu" and available())


def supports_hvp(w1: jax.Array, features: jax.Array) -> bool:
  """Whether the Hessian-vector products (:func:`bt_mlp1_hvp`, :func:`mlp1_values_and_tangents`,
  :func:`mlp1_pullback_tangent`) apply: as :func:`supports` (a switch of its own, so that each can be turned off
  alone)."""
  return _supports_mlp1(w1, features)


def bt_mlp1_nll_sum_and_grad(w1, b1, w2, b2, x, z, o, w):
  """``(Σ_i w_i nll_i, (∂/∂w1, ∂/∂b1, ∂/∂w2, ∂/∂b2))`` by the fused kernel (see the module docstring).

  Shapes: ``w1 [d, H]``, ``b1 [H]``, ``w2 [H, 1]``, ``b2 [1]``, ``x, z [n, d]``, ``o, w [n]``; float32. Under
  ``vmap`` the kernel runs once per member (``vmap_method="sequential"``).
  """
  out = [jax.ShapeDtypeStruct(shape, jnp.float32) for shape in ((), w1.shape, b1.shape, w2.shape, b2.shape)]
  nll, *grads = jax.ffi.ffi_call("scl_bt_mlp1", out, vmap_method="sequential")(w1, b1, w2, b2, x, z, o, w)
  return nll, tuple(grads)


def bt_mlp1_hvp(w1, b1, w2, b2, v1, vb1, vw2, vb2, x, z, o, w):
  """``∇²_θ (Σ_i w_i nll_i) · v`` as ``(∂/∂w1, ∂/∂b1, ∂/∂w2, ∂/∂b2)`` by one fused pass over the pairs, for a
  tangent ``v = (v1, vb1, vw2, vb2)`` shaped as the parameters (other shapes as
  :func:`bt_mlp1_nll_sum_and_grad`): the derivative of that function's gradient along ``v``."""
  out = [jax.ShapeDtypeStruct(a.shape, jnp.float32) for a in (w1, b1, w2, b2)]
  return tuple(jax.ffi.ffi_call("scl_bt_mlp1_hvp", out, vmap_method="sequential")(
      w1, b1, w2, b2, v1, vb1, vw2, vb2, x, z, o, w))


def mlp1_values(w1, b1, w2, b2, x):
  """``R(x) [n]`` of the one-hidden-layer SiLU reward on rows ``x [n, d]`` (shapes as above)."""
  out = jax.ShapeDtypeStruct((x.shape[0],), jnp.float32)
  return jax.ffi.ffi_call("scl_mlp1_values", out, vmap_method="sequential")(w1, b1, w2, b2, x)


def mlp1_pullback(w1, b1, w2, b2, x, c):
  """``Σ_i c_i ∇_θ R(x_i)`` as ``(∂/∂w1, ∂/∂b1, ∂/∂w2, ∂/∂b2)`` for rows ``x [n, d]`` and cotangents
  ``c [n]``; each row's forward pass is recomputed, so nothing of size ``[n, H]`` is stored."""
  out = [jax.ShapeDtypeStruct(a.shape, jnp.float32) for a in (w1, b1, w2, b2)]
  return tuple(jax.ffi.ffi_call("scl_mlp1_pullback", out, vmap_method="sequential")(w1, b1, w2, b2, x, c))


def mlp1_values_and_tangents(w1, b1, w2, b2, v1, vb1, vw2, vb2, x):
  """``(R(x), R'(x))``, each ``[n]``: the reward of rows ``x [n, d]`` and its derivative along a tangent
  ``v = (v1, vb1, vw2, vb2)`` of the parameters (shaped as them)."""
  out = [jax.ShapeDtypeStruct((x.shape[0],), jnp.float32)] * 2
  return tuple(jax.ffi.ffi_call("scl_mlp1_tangents", out, vmap_method="sequential")(
      w1, b1, w2, b2, v1, vb1, vw2, vb2, x))


def mlp1_pullback_tangent(w1, b1, w2, b2, v1, vb1, vw2, vb2, x, c, c_dot):
  """The derivative of :func:`mlp1_pullback` along a tangent ``v`` of the parameters, with ``c_dot [n]`` the
  cotangents' own tangent: ``Σ_i c_dot_i ∇_θ R(x_i) + c_i ∇²_θ R(x_i) v``, shaped as the parameters."""
  out = [jax.ShapeDtypeStruct(a.shape, jnp.float32) for a in (w1, b1, w2, b2)]
  return tuple(jax.ffi.ffi_call("scl_mlp1_pullback_tangent", out, vmap_method="sequential")(
      w1, b1, w2, b2, v1, vb1, vw2, vb2, x, c, c_dot))


#: Widest output of the flow's velocity MLP the flow kernel takes, and the multiple its hidden width must be.
FLOW_MAX_OUT, FLOW_WIDTH_MULTIPLE = 4, 16


def supports_flow(width: int, out_dim: int, depth: int) -> bool:
  """Whether the flow's training gradient (:func:`flow_mlp_loss_and_grad`) applies to a residual SiLU velocity
  MLP of hidden ``width``, ``out_dim`` outputs and ``depth`` residual blocks: ``width`` a multiple of 16,
  ``1 <= out_dim <= 4``, ``depth >= 1``, the CPU as the default backend, and the kernels available."""
  return (width % FLOW_WIDTH_MULTIPLE == 0 and 1 <= out_dim <= FLOW_MAX_OUT and depth >= 1
          and jax.default_backend() == "cpu" and available())


def flow_mlp_loss_and_grad(x, u, w0, b0, k, b, wo, bo):
  """``(loss, (∂/∂w0, ∂/∂b0, ∂/∂k, ∂/∂b, ∂/∂wo, ∂/∂bo))`` of ``loss = mean_i |v(x_i) - u_i|²`` for the residual
  SiLU MLP ``v(x) = h_L wo + bo``, ``h_0 = silu(x w0 + b0)``, ``h_{l+1} = h_l + silu(h_l k[l] + b[l])``, by one
  fused pass over the rows (``scl/csrc/flow_mlp.cc``).

  Shapes: ``x [B, D0]``, ``u [B, d]``, ``w0 [D0, W]``, ``b0 [W]``, ``k [L, W, W]``, ``b [L, W]``, ``wo [W, d]``,
  ``bo [d]``; float32 (:func:`supports_flow` says which sizes). No derivative rules: it serves the flow's
  optimiser steps only. Under ``vmap`` the kernel runs once per member (``vmap_method="sequential"``).
  """
  out = [jax.ShapeDtypeStruct(shape, jnp.float32) for shape in ((), w0.shape, b0.shape, k.shape, b.shape, wo.shape,
                                                                 bo.shape)]
  call = jax.ffi.ffi_call("scl_flow_mlp_grad", out, vmap_method="sequential")
  loss, *grads = call(x, u, w0, b0, k, jnp.swapaxes(k, 1, 2), b, wo, wo.T, bo)
  return loss, tuple(grads)


def flow_mlp_forward(z, w0, b0, k, b, wo, bo):
  """The residual SiLU MLP's output ``v [n, d]`` on rows ``z [n, d]`` (:func:`flow_mlp_loss_and_grad`'s network,
  with the time features folded into the input layer's bias ``b0 [W]``), by one pass over the rows. Shapes: ``w0
  [d, W]``, ``k [L, W, W]``, ``b [L, W]``, ``wo [W, d]``, ``bo [d]``; float32. No derivative rules."""
  call = jax.ffi.ffi_call("scl_flow_mlp_forward", jax.ShapeDtypeStruct(z.shape, jnp.float32),
                          vmap_method="sequential")
  return call(z, w0, b0, k, b, wo.T, bo)


#: Indices into the L-BFGS state's integer vector (``scl/csrc/lbfgs.cc``, ``enum IntState``): iterations,
#: rejected trials in a row, started, evaluations, ring head, ring count, and ``go`` (the loop's condition).
LBFGS_ITERS, LBFGS_BACKTRACKS, LBFGS_STARTED, LBFGS_EVALS, LBFGS_HEAD, LBFGS_COUNT, LBFGS_GO = range(7)


def lbfgs_init(x0: jax.Array, history_size: int, maxiter: int) -> tuple:
  """The state :func:`lbfgs_step` takes before the first evaluation, at ``x0 [p]``: ``(x, g, d, s [m, p],
  y [m, p], rho [m], fs, is, x_try)`` with ``fs = (f, t, g·d, γ) = (inf, 0, 0, 1)``, the counters at 0, ``go``
  set when ``maxiter > 0``, and ``x_try = x0``."""
  p, m = x0.shape[0], history_size
  counters = [0] * 7
  counters[LBFGS_GO] = int(maxiter > 0)
  return (x0, jnp.zeros_like(x0), jnp.zeros_like(x0), jnp.zeros((m, p), x0.dtype), jnp.zeros((m, p), x0.dtype),
          jnp.zeros((m,), x0.dtype), jnp.array([jnp.inf, 0.0, 0.0, 1.0], x0.dtype), jnp.array(counters, jnp.int32),
          x0)


def supports_lbfgs(x0: jax.Array, tol) -> bool:
  """Whether :func:`lbfgs_step` can run scl._solvers' L-BFGS on ``x0``: float32 parameters, a concrete ``tol``,
  the CPU as the default backend, and the kernels available."""
  return (x0.dtype == jnp.float32 and isinstance(tol, (int, float)) and jax.default_backend() == "cpu"
          and available())


def lbfgs_step(state: tuple, f_try: jax.Array, g_try: jax.Array, *, maxiter: int, tol: float,
               max_backtracks: int) -> tuple:
  """One L-BFGS iteration of :func:`scl._solvers._lbfgs_armijo_native` after the objective's evaluation at the
  trial point: ``state = (x, g, d, s, y, rho, fs, is, x_try)`` (``scl/csrc/lbfgs.cc`` describes it) and
  ``f(x_try), ∇f(x_try)`` -> the next state, updated in place (the state's buffers are aliased to the results).
  Under ``vmap`` every member is stepped in one call."""
  if not available():
    raise RuntimeError("scl native kernels are not available (no C++ compiler, a failed build, or SCL_NATIVE=0)")
  # The evaluation comes first: XLA's while-loop constant sinking takes a loop body whose result is this call
  # for a tuple and reads its operand i as state element i; with the state in front it would find each element
  # "unchanged" and fold the loop's condition to a constant (a loop that never ends).
  n = len(state)
  call = jax.ffi.ffi_call("scl_lbfgs_step", [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in state],
                          vmap_method="broadcast_all", input_output_aliases={2 + i: i for i in range(n)})
  return tuple(call(f_try, g_try, *state, maxiter=np.int64(maxiter), tol=np.float32(tol),
                    max_backtracks=np.int64(max_backtracks)))
