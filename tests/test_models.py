"""The model interface's log densities against independent computations (scipy, the probability vector)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from scl import models


def test_gmm_log_prob_matches_scipy_mixture_density():
  rng = np.random.default_rng(0)
  x = np.concatenate([rng.normal(-2.0, 0.3, (300, 2)), rng.normal(2.0, 0.5, (300, 2))]).astype(np.float32)
  model = models.make_gmm((2,), n_components=2, em_steps=20)
  params = model.init(jax.random.PRNGKey(0), jnp.asarray(x), jnp.full((600,), 1 / 600))
  weights = np.asarray(jax.nn.softmax(params["logits"]), np.float64)
  chol = np.asarray(params["chol"], np.float64)
  density = sum(w * stats.multivariate_normal(m, c @ c.T).pdf(x[:50])
                for w, m, c in zip(weights, np.asarray(params["means"], np.float64), chol))
  np.testing.assert_allclose(np.asarray(model.log_prob(params, jnp.asarray(x[:50]))), np.log(density),
                             rtol=1e-4, atol=1e-4)


def test_gmm_fit_is_finite_and_equivariant_under_a_change_of_units():
  """Data on a line (a singular covariance) beside a blob, in units 1, 1e3 and 1e-3: every fit is finite, and
  the mean log density moves by -d log(scale), the change of variables (an absolute jitter of 1e-6 gave NaN
  at scale 1e3: float32 lost it beside covariances of order 1e6)."""
  rng = np.random.default_rng(0)
  t = rng.normal(size=4000)
  x = np.concatenate([np.stack([t, 2 * t + 1], 1), rng.normal(size=(4000, 2)) + 5]).astype(np.float32)
  w = jnp.full((x.shape[0],), 1.0 / x.shape[0])
  model = models.make_gmm((2,), n_components=4, em_steps=30)
  mean_log_prob = {}
  for scale in (1.0, 1e3, 1e-3):
    xs = jnp.asarray(x * np.float32(scale))
    params = jax.jit(model.init)(jax.random.PRNGKey(0), xs, w)
    params = jax.jit(model.fit)(params, None, xs, w, None)
    lp = np.asarray(model.log_prob(params, xs))
    assert np.all(np.isfinite(lp)) and np.all(np.isfinite(np.asarray(model.sample(params, jax.random.key(1), 100))))
    mean_log_prob[scale] = lp.mean() + 2 * np.log(scale)
  np.testing.assert_allclose(mean_log_prob[1e3], mean_log_prob[1.0], atol=0.05)
  np.testing.assert_allclose(mean_log_prob[1e-3], mean_log_prob[1.0], atol=0.05)


def test_categorical_log_prob_is_the_log_of_the_fitted_histogram():
  model = models.make_categorical(4)
  w = jnp.asarray([0.1, 0.2, 0.3, 0.4])
  params = model.init(jax.random.PRNGKey(0), jnp.arange(4), w)
  np.testing.assert_allclose(np.exp(model.log_prob(params, jnp.arange(4))), w, rtol=1e-6)
  np.testing.assert_allclose(model.probs(params), w, rtol=1e-6)


def test_categorical_fit_on_weights_without_mass_keeps_the_model_instead_of_nan():
  model = models.make_categorical(4)
  w = jnp.asarray([0.1, 0.2, 0.3, 0.4])
  params = model.init(jax.random.PRNGKey(0), jnp.arange(4), w)
  kept = model.fit(params, None, jnp.arange(4), jnp.zeros(4), None)
  np.testing.assert_array_equal(kept["logits"], params["logits"])  # was log(0 / 0) = NaN: every draw atom 3
  np.testing.assert_allclose(model.probs(model.init(None, jnp.arange(4), jnp.zeros(4))), 0.25, rtol=1e-6)


def _half_zero_weights(n=4096, seed=0):
  rng = np.random.default_rng(seed)
  w = rng.random(n).astype(np.float32)
  w[rng.random(n) < 0.5] = 0.0
  return w / w.sum()


def test_inverse_cdf_table_gives_entries_of_weight_zero_no_interval():
  """A float32 ``cumsum`` (XLA's tree order) raised the total by an ulp at 28 of these 2,030 zero weights."""
  from scl.models.base import inverse_cdf_table
  w = _half_zero_weights()
  table = np.asarray(jax.jit(inverse_cdf_table)(jnp.asarray(w)))
  steps = np.diff(table, prepend=0.0)
  assert np.all(steps[w == 0] == 0.0) and np.all(steps >= 0)
  np.testing.assert_allclose(table, np.cumsum(w.astype(np.float64)), atol=1e-6)
  # Every u in [0, total) lands on an entry of positive weight, the interval ends included.
  u = np.concatenate([table[:-1], np.nextafter(table[:-1], np.float32(0)), [0.0]]).astype(np.float32)
  idx = np.minimum(np.searchsorted(table, u, side="right"), len(w) - 1)
  assert np.all(w[idx] > 0)


def test_categorical_never_draws_an_atom_without_mass():
  w = _half_zero_weights()
  m = models.make_categorical(w.shape[0])
  params = m.init(None, jnp.arange(w.shape[0]), jnp.asarray(w))
  p = np.asarray(m.probs(params))
  draws = np.asarray(jax.jit(m.sample, static_argnums=2)(params, jax.random.PRNGKey(0), 1_000_000))
  assert np.all(p[draws] > 0)
  # ... and draws the others by their mass (chi-square over the atoms with mass, p-value > 1e-4).
  counts = np.bincount(draws, minlength=w.shape[0])[p > 0]
  assert stats.chisquare(counts, p[p > 0] / p[p > 0].sum() * counts.sum()).pvalue > 1e-4


def test_flow_fit_ignores_points_of_weight_zero():
  """A pool sample the curation dropped (weight 0) must not reach a minibatch: its coordinates, even NaN, leave
  the fit unchanged bit for bit (it reached 8 of 1,250,000 minibatch rows before, and a NaN made the fit NaN)."""
  from scl.hyper import Hyper
  rng = np.random.default_rng(0)
  n_real, pool = 1000, 50_000
  x = rng.normal(size=(n_real + pool, 2)).astype(np.float32)
  w_pool = np.where(rng.random(pool) < 0.5, 0.0, rng.random(pool)).astype(np.float32)
  w = np.concatenate([np.full(n_real, 0.2 / n_real, np.float32), 0.8 * w_pool / w_pool.sum()])
  model = models.make_flow(width=16, depth=1, batch_size=1000, train_steps=400, init_steps=20, sample_steps=2)
  params = jax.jit(model.init)(jax.random.PRNGKey(1), jnp.asarray(x[:n_real]), jnp.full(n_real, 1 / n_real))
  fit = jax.jit(model.fit)
  fits = []
  for fill in (0.0, 1e3, np.nan):
    xf = x.copy()
    xf[w == 0] = fill
    fits.append(fit(params, jax.random.PRNGKey(2), jnp.asarray(xf), jnp.asarray(w), Hyper.defaults().arrays()))
  for other in fits[1:]:
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), fits[0], other)
