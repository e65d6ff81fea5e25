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


def test_categorical_log_prob_is_the_log_of_the_fitted_histogram():
  model = models.make_categorical(4)
  w = jnp.asarray([0.1, 0.2, 0.3, 0.4])
  params = model.init(jax.random.PRNGKey(0), jnp.arange(4), w)
  np.testing.assert_allclose(np.exp(model.log_prob(params, jnp.arange(4))), w, rtol=1e-6)
  np.testing.assert_allclose(model.probs(params), w, rtol=1e-6)
