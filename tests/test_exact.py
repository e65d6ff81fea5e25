"""Tests of scl.exact against independent computations: brute-force enumeration of all K-tuples, adaptive
scipy quadrature of the integral form, the closed-form tilt, and a numpy re-implementation of the loop."""

import itertools
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from scl import exact


# ----------------------------------------------------------------------------- independent references


def brute_force(p, r, K):
  """p * H_K(p) by enumerating all n^K candidate tuples and the Luce choice among them (float64 numpy)."""
  p, r = np.asarray(p, np.float64), np.asarray(r, np.float64)
  n = len(p)
  out = np.zeros(n)
  for tup in itertools.product(range(n), repeat=K):
    idx = list(tup)
    weight = np.prod(p[idx])
    if weight == 0:
      continue
    e = np.exp(r[idx] - r[idx].max())
    np.add.at(out, idx, weight * e / e.sum())
  return out


def scipy_reference(p, r, K):
  """p * H_K(p) by adaptive scipy quadrature of K a_x ∫ exp(s + ρ_x - e^{s+ρ_x}) M(e^s)^{K-1} ds."""
  p, r = np.asarray(p, np.float64), np.asarray(r, np.float64)
  sup = p > 0
  rho = r - r[sup].max()
  a = np.exp(rho)

  def log_m(u):
    v = np.log(p[sup]) - u * a[sup]
    top = v.max()
    return top + np.log(np.exp(v - top).sum())

  out = np.zeros(len(p))
  lo, hi = -np.log(K) - 45.0, -rho[sup].min() + 6.0
  knots = np.linspace(lo, hi, 150)
  for x in np.flatnonzero(sup):
    f = lambda s: np.exp(np.log(K) + rho[x] + s - np.exp(s + rho[x]) + (K - 1) * log_m(np.exp(s)))
    out[x] = p[x] * sum(integrate.quad(f, knots[i], knots[i + 1], epsabs=0, epsrel=1e-12, limit=100)[0]
                        for i in range(len(knots) - 1))
  return out / out.sum()


def tilt(p, r):
  w = np.asarray(p, np.float64) * np.exp(np.asarray(r, np.float64) - np.max(r))
  return w / w.sum()


def numpy_loop(p0, r, K, lam, p_data, iterations):
  share = 0.0 if np.isinf(lam) else 1.0 / (1.0 + lam)
  ps = [np.asarray(p0, np.float64)]
  for _ in range(iterations):
    ps.append(share * p_data + (1 - share) * brute_force(ps[-1], r, K))
  return np.stack(ps)


def rel_err(x, ref):
  x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
  mask = ref > 0
  assert np.all(x[~mask] == 0)
  return np.max(np.abs(x[mask] - ref[mask]) / ref[mask])


def random_instance(rng, n, spread, sparse=False):
  p = rng.dirichlet(np.full(n, 0.7))
  if sparse:
    p[rng.integers(n)] = 0.0
    p /= p.sum()
  r = rng.uniform(0.0, spread, n)
  # Round to float32 so float32 runs see the same inputs as the float64 reference.
  return p.astype(np.float32).astype(np.float64), r.astype(np.float32).astype(np.float64)


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


# ----------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize("n,K", [(2, 2), (4, 3), (5, 4), (6, 4), (6, 3)])
@pytest.mark.parametrize("spread", [1.0, 50.0])
def test_brute_force_float64(x64, n, K, spread):
  rng = np.random.default_rng(100 * n + K + int(spread))
  for sparse in (False, True):
    p, r = random_instance(rng, n, spread, sparse=sparse and n > 2)
    got = exact.curate(jnp.asarray(p), jnp.asarray(r), K)
    assert got.dtype == jnp.float64
    assert rel_err(got, brute_force(p, r, K)) < 1e-6


@pytest.mark.parametrize("K", [16.0, 64.0, 4096.0, 7.3, 1.5])
def test_scipy_reference_float64(x64, K):
  """Large and non-integer K (no enumeration possible) against adaptive quadrature, rewards spanning 0..50."""
  rng = np.random.default_rng(int(K * 10))
  p, r = random_instance(rng, 7, 50.0)
  r[0], r[1] = 0.0, 50.0
  got = exact.curate(jnp.asarray(p), jnp.asarray(r), K)
  assert rel_err(got, scipy_reference(p, r, K)) < 1e-6


@pytest.mark.parametrize("n,K,spread", [(5, 4, 20.0), (6, 3, 50.0), (4, 2, 0.5)])
def test_float32_vs_brute_force(n, K, spread):
  rng = np.random.default_rng(n * K)
  p, r = random_instance(rng, n, spread)
  got = exact.curate(jnp.asarray(p, jnp.float32), jnp.asarray(r, jnp.float32), K)
  assert got.dtype == jnp.float32
  assert rel_err(got, brute_force(p, r, K)) < 1e-4


@pytest.mark.parametrize("K", [64.0, 4096.0, 3.5])
def test_float32_vs_scipy(K):
  rng = np.random.default_rng(7)
  p, r = random_instance(rng, 6, 50.0)
  got = exact.curate(jnp.asarray(p, jnp.float32), jnp.asarray(r, jnp.float32), K)
  assert rel_err(got, scipy_reference(p, r, K)) < 1e-4


# ----------------------------------------------------------------------------- structure


def test_k1_is_identity_and_inf_is_tilt():
  rng = np.random.default_rng(0)
  p, r = random_instance(rng, 9, 10.0)
  np.testing.assert_allclose(exact.curate(p, r, 1), p, rtol=1e-6)
  np.testing.assert_allclose(exact.curate(p, r, jnp.inf), tilt(p, r), rtol=1e-5)


def test_large_k_approaches_tilt(x64):
  rng = np.random.default_rng(1)
  p, r = random_instance(rng, 8, 5.0)
  errs = [rel_err(exact.curate(jnp.asarray(p), jnp.asarray(r), K), tilt(p, r)) for K in (16, 256, 4096, 1e6)]
  assert all(e1 > e2 for e1, e2 in zip(errs, errs[1:]))      # monotone approach
  assert errs[-1] < 1e-3


def test_probability_vector_and_support():
  rng = np.random.default_rng(2)
  p, r = random_instance(rng, 50, 30.0)
  p[::7] = 0.0
  p /= p.sum()
  for K in (1.0, 2.0, 3.7, 64.0, jnp.inf):
    q = np.asarray(exact.curate(jnp.asarray(p, jnp.float32), jnp.asarray(r, jnp.float32), K))
    assert np.all(q >= 0) and np.all(q[p == 0] == 0)
    np.testing.assert_allclose(q.sum(), 1.0, atol=1e-6)


def test_shift_invariance():
  rng = np.random.default_rng(3)
  p, r = random_instance(rng, 12, 10.0)
  r = np.round(r * 64) / 64          # shifted rewards stay exactly representable in float32
  for K in (2.0, 16.0, jnp.inf):
    base = exact.curate(p, r, K)
    for shift in (-300.0, 37.0, 5000.0):
      np.testing.assert_allclose(exact.curate(p, r + shift, K), base, rtol=1e-6, atol=1e-9)


def test_huge_rewards_are_finite_and_match_brute_force_when_spread_is_small(x64):
  rng = np.random.default_rng(4)
  p, r = random_instance(rng, 5, 6.0)
  got = exact.curate(jnp.asarray(p), jnp.asarray(r + 1e4), 3)
  assert rel_err(got, brute_force(p, r, 3)) < 1e-6
  # A spread of 1e4: far-below atoms are clamped (a RuntimeWarning says so at finite K: they hold mass), results
  # stay finite, normalised and ordered.
  r_wide = np.linspace(0.0, 1e4, 20)
  for dtype in (jnp.float32, jnp.float64):
    for K in (2.0, 64.0, jnp.inf):
      with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = np.asarray(exact.curate(jnp.full(20, 0.05, dtype), jnp.asarray(r_wide, dtype), K))
      assert any("clamped" in str(w.message) for w in caught) == (not np.isinf(K))
      assert np.all(np.isfinite(q)) and abs(q.sum() - 1) < 1e-5
      assert q.argmax() == 19


def test_atoms_off_the_support_with_any_reward_do_not_matter():
  """A zero-mass atom may carry a reward far above every supported one (the overflow of e^{r - r*} once made
  every weight NaN): the result is the curation of the supported atoms alone, against the enumeration of
  every candidate tuple (which never draws a zero-mass atom)."""
  p = np.array([0.3, 0.0, 0.2, 0.0, 0.5])
  r = np.array([0.0, 1e6, 1.0, 150.0, 2.0])
  K = 4
  want = brute_force(p, r, K)
  for dtype in (jnp.float32, jnp.float64):
    if dtype == jnp.float64 and not jax.config.jax_enable_x64:
      continue
    got = np.asarray(exact.curate(jnp.asarray(p, dtype), jnp.asarray(r, dtype), K))
    np.testing.assert_allclose(got, want, atol=2e-6)
  with pytest.warns(RuntimeWarning, match="clamped"):  # p_data puts mass on the 1e6 atom: a spread of 1e6
    traj, metrics = exact.run(jnp.asarray(p, jnp.float32), jnp.asarray(r, jnp.float32), K=K, lam=1.0,
                              p_data=jnp.full(5, 0.2, jnp.float32), iterations=3)
  assert np.all(np.isfinite(np.asarray(traj))) and np.all(np.isfinite(np.asarray(metrics["expected_reward"])))


def test_mixed_users_brute_force(x64):
  rng = np.random.default_rng(5)
  p, r = random_instance(rng, 5, 4.0)
  r_tilde = -r + rng.normal(size=5)
  for phi in (0.0, 0.3, 1.0):
    got = exact.curate(jnp.asarray(p), jnp.asarray(r), 3, r_tilde=jnp.asarray(r_tilde), phi=phi)
    want = (1 - phi) * brute_force(p, r, 3) + phi * brute_force(p, r_tilde, 3)
    assert rel_err(got, want) < 1e-6


# ----------------------------------------------------------------------------- the loop


def test_run_matches_numpy_loop(x64):
  rng = np.random.default_rng(6)
  p0, r = random_instance(rng, 5, 3.0)
  p_data = rng.dirichlet(np.ones(5))
  for lam in (0.5, np.inf):
    traj, metrics = exact.run(jnp.asarray(p0), jnp.asarray(r), 3, lam, jnp.asarray(p_data), iterations=4)
    want = numpy_loop(p0, r, 3, lam, p_data, 4)
    chex.assert_shape(traj, (5, 5))
    assert rel_err(traj, want) < 1e-6
    for t in range(5):
      q = np.asarray(traj[t])   # metric formulas checked on the engine's p_t (its accuracy is checked above)
      np.testing.assert_allclose(metrics["expected_reward"][t], (q * r).sum(), rtol=1e-9)
      np.testing.assert_allclose(metrics["reward_var"][t], (q * r ** 2).sum() - (q * r).sum() ** 2,
                                 rtol=1e-7)   # p0 sums to 1 only up to 1e-8
      np.testing.assert_allclose(metrics["exp_reward"][t], (q * np.exp(r)).sum(), rtol=1e-9)
      np.testing.assert_allclose(metrics["log_exp_reward"][t], np.log((q * np.exp(r)).sum()), rtol=1e-9)
      np.testing.assert_allclose(metrics["kl_to_data"][t], (q * np.log(q / p_data)).sum(), rtol=1e-9,
                                 atol=1e-14)


def test_run_metrics_shapes_and_default_p_data():
  p0 = jnp.full(10, 0.1)
  r = 10.0 - jnp.arange(10.0)
  traj, metrics = exact.run(p0, r, 4, 1.0, iterations=6, r_tilde=-r, phi=0.2)
  chex.assert_shape(traj, (7, 10))
  for key in ("expected_reward", "reward_var", "exp_reward", "log_exp_reward", "kl_to_data", "lemma22_rhs",
              "lemma22_holds", "thm23_rhs", "thm23_holds", "thm24_rhs", "thm24_holds", "cov_r_rtilde", "g_var",
              "g_cov", "lemma33_rhs", "lemma33_holds"):
    chex.assert_shape(metrics[key], (7,))
  assert float(metrics["kl_to_data"][0]) == 0.0           # p_data defaults to p0
  assert np.isnan(metrics["lemma33_holds"][0])            # no transition into row 0


def test_k_lam_phi_are_traced_no_recompile():
  fn = jax.jit(chex.assert_max_traces(exact._run, n=1), static_argnames=("iterations", "num_nodes"))
  p0 = jnp.full(6, 1 / 6)
  r = jnp.arange(6.0)
  for K, lam, phi in [(2, 1.0, 0.0), (4.0, jnp.inf, 0.3), (jnp.inf, 0.25, 1.0), (1.0, 0.0, 0.5)]:
    traj, _ = fn(p0, r, jnp.float32(K), jnp.float32(lam), None, -r, jnp.float32(phi), 3, 64)
    assert np.all(np.isfinite(traj))
  chex.clear_trace_counter()


def test_public_run_and_curate_compile_once_whatever_the_hyper_parameters_python_type():
  """``scl.exact.run(K=2)`` and ``run(K=2.5)`` (a weak int and a weak float), numpy scalars and jnp arrays all
  reach the jitted kernel as one type: sweeping K, λ, φ in a Python loop compiles once (it compiled six times)."""
  p0, r = np.full(5, 0.2), np.linspace(0.0, 2.0, 5)
  before = exact._run_jit._cache_size()
  values = [(2, 1.0, 0.0), (3, 1, 0.5), (2.5, 0, 1), (np.inf, np.inf, 0.25), (np.int64(5), 2.0, np.float32(0.1)),
            (np.float32(3.0), np.float64(0.5), 0), (jnp.asarray(3.0), jnp.asarray(1.0), jnp.asarray(0.2))]
  for K, lam, phi in values:
    exact.run(p0, r, K, lam, iterations=7, r_tilde=-r, phi=phi)
  assert exact._run_jit._cache_size() - before <= 1
  before = exact._curate._cache_size()
  for K, _, phi in values:
    exact.curate(p0, r, K, r_tilde=-r, phi=phi, num_nodes=64)
  assert exact._curate._cache_size() - before <= 1


def test_vmap_over_grid():
  p0 = jnp.full(6, 1 / 6)
  r = jnp.arange(6.0)
  Ks = jnp.array([1.0, 2.0, 16.0, jnp.inf])
  traj, metrics = jax.vmap(lambda K: exact.run(p0, r, K, jnp.inf, iterations=3))(Ks)
  chex.assert_shape(traj, (4, 4, 6))
  # Larger K curates harder: the expected reward after one step increases with K.
  assert np.all(np.diff(np.asarray(metrics["expected_reward"][:, 1])) > 0)
