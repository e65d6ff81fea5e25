"""Tests of the flow-matching model against closed forms of the training distribution.

The networks here are small (width 64, depth 2, a few hundred Adam steps) so the file runs in well under a
minute on 2 CPU cores; tolerances are stated next to each check as a sampling (binomial / normal) part plus
a slack for the model's own fitting error.
"""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scl.models import flow as flow_lib
from scl.models.flow import VelocityMLP, make_flow
from scl.hyper import Hyper

SMALL = dict(width=64, depth=2, batch_size=256, sample_steps=40)


def _hyper(lr):
  return Hyper.defaults(lr=lr).arrays()


def _uniform(n):
  return jnp.full((n,), 1.0 / n, jnp.float32)


@pytest.fixture(scope="module")
def clusters():
  """Three clusters of 1000 points each, centres (-2, 0), (2, 0), (0, 3), std 0.1, weights 0.8/0.2/0."""
  centres = jnp.array([[-2.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
  x = centres.repeat(1000, axis=0) + 0.1 * jax.random.normal(jax.random.PRNGKey(0), (3000, 2))
  w = jnp.concatenate([jnp.full((1000,), 0.8), jnp.full((1000,), 0.2), jnp.zeros((1000,))]) / 1000.0
  return centres, x, w


def test_weighted_clusters_fractions(clusters):
  """Samples land near each cluster in proportion to its total weight (0.8 / 0.2 / 0)."""
  centres, x, w = clusters
  model = make_flow(init_steps=600, **SMALL)
  params = jax.jit(model.init)(jax.random.PRNGKey(1), x, w)
  n = 4000
  y = jax.jit(model.sample, static_argnums=2)(params, jax.random.PRNGKey(2), n)
  chex.assert_shape(y, (n, 2))
  assert bool(jnp.all(jnp.isfinite(y)))
  nearest = jnp.argmin(jnp.linalg.norm(y[:, None, :] - centres[None], axis=-1), axis=1)
  frac = np.bincount(np.asarray(nearest), minlength=3) / n
  # Binomial sd of a fraction 0.8 over 4000 samples is 0.0063: allow 4 sd (0.025) plus 0.03 model slack.
  tol = 4 * np.sqrt(0.8 * 0.2 / n) + 0.03
  np.testing.assert_allclose(frac[:2], [0.8, 0.2], atol=tol)
  # The weight-0 cluster is never drawn into a minibatch; a few stray samples between modes may be nearest.
  assert frac[2] < 0.01
  # Most samples sit within 0.5 (5 std) of a cluster centre.
  dist = jnp.min(jnp.linalg.norm(y[:, None, :] - centres[None], axis=-1), axis=1)
  assert float(jnp.mean(dist < 0.5)) > 0.9


@pytest.fixture(scope="module")
def gaussian_fit():
  """A correlated Gaussian, and a flow trained on it."""
  mean = jnp.array([1.0, -2.0])
  cov = jnp.array([[1.0, 0.6], [0.6, 0.5]])
  chol = jnp.linalg.cholesky(cov)
  x = mean + jax.random.normal(jax.random.PRNGKey(3), (4000, 2)) @ chol.T
  model = make_flow(init_steps=500, train_steps=300, **SMALL)
  params = jax.jit(model.init)(jax.random.PRNGKey(4), x, _uniform(4000))
  return model, params, mean, cov, x


def test_gaussian_mean_and_covariance(gaussian_fit):
  """Mean and covariance of the samples match N(mean, cov) and the training set's own moments."""
  model, params, mean, cov, x = gaussian_fit
  n = 8000
  y = jax.jit(model.sample, static_argnums=2)(params, jax.random.PRNGKey(5), n)
  # Against the closed form: the training set (4000 points) and the samples (8000) each put a sampling sd
  # of about sqrt(1/4000 + 1/8000) = 0.02 on a mean and sqrt(2/4000 + 2/8000) = 0.03 on a (co)variance.
  np.testing.assert_allclose(jnp.mean(y, axis=0), mean, atol=0.08)
  np.testing.assert_allclose(jnp.cov(y.T), cov, atol=0.15)
  # Against the training distribution itself (the empirical measure): only the samples' noise (sd 0.011
  # on a mean, 0.016 on a (co)variance) and the model's fitting error remain.
  np.testing.assert_allclose(jnp.mean(y, axis=0), jnp.mean(x, axis=0), atol=0.05)
  np.testing.assert_allclose(jnp.cov(y.T), jnp.cov(x.T), atol=0.06)


def test_standardisation_stored_and_kept_by_fit(gaussian_fit):
  """``loc``/``scale`` are the weighted mean/std of the init data and are not changed by ``fit``."""
  model, params, _, _, x = gaussian_fit
  xn = np.asarray(x, np.float64)
  np.testing.assert_allclose(params["loc"], xn.mean(0), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(params["scale"], xn.std(0), rtol=1e-5)
  # Non-uniform weights: the weighted moments (numpy, float64).
  model_w = make_flow(width=8, depth=1, batch_size=8, init_steps=1, sample_steps=2)
  wts = np.array(jax.random.uniform(jax.random.PRNGKey(11), (4000,)), np.float64)
  wts[:1000] = 0.0
  wts /= wts.sum()
  p_w = jax.jit(model_w.init)(jax.random.PRNGKey(0), x, jnp.asarray(wts, jnp.float32))
  loc_w = (wts[:, None] * xn).sum(0)
  np.testing.assert_allclose(p_w["loc"], loc_w, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(p_w["scale"], np.sqrt((wts[:, None] * (xn - loc_w) ** 2).sum(0)), rtol=1e-4)
  x_new = jnp.zeros((100, 2)) + 5.0
  new = jax.jit(model.fit)(params, jax.random.PRNGKey(0), x_new, _uniform(100), _hyper(1e-3))
  np.testing.assert_array_equal(new["loc"], params["loc"])
  np.testing.assert_array_equal(new["scale"], params["scale"])


def test_warm_start_fit_moves_towards_new_data(gaussian_fit):
  """Retraining on a shifted Gaussian moves the model's mean most of the way to the new mean."""
  model, params, mean, cov, _ = gaussian_fit
  shift = jnp.array([1.5, 1.0])
  chol = jnp.linalg.cholesky(cov)
  x_new = mean + shift + jax.random.normal(jax.random.PRNGKey(6), (4000, 2)) @ chol.T
  new = jax.jit(model.fit)(params, jax.random.PRNGKey(7), x_new, _uniform(4000), _hyper(3e-3))
  sample = jax.jit(model.sample, static_argnums=2)
  before = jnp.mean(sample(params, jax.random.PRNGKey(8), 4000), axis=0)
  after = jnp.mean(sample(new, jax.random.PRNGKey(8), 4000), axis=0)
  target = mean + shift
  assert float(jnp.linalg.norm(after - target)) < 0.25 * float(jnp.linalg.norm(before - target))
  # The network weights changed, i.e. fit warm-started from params and trained.
  leaves_old, leaves_new = jax.tree.leaves(params["net"]), jax.tree.leaves(new["net"])
  assert any(not np.array_equal(a, b) for a, b in zip(leaves_old, leaves_new))


@pytest.mark.parametrize("n", [1200, 1201])
def test_chunked_sampling(gaussian_fit, n):
  """``n > sample_chunk`` goes through the chunked path (with and without padding rows): same law."""
  _, params, _, _, x = gaussian_fit
  model = make_flow(init_steps=500, train_steps=300, sample_chunk=500, **SMALL)
  y = jax.jit(model.sample, static_argnums=2)(params, jax.random.PRNGKey(12), n)
  chex.assert_shape(y, (n, 2))
  assert bool(jnp.all(jnp.isfinite(y)))
  # Sampling sd of a mean over 1200 samples is at most 0.03; allow 0.12 with model error.
  np.testing.assert_allclose(jnp.mean(y, axis=0), jnp.mean(x, axis=0), atol=0.12)
  np.testing.assert_allclose(jnp.std(y, axis=0), jnp.std(x, axis=0), atol=0.12)
  # No two chunks share noise: no repeated rows.
  assert np.unique(np.asarray(y), axis=0).shape[0] == n


def test_same_key_same_samples(gaussian_fit):
  model, params, _, _, _ = gaussian_fit
  sample = jax.jit(model.sample, static_argnums=2)
  a = sample(params, jax.random.PRNGKey(9), 500)
  b = sample(params, jax.random.PRNGKey(9), 500)
  c = sample(params, jax.random.PRNGKey(10), 500)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_changing_lr_does_not_retrace():
  model = make_flow(width=16, depth=1, batch_size=32, train_steps=5, init_steps=5, sample_steps=2)
  x = jax.random.normal(jax.random.PRNGKey(0), (64, 2))
  w = _uniform(64)
  params = jax.jit(model.init)(jax.random.PRNGKey(1), x, w)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def fit(params, key, hyper):
    return model.fit(params, key, x, w, hyper)

  outs = [fit(params, jax.random.PRNGKey(2), _hyper(lr)) for lr in (0.0, 1e-3, 1e-2)]
  # lr = 0 leaves the params unchanged; a different lr gives different weights from the same key.
  chex.assert_trees_all_equal(outs[0], params)
  assert not np.array_equal(outs[1]["net"]["params"]["out"]["kernel"],
                            outs[2]["net"]["params"]["out"]["kernel"])


@pytest.mark.parametrize("solver", ["midpoint", "euler"])
@pytest.mark.parametrize("n", [50, 130])
def test_constant_velocity_is_integrated_exactly(solver, n):
  """With the output layer zeroed to a constant velocity ``c``, both solvers give ``z0 + c`` exactly
  (in standardised units), unchunked and chunked alike."""
  model = make_flow(width=8, depth=1, sample_steps=10, solver=solver, sample_chunk=64)
  net = VelocityMLP(width=8, depth=1, out_dim=2).init(jax.random.PRNGKey(1), jnp.zeros((1, 2)),
                                                      jnp.zeros((1,)))
  c = jnp.array([0.3, -1.2])
  net["params"]["out"] = {"kernel": jnp.zeros((8, 2)), "bias": c}
  params = {"net": net, "loc": jnp.array([1.0, -1.0]), "scale": jnp.array([2.0, 0.5])}
  y = model.sample(params, jax.random.PRNGKey(2), n)
  y0 = (y - params["loc"]) / params["scale"] - c    # the starting noise, recovered
  np.testing.assert_allclose(jnp.mean(y0, axis=0), 0.0, atol=4.5 / np.sqrt(n))
  np.testing.assert_allclose(jnp.std(y0, axis=0), 1.0, atol=5.0 / np.sqrt(n))
  if n <= 64:  # unchunked: the noise is exactly normal(key, (n, d))
    np.testing.assert_allclose(y0, jax.random.normal(jax.random.PRNGKey(2), (n, 2)), atol=1e-5)


def test_non_2d_event_shape():
  """Event shape (3, 2): shapes round-trip and the per-coordinate mean is learned."""
  event = (3, 2)
  loc = jnp.arange(6, dtype=jnp.float32).reshape(event)
  x = loc + 0.5 * jax.random.normal(jax.random.PRNGKey(0), (2000,) + event)
  model = make_flow(event_shape=event, init_steps=300, **SMALL)
  params = jax.jit(model.init)(jax.random.PRNGKey(1), x, _uniform(2000))
  chex.assert_shape([params["loc"], params["scale"]], event)
  y = jax.jit(model.sample, static_argnums=2)(params, jax.random.PRNGKey(2), 3000)
  chex.assert_shape(y, (3000,) + event)
  # Sampling sd of each mean is 0.5 / sqrt(3000) = 0.009; allow 0.1 with model error.
  np.testing.assert_allclose(jnp.mean(y, axis=0), loc, atol=0.1)
  np.testing.assert_allclose(jnp.std(y, axis=0), jnp.full(event, 0.5), atol=0.1)


def test_rejects_unknown_solver():
  with pytest.raises(ValueError):
    make_flow(solver="rk4")


def test_time_features_match_float64_trigonometry():
  """time_features (sin/cos of πt, then double-angle products) against numpy float64 sin/cos of π 2^k t:
  within 1e-4 (the float32 doubling error, about 4e-5 at 2^7, is that of sin of the float32 angle), for
  t [m], t [a, b] and a scalar t."""
  t = np.linspace(0.0, 1.0, 20001)
  k = np.pi * 2.0 ** np.arange(flow_lib.N_FREQ)
  expected = np.concatenate([t[:, None], np.sin(t[:, None] * k), np.cos(t[:, None] * k)], axis=-1)
  np.testing.assert_allclose(flow_lib.time_features(t), expected, atol=1e-4, rtol=0)
  chex.assert_shape(flow_lib.time_features(t[:20].reshape(4, 5)), (4, 5, 2 * flow_lib.N_FREQ + 1))
  np.testing.assert_allclose(flow_lib.time_features(jnp.float32(0.3)), expected[6000], atol=1e-4, rtol=0)


@pytest.mark.parametrize("features", [1, 2, flow_lib.NARROW + 3])
def test_narrow_dense_is_flax_dense(features):
  """NarrowDense has nn.Dense's parameter tree and initial values for the same key, and its output and
  gradients equal nn.Dense's (float64, to rounding) for narrow (matrix-vector products) and wide outputs."""
  h = jax.random.normal(jax.random.PRNGKey(0), (50, 12))
  mine, ref = flow_lib.NarrowDense(features), nn.Dense(features)
  params = mine.init(jax.random.PRNGKey(1), h)
  chex.assert_trees_all_equal(params, ref.init(jax.random.PRNGKey(1), h))
  with jax.enable_x64(True):
    h64 = jnp.asarray(h, jnp.float64)
    p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64) + 0.1, params)
    np.testing.assert_allclose(mine.apply(p64, h64), ref.apply(p64, h64), rtol=1e-12)
    g = jax.random.normal(jax.random.PRNGKey(2), (50, features), jnp.float64)
    grads = [jax.grad(lambda p, x: jnp.sum(m.apply(p, x) * g), argnums=(0, 1))(p64, h64) for m in (mine, ref)]
    chex.assert_trees_all_close(*grads, rtol=1e-12)


def test_draws_for_a_block_of_steps_train_as_draws_step_by_step(monkeypatch):
  """The training draws (minibatch, noise, times) are made for blocks of steps at once; with blocks of one
  step the fit gives the same parameters up to float32 rounding (the draws themselves are equal, the
  blocks only change how XLA fuses the step). draw_block: the largest divisor of the steps within the caps."""
  assert flow_lib.draw_block(1250, 4000) == 50 and flow_lib.draw_block(3000, 4000) == 60
  assert flow_lib.draw_block(7, 4000) == 7 and flow_lib.draw_block(1, 10) == 1
  assert flow_lib.draw_block(1250, 128 * 3074) == 10  # 16 MiB of draws per block at most
  x = jax.random.normal(jax.random.PRNGKey(0), (500, 2))
  w = _uniform(500)
  fits = []
  for block_steps in (flow_lib.DRAW_BLOCK_STEPS, 1):
    monkeypatch.setattr(flow_lib, "DRAW_BLOCK_STEPS", block_steps)
    model = make_flow(width=16, depth=1, batch_size=64, train_steps=40, init_steps=40, sample_steps=2)
    params = jax.jit(model.init)(jax.random.PRNGKey(1), x, w)
    fits.append(jax.jit(model.fit)(params, jax.random.PRNGKey(2), x, w, _hyper(1e-2)))
  chex.assert_trees_all_close(*fits, atol=1e-5, rtol=0)
  assert not np.allclose(fits[0]["net"]["params"]["out"]["kernel"], 0.0)
