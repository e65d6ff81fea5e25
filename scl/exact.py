"""Exact population dynamics of the curated self-consuming loop on a finite support.

On ``n`` atoms the loop is a deterministic map on probability vectors (DESIGN §1–2):

* **curation** (Bradley–Terry / Luce choice among ``K`` i.i.d. candidates):
  ``p_{t+1/2} = p_t * H_K(p_t)``, with the one-dimensional integral form

      H_K(x) = K e^{r(x)} ∫_0^∞ exp(-u e^{r(x)}) M(u)^{K-1} du,   M(u) = Σ_j p_j exp(-u e^{r_j});

  ``K = 1`` is the identity and ``K = inf`` the tilt ``p e^r / E_p[e^r]``.
* **mixed users**: a fraction ``φ`` curates with ``r~``: ``p * ((1-φ) H_K^r + φ H_K^{r~})``.
* **retraining with real data** (the global optimum of the mixed likelihood):
  ``p_{t+1} = 1/(1+λ) p_data + λ/(1+λ) p_{t+1/2}``; ``λ = inf`` (real share 0) is fully synthetic.

Quadrature (see ``docs/theory.md``). After shifting ``r`` so that its maximum over the support of ``p`` is 0
(``ρ = r - r*``, ``a = e^ρ ∈ (0, 1]``; ``H_K`` is invariant to the shift), substitute ``u = e^s``:

    H_K(x) = K ∫ exp(s + ρ_x - e^{s + ρ_x} + (K-1) log M(e^s)) ds .

The integrand is analytic in ``s``, decays exponentially as ``s -> -∞`` and double-exponentially as
``s -> +∞``, so the trapezoidal rule converges exponentially fast in the step ``h`` (with ``h <= 0.45`` the
discretisation error is below 1e-9). The range ``[s_lo, s_hi]`` is chosen from rigorous tail bounds
(relative truncation error ``<= e^{-L}``, ``L = 20``):
``s_lo = -log(1 + (K-1) E_p[a]) - L`` (Jensen: ``H_K(x) >= K a_x / (a_x + (K-1) E_p[a])``) and
``s_hi = Δ + min(log(L + Δ) - log K, log L)`` with ``Δ = max ρ - min ρ`` the reward spread on the support
(``M(u) <= e^{-u a_min}``). ``log M`` is computed as ``log1p(-Σ p_j (-expm1(-u a_j)))`` while ``M > 1/2`` (so
that ``(K-1) log M`` keeps full relative accuracy for ``K`` up to thousands) and as ``log Σ p_j e^{-u a_j}``
below. The node count ``num_nodes`` is static; the spread that fits at ``h <= 0.45`` is
``Δ_cap ≈ 0.45 (num_nodes - 1) - L - log L - log K`` (about 80 for the default 256 nodes and K = 4096, about 90
for K = 2). Rewards further than ``Δ_cap`` below the maximum are clamped to ``r* - Δ_cap`` (``Δ_cap`` is also
at most 75 in float32, 650 in float64, to stay in range; results stay finite and normalised for rewards of any
magnitude). Such atoms win a choice only when every candidate lies that far below, so the clamp loses their
order among themselves, which matters only where they hold mass: a top atom of negligible mass above widely
spread low atoms is the case to watch (the adversarial ``r~ = -r`` after benign curation). :func:`validate`
warns (``RuntimeWarning``) where concrete inputs put more mass below the clamp than the engine's accuracy
allows, and says whether to raise ``num_nodes`` or to work in float64.
Measured accuracy (tests/test_exact.py): better than 1e-7 relative in float64 against brute-force
enumeration and adaptive scipy quadrature for spreads up to 50 and K up to 4096, and better than 1e-4 in
float32. The output is renormalised to sum to 1 (the exact ``Σ_x p_x H_K(x)`` is 1).

Cost: ``O(n * num_nodes)`` exponentials per curation step, done in node chunks so memory is ``O(n * 32)``.

Validation: :func:`curate`, :func:`step` and :func:`run` check their concrete arguments with :func:`validate`
(probability vectors, finite rewards, shapes, ``K >= 1``, ``λ >= 0``, ``φ ∈ [0, 1]``, ``iterations >= 0``,
``num_nodes >= 2``) and raise ``ValueError`` before computing; traced arguments (under ``jit``/``vmap``) are
passed through. The private ``_curate`` and ``_run`` are the unchecked kernels for internal callers.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from scl import metrics as metrics_lib
from scl import theory
from scl.hyper import real_share  # noqa: F401  (re-exported: scl.exact.real_share)

Array = chex.Array

#: Default number of quadrature nodes (static; the step is set from the reward spread and K).
NUM_NODES = 256
#: Largest trapezoid step in ``s = log u``.
_H_MAX = 0.45
#: Tail-truncation exponent: relative truncation error below ``e^{-L}``.
_L = 20.0
#: Nodes per chunk when ``n * num_nodes`` is large (bounds memory at ``n * _CHUNK`` floats).
_CHUNK = 32
_SINGLE_BLOCK_ELEMENTS = 1 << 21
#: Largest reward spread kept in float32 / float64 (``e^{-Δ}`` normal, ``e^{s_hi}`` finite).
_SPREAD_MAX_F32, _SPREAD_MAX_F64 = 75.0, 650.0


def _dtype(*xs) -> Any:
  return jnp.result_type(*[jnp.asarray(x) for x in xs], jnp.float32)


def _nodes_spread_cap(num_nodes: int, log_K: Any) -> Any:
  """The reward spread ``num_nodes`` trapezoid nodes resolve at ``h <= 0.45`` (at least 1; see the docstring)."""
  return jnp.maximum(_H_MAX * (num_nodes - 1) - _L - math.log(_L) - log_K, 1.0)


def _curation_weight(p: Array, r: Array, K: Array, num_nodes: int) -> Array:
  """The curated (normalised) vector ``p * H_K(p)`` for one reward; ``K`` finite or ``inf``.

  Args:
    p: [n] probability vector.
    r: [n] rewards (any magnitude; only differences matter).
    K: scalar, ``K >= 1`` (real) or ``inf``.
    num_nodes: static number of trapezoid nodes.
  Returns:
    [n] probability vector.
  """
  dtype = p.dtype
  n = p.shape[0]
  support = p > 0
  r_star = jnp.max(jnp.where(support, r, -jnp.inf))
  rho = r - r_star                                          # <= 0 on the support
  log_p = jnp.log(jnp.where(support, p, 1.0))
  log_p = jnp.where(support, log_p, -jnp.inf)

  # K = inf: the exponential tilt p e^r / E_p[e^r] (computed by softmax in log space).
  tilt = jax.nn.softmax(jnp.where(support, log_p + rho, -jnp.inf))

  is_inf = jnp.isinf(K)
  K_fin = jnp.where(is_inf, 2.0, jnp.maximum(K, 1.0)).astype(dtype)
  Km1 = K_fin - 1.0
  log_K = jnp.log(K_fin)

  # Integration range in s = log u (see module docstring), with the spread clamped to what fits.
  spread = -jnp.min(jnp.where(support, rho, 0.0))
  delta_cap = _nodes_spread_cap(num_nodes, log_K)
  # Keep e^{-Δ} normal and u = e^{s_hi} finite in the working precision.
  delta_cap = jnp.minimum(delta_cap, _SPREAD_MAX_F32 if dtype == jnp.float32 else _SPREAD_MAX_F64)
  delta = jnp.minimum(spread, delta_cap)
  # clipped above too: an atom off the support may have any reward above r*; its weight is 0 anyway, but
  # e^{rho} would overflow and make E_p[a] = 0 * inf = NaN
  rho_c = jnp.clip(rho, -delta, 0.0)
  a = jnp.exp(rho_c)                                         # (0, 1]
  mean_a = jnp.sum(p * a)
  s_lo = -jnp.log1p(Km1 * mean_a) - _L
  s_hi = delta + jnp.minimum(jnp.log(_L + delta) - log_K, math.log(_L))
  s_hi = jnp.maximum(s_hi, s_lo + 1.0)
  h = (s_hi - s_lo) / (num_nodes - 1)
  s = s_lo + h * jnp.arange(num_nodes, dtype=dtype)
  u = jnp.exp(s)

  def block(u_c):
    """Contribution of a chunk of nodes u_c [c] to Σ_i h u_i e^{-u_i a_x} M(u_i)^{K-1}, shape [n]."""
    ua = a[:, None] * u_c[None, :]                           # [n, c]
    e = jnp.exp(-ua)
    m = p @ e                                                # M(u), [c]
    one_minus_m = p @ (-jnp.expm1(-ua))                      # 1 - M(u), accurate for small u
    log_m = jnp.where(m > 0.5, jnp.log1p(-one_minus_m),
                      jnp.log(jnp.maximum(m, jnp.finfo(dtype).tiny)))
    d = jnp.exp(Km1 * log_m)                                 # M^{K-1}
    return e @ (h * u_c * d)

  if n * num_nodes <= _SINGLE_BLOCK_ELEMENTS or num_nodes % _CHUNK:
    integral = block(u)
  else:
    def body(acc, u_c):
      return acc + block(u_c), None
    integral, _ = jax.lax.scan(body, jnp.zeros((n,), dtype), u.reshape(-1, _CHUNK))

  curated = jnp.where(support, p * K_fin * a * integral, 0.0)
  curated = curated / jnp.sum(curated)
  curated = jnp.where(K_fin == 1.0, p, curated)              # K = 1: identity, exactly
  return jnp.where(is_inf, tilt, curated)


# ----------------------------------------------------------------------------------------------------------
# Input validation.

#: Tolerance on ``|Σ p - 1|`` for probability vectors given in float64 (Python lists count as float64).
SUM_TOL_FLOAT64 = 1e-6
#: Tolerance on ``|Σ p - 1|`` for probability vectors in any other dtype (float32, float16, ints).
SUM_TOL = 1e-4


def _is_tracer(x: Any) -> bool:
  return isinstance(x, jax.core.Tracer)


def _hyper_array(x: Any, *like: Any) -> Any:
  """A concrete hyper-parameter (``K``, ``λ``, ``φ``, the real share) as an array of the engine's dtype for ``like``,
  so that the jitted kernels see one type whatever the caller passed (``2``, ``2.5``, ``np.int64(3)``, ``inf``):
  changing the value never recompiles. Tracers and None pass through."""
  return x if x is None or _is_tracer(x) else jnp.asarray(x, _dtype(*like))


def _shape(x: Any) -> tuple[int, ...]:
  return tuple(x.shape) if hasattr(x, "shape") else np.shape(x)


def _fmt(x: np.ndarray) -> str:
  """A short text form of a concrete value: ``0``, ``1.5``, ``[0.5, 0.6]`` (long vectors abridged)."""
  if x.ndim == 0:
    return repr(x.item())
  if x.size <= 8:
    return repr(x.tolist())
  return np.array2string(x, separator=", ", threshold=8, edgeitems=3, precision=6)


def _fail(name: str, value: np.ndarray, why: str) -> None:
  raise ValueError(f"invalid argument: {name}={_fmt(value)}: {why}")


def _require_scalars(**values: Any) -> None:
  """``K``, ``λ``, ``φ`` (and the real share) of one curation step or run are scalars (grids: ``exact_sweep``)."""
  for name, x in values.items():
    if x is not None and _shape(x) != ():
      raise ValueError(f"invalid argument: {name} has shape {_shape(x)}: expected a scalar (sweep a grid of "
                       "values with scl.exact_sweep, or jax.vmap)")


def _first_bad(name: str, x: np.ndarray, bad: np.ndarray) -> str:
  i = int(np.flatnonzero(bad)[0])
  return f"{name}[{i}]={x[i].item()!r}"


def validate(*, p: Any = None, p0: Any = None, p_data: Any = None, r: Any = None, r_tilde: Any = None,
             K: Any = None, lam: Any = None, phi: Any = None, iterations: Any = None,
             real_share: Any = None, num_nodes: Any = None) -> None:
  """Check the arguments of :func:`curate`, :func:`step`, :func:`run` (and of an exact sweep) before compute.

  Any subset of keywords may be given; ``None`` means "not given". Checks that need values are skipped for
  JAX tracers (under ``jit``/``vmap``); shapes are checked for tracers too.

  * ``p``, ``p0``, ``p_data`` (probability vectors, [n]): finite, ``>= 0`` and ``|Σ p - 1| <= tol`` with
    ``tol = 1e-6`` (:data:`SUM_TOL_FLOAT64`) for float64 input (and Python sequences) and ``tol = 1e-4``
    (:data:`SUM_TOL`) for any other dtype (float32 rounding of a normalised vector is far below both).
  * ``r``, ``r_tilde`` (rewards ``r``, ``r~``, [n]): finite.
  * every vector given: 1-D, non-empty, and all of the same shape.
  * ``K`` (candidates per choice): ``K >= 1`` or ``+inf``; not NaN.
  * ``lam`` (``λ``): ``λ >= 0`` (``inf`` allowed: fully synthetic); not NaN.
  * ``phi`` (``φ``, fraction of malicious users): in ``[0, 1]``.
  * ``real_share`` (``s = 1/(1+λ)``, :func:`step`): in ``[0, 1]``.
  * ``iterations``: a Python or numpy integer ``>= 0`` (not a bool).
  * ``num_nodes`` (quadrature nodes): a Python or numpy integer ``>= 2``. Where the rewards on the support of
    the given probability vectors spread further than the engine resolves (``Δ_cap`` of the module docstring,
    at the largest finite ``K``, and the precision's range) and the clamped atoms hold mass that matters at the
    engine's accuracy, a ``RuntimeWarning`` says so and how to resolve the spread (more nodes, or float64).

  ``K``, ``lam`` and ``phi`` may be scalars or 1-D sequences of grid values (as an exact sweep passes them);
  every value must be valid.

  Raises:
    ValueError: ``invalid argument: <name>=<value>: <reason>``, e.g.
      ``invalid argument: K=0: the number of candidates must be >= 1 (or inf)``.
  """
  vectors = [(name, x) for name, x in (("p", p), ("p0", p0), ("p_data", p_data), ("r", r),
                                       ("r_tilde", r_tilde)) if x is not None]
  ref = None
  for name, x in vectors:
    shape = _shape(x)
    if len(shape) != 1 or shape[0] == 0:
      raise ValueError(f"invalid argument: {name} has shape {shape}: expected a non-empty vector [n]")
    if ref is None:
      ref = (name, shape)
    elif shape != ref[1]:
      raise ValueError(f"invalid argument: {name} has shape {shape}, expected {ref[1]} (the shape of "
                       f"{ref[0]})")
    if _is_tracer(x):
      continue
    raw = np.asarray(x)
    if not (np.issubdtype(raw.dtype, np.floating) or np.issubdtype(raw.dtype, np.integer)):
      raise ValueError(f"invalid argument: {name} has dtype {raw.dtype}: expected real numbers")
    v = raw.astype(np.float64)
    if not np.all(np.isfinite(v)):
      _fail(name, v, f"must be finite ({_first_bad(name, v, ~np.isfinite(v))})")
    if name in ("p", "p0", "p_data"):
      if np.any(v < 0):
        _fail(name, v, f"probabilities must be >= 0 ({_first_bad(name, v, v < 0)})")
      tol = SUM_TOL_FLOAT64 if raw.dtype == np.float64 else SUM_TOL
      total = float(np.sum(v))
      if not abs(total - 1.0) <= tol:
        _fail(name, v, f"probabilities must sum to 1 (sum {total:.8g}, tolerance {tol:g})")

  grids = (("K", K, lambda v: ~(v >= 1), "the number of candidates must be >= 1 (or inf)"),
           ("lam", lam, lambda v: ~(v >= 0), "λ must be >= 0 (inf: fully synthetic)"),
           ("phi", phi, lambda v: ~((v >= 0) & (v <= 1)), "the fraction φ of malicious users must lie in [0, 1]"),
           ("real_share", real_share, lambda v: ~((v >= 0) & (v <= 1)),
            "the share of real data must lie in [0, 1] (1 / (1 + λ))"))
  for name, x, bad, why in grids:
    if x is None:
      continue
    if len(_shape(x)) > 1:
      raise ValueError(f"invalid argument: {name} has shape {_shape(x)}: expected a scalar or a "
                       "1-D sequence of grid values")
    if _is_tracer(x):
      continue
    raw = np.asarray(x)
    if raw.dtype == bool or not (np.issubdtype(raw.dtype, np.floating) or np.issubdtype(raw.dtype, np.integer)):
      _fail(name, raw, f"expected a real number, got dtype {raw.dtype}")
    if np.any(bad(raw.astype(np.float64))):          # NaN fails every comparison, so it is caught here too
      _fail(name, raw, why)

  if iterations is not None:
    if (isinstance(iterations, (bool, np.bool_)) or not isinstance(iterations, (int, np.integer))
        or iterations < 0):
      raise ValueError(f"invalid argument: iterations={iterations!r}: the number of iterations must be an "
                       "integer >= 0")

  if num_nodes is not None:
    if (isinstance(num_nodes, (bool, np.bool_)) or not isinstance(num_nodes, (int, np.integer))
        or num_nodes < 2):
      raise ValueError(f"invalid argument: num_nodes={num_nodes!r}: the number of quadrature nodes must be an "
                       "integer >= 2")
    _warn_if_spread_exceeds_nodes(int(num_nodes), [x for name, x in vectors if name.startswith("p")],
                                  [(name, x) for name, x in vectors if name.startswith("r")], K)


def _warn_if_spread_exceeds_nodes(num_nodes: int, probs: list, rewards: list, K: Any) -> None:
  """A RuntimeWarning where concrete rewards spread, on the probabilities' support, beyond what the engine resolves.

  The engine clamps rewards more than ``Δ_cap`` below the support's maximum, ``Δ_cap`` the smaller of the spread
  ``num_nodes`` resolve at the largest finite ``K`` and the working precision's range (75 in float32, 650 in
  float64). That loses the clamped atoms' order among themselves (an error of about ``m^K`` at the smallest
  finite ``K > 1``, ``m`` their mass under the most loaded probability vector) and, where ``Δ_cap`` is small, their
  odds against the rest (about ``K m e^{-Δ_cap}``). The warning fires where that estimate exceeds the engine's
  accuracy (1e-4 in float32, 1e-7 in float64); at ``K = 1`` and ``K = inf`` the engine clamps nothing.
  """
  if not probs or not rewards or any(_is_tracer(x) for x in [*probs, K] + [x for _, x in rewards]):
    return
  ps = [np.asarray(q, np.float64) for q in probs]
  support = np.any([q > 0 for q in ps], axis=0)
  ks = np.asarray(2.0 if K is None else K, np.float64).ravel()
  finite = ks[np.isfinite(ks) & (ks > 1.0)]
  if not finite.size:
    return
  k_min, k_max = float(finite.min()), float(finite.max())
  f64 = _dtype(*probs, *[x for _, x in rewards]) == jnp.float64
  range_cap = _SPREAD_MAX_F64 if f64 else _SPREAD_MAX_F32
  nodes_cap = float(_nodes_spread_cap(num_nodes, math.log(k_max)))
  cap = min(nodes_cap, range_cap)
  tol = 1e-7 if f64 else 1e-4
  for name, x in rewards:
    v = np.where(support, np.asarray(x, np.float64), -np.inf)
    top = float(v.max())
    clamped = support & (v < top - cap)
    if not clamped.any():
      continue
    mass = max(float(q[clamped].sum()) for q in ps)
    if mass ** k_min + k_max * mass * math.exp(-cap) <= tol:
      continue
    spread = top - float(v[support].min())
    if nodes_cap <= range_cap:
      need = math.ceil((spread + _L + math.log(_L) + math.log(k_max)) / _H_MAX) + 1
      fix = (f"raise num_nodes (to about {need})" if spread <= range_cap else
             f"no node count resolves a spread beyond {range_cap:g} in this precision")
    else:
      fix = ("float32 resolves at most 75: use float64 inputs with jax_enable_x64" if spread <= _SPREAD_MAX_F64
             else "no node count resolves a spread beyond 650")
    warnings.warn(f"num_nodes={num_nodes} resolves a reward spread of {cap:.3g} at K={k_max:g} in "
                  f"{'float64' if f64 else 'float32'}, but {name} spreads {spread:.3g} on the support and the atoms "
                  f"more than {cap:.3g} below its maximum hold mass {mass:.3g}: they are clamped to that level, so "
                  f"their curation weights are not exact; {fix}", RuntimeWarning, stacklevel=4)
    return


# ----------------------------------------------------------------------------------------------------------
# Curation and the loop.


@functools.partial(jax.jit, static_argnames=("num_nodes",))
def _curate(p: Array, r: Array, K: Any, r_tilde: Array | None = None, phi: Any = 0.0, *,
            num_nodes: int = NUM_NODES) -> Array:
  """:func:`curate` without validation (jitted; traced inputs are fine): the kernel internal callers use."""
  dtype = _dtype(p, r)
  p = jnp.asarray(p, dtype)
  r = jnp.asarray(r, dtype)
  chex.assert_rank(p, 1)
  chex.assert_equal_shape([p, r])
  K = jnp.asarray(K, dtype)
  benign = _curation_weight(p, r, K, num_nodes)
  if r_tilde is None:
    return benign
  r_tilde = jnp.asarray(r_tilde, dtype)
  chex.assert_equal_shape([p, r_tilde])
  phi = jnp.asarray(phi, dtype)
  adversarial = _curation_weight(p, r_tilde, K, num_nodes)
  return (1.0 - phi) * benign + phi * adversarial


def curate(p: Array, r: Array, K: Any, r_tilde: Array | None = None, phi: Any = 0.0, *,
           num_nodes: int = NUM_NODES) -> Array:
  """One curation step ``p * H_K(p)`` (Bradley–Terry choice of 1 among ``K`` candidates).

  Concrete arguments are checked by :func:`validate` first (traced ones, under ``jit``/``vmap``, are not);
  the computation itself is jitted.

  Args:
    p: [n] probability vector ``p_t``.
    r: [n] users' reward ``r`` on the atoms (any magnitude; shift invariant).
    K: number of candidates ``K`` (traced; real ``>= 1`` or ``inf`` for the ``e^r`` tilt).
    r_tilde: optional [n] adversarial reward ``r~``; with it the result is
      ``p * ((1-φ) H_K^r + φ H_K^{r~})``. Without it ``phi`` is ignored.
    phi: fraction ``φ`` of malicious users (traced), in ``[0, 1]``.
    num_nodes: static number of quadrature nodes (see module docstring).
  Returns:
    [n] probability vector (same float dtype as ``p``).
  Raises:
    ValueError: for invalid concrete inputs (see :func:`validate`).
  """
  _require_scalars(K=K, phi=phi)
  validate(p=p, r=r, K=K, r_tilde=r_tilde, phi=phi, num_nodes=num_nodes)
  return _curate(p, r, _hyper_array(K, p, r), r_tilde, _hyper_array(phi, p, r), num_nodes=num_nodes)


def _step(p: Array, r: Array, K: Any, real_share: Any, p_data: Array, r_tilde: Array | None, phi: Any,
          num_nodes: int) -> Array:
  curated = _curate(p, r, K, r_tilde, phi, num_nodes=num_nodes)
  return real_share * p_data + (1.0 - real_share) * curated


def step(p: Array, r: Array, K: Any, real_share: Any, p_data: Array, r_tilde: Array | None = None,
         phi: Any = 0.0, *, num_nodes: int = NUM_NODES) -> Array:
  """``p_{t+1} = s p_data + (1 - s) curate(p_t)`` with the real share ``s = 1/(1+λ)``; shapes [n].

  Concrete ``p``, ``r``, ``K``, ``p_data``, ``r_tilde`` (``r~``), ``phi`` are checked by :func:`validate`, and
  ``real_share`` must lie in ``[0, 1]``; ``K``, ``real_share`` and ``phi`` are scalars.
  """
  _require_scalars(K=K, real_share=real_share, phi=phi)
  validate(p=p, r=r, K=K, p_data=p_data, r_tilde=r_tilde, phi=phi, real_share=real_share, num_nodes=num_nodes)
  return _step(p, r, _hyper_array(K, p, r), _hyper_array(real_share, p, r), p_data, r_tilde,
               _hyper_array(phi, p, r), num_nodes)


def distribution_metrics(p: Array, r: Array, p_data: Array) -> dict[str, Array]:
  """Reward statistics of one probability vector ``p`` [n]; every value a scalar.

  Keys: ``expected_reward`` (E_p[r]), ``reward_var`` (Var_p[r]), ``log_exp_reward`` (log E_p[e^r], by
  logsumexp), ``exp_reward`` (E_p[e^r]; may overflow for huge rewards, the log does not), ``kl_to_data``
  (KL(p || p_data), with 0 log 0 = 0), ``entropy``.
  """
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
  return dict(metrics_lib.reward_moments(r, p), kl_to_data=metrics_lib.kl(p, p_data), entropy=entropy)


def _default_rtol(dtype) -> float:
  """Numerical accuracy of this engine, used as the tolerance of the theorem monitors."""
  return 1e-6 if jnp.dtype(dtype) == jnp.float64 else 2e-4


def _p0_is_data(p0: Array, p_data: Array, rtol: float) -> Array:
  """Whether ``p_0 = p_data`` up to ``rtol`` relative per atom (traced; Thm 2.3/2.4 assume it)."""
  return jnp.all(jnp.abs(p0 - p_data) <= rtol * jnp.maximum(p0, p_data))


def _run(p0: Array, r: Array, K: Any, lam: Any, p_data: Array | None, r_tilde: Array | None, phi: Any,
         iterations: int, num_nodes: int) -> tuple[Array, dict[str, Array]]:
  """:func:`run` without validation (traced inputs are fine; positional, for internal callers)."""
  dtype = _dtype(p0, r)
  p0 = jnp.asarray(p0, dtype)
  r = jnp.asarray(r, dtype)
  chex.assert_rank(p0, 1)
  chex.assert_equal_shape([p0, r])
  rtol = _default_rtol(dtype)
  if p_data is None:
    p_data, p0_is_data = p0, jnp.asarray(True)
  else:
    p_data = jnp.asarray(p_data, dtype)
    chex.assert_equal_shape([p0, p_data])
    p0_is_data = _p0_is_data(p0, p_data, rtol)
  if r_tilde is not None:
    r_tilde = jnp.asarray(r_tilde, dtype)
    chex.assert_equal_shape([p0, r_tilde])
  K = jnp.asarray(K, dtype)
  share = real_share(jnp.asarray(lam, dtype)).astype(dtype)
  phi = jnp.asarray(phi, dtype)

  support = (p0 > 0) | (p_data > 0)  # every p_t's support lies in it: the monitors' shifts r*, r~max stay fixed

  def body(carry, _):
    p, cov_min = carry
    p_next = _step(p, r, K, share, p_data, r_tilde, phi, num_nodes)
    row = distribution_metrics(p_next, r, p_data)
    row.update(theory.monitors(p, p_next, r, K, share, p_data, r_tilde, phi, p0_is_data=p0_is_data,
                               cov_min_prev=cov_min, rtol=rtol, support=support))
    return (p_next, row["lemma34_cov_min_scaled"]), (p_next, row)

  init = (p0, jnp.full((), jnp.inf, dtype))       # no covariance seen yet: the running minimum is +inf
  _, (ps, rows) = jax.lax.scan(body, init, None, length=iterations)
  first = distribution_metrics(p0, r, p_data)
  # Row 0 has no transition: the monitors there are NaN (they describe the step p_{t-1} -> p_t).
  first = {**{k: jnp.full((), jnp.nan, v.dtype) for k, v in rows.items()}, **first}
  trajectory = jnp.concatenate([p0[None], ps], axis=0)
  metrics = {k: jnp.concatenate([jnp.asarray(first[k], rows[k].dtype)[None], rows[k]]) for k in rows}
  return trajectory, metrics


_run_jit = jax.jit(_run, static_argnames=("iterations", "num_nodes"))


def run(p0: Array, r: Array, K: Any, lam: Any, p_data: Array | None = None, *, iterations: int,
        r_tilde: Array | None = None, phi: Any = 0.0,
        num_nodes: int = NUM_NODES) -> tuple[Array, dict[str, Array]]:
  """Scan the exact loop ``p_{t+1} = 1/(1+λ) p_data + λ/(1+λ) curate(p_t)`` for ``T = iterations`` steps.

  ``K`` (``inf`` allowed), ``lam`` (``λ``; ``inf`` is fully synthetic) and ``phi`` (``φ``) are traced: changing
  them does not recompile, and ``jax.vmap`` over them sweeps a grid. ``iterations`` and ``num_nodes`` are static.
  Concrete arguments are checked by :func:`validate` before anything is computed.

  Args:
    p0: [n] initial model ``p_0``.
    r: [n] users' reward ``r``.
    K: candidates per choice, ``>= 1`` or ``inf``.
    lam: ``λ >= 0``, weight of curated synthetic data against real data.
    p_data: [n] real data distribution (default ``p0``).
    iterations: ``T >= 0``.
    r_tilde: optional [n] adversarial reward ``r~`` of the malicious users.
    phi: fraction ``φ`` in ``[0, 1]`` of malicious users (ignored without ``r_tilde``).
    num_nodes: static number of quadrature nodes.
  Returns:
    ``(trajectory, metrics)``: ``trajectory`` [T+1, n] holds ``p_0 .. p_T``; ``metrics`` maps names to [T+1]
    arrays: the statistics of :func:`distribution_metrics` of ``p_t`` and the theorem monitors of
    :func:`scl.theory.monitors` for the step ``p_{t-1} -> p_t`` (NaN in row 0), so ``lemma22_rhs[t]`` bounds
    ``exp_reward[t]`` and ``thm24_rhs[t]`` bounds ``kl_to_data[t]``. The ``thm23_*``/``thm24_*`` monitors are
    NaN (not applicable) unless ``p_0 = p_data`` (per atom, within the engine's accuracy: 1e-6 relative in
    float64, 2e-4 in float32). ``lemma34_*`` uses the running minimum of ``Cov_{p_j}[e^r, e^{r~}]`` over
    ``j = 0 .. t-1``; Lemma 3.4 is asymptotic, so its last row (at convergence) is the meaningful one.
  Raises:
    ValueError: for invalid concrete inputs (see :func:`validate`).
  """
  _require_scalars(K=K, lam=lam, phi=phi)
  validate(p0=p0, r=r, K=K, lam=lam, phi=phi, p_data=p_data, r_tilde=r_tilde, iterations=iterations,
           num_nodes=num_nodes)
  return _run_jit(p0, r, _hyper_array(K, p0, r), _hyper_array(lam, p0, r), p_data, r_tilde,
                  _hyper_array(phi, p0, r), iterations, num_nodes)
