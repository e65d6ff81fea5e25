"""Gaussian mixture with full covariances, fitted to weighted data by expectation–maximisation.

``fit`` warm-starts EM from the previous iteration's mixture, as the papers retrain from the previous
model. Components whose responsibility vanishes keep their previous mean and covariance with weight ~0
(a component that has lost its mode cannot come back without data near it, as in the theory).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from scl import registry
from scl.models.base import Model


def _log_normal(x, means, chol):
  """``log N(x | mean_c, L_c L_c^T)`` for every point and component: ``[N, C]``."""
  d = x.shape[-1]
  # Invert the C small triangular factors once, then one einsum: far cheaper than N x C solves.
  chol_inv = jax.vmap(lambda L: jax.scipy.linalg.solve_triangular(L, jnp.eye(d), lower=True))(chol)
  proj_x = jnp.einsum("cde,ne->ncd", chol_inv, x)                           # [N, C, d]
  proj_mean = jnp.einsum("cde,ce->cd", chol_inv, means)                     # [C, d]
  maha = jnp.sum((proj_x - proj_mean[None]) ** 2, -1)                       # [N, C]
  log_det = jnp.sum(jnp.log(jnp.abs(jnp.diagonal(chol, axis1=-2, axis2=-1))), -1)  # [C]
  return -0.5 * maha - log_det[None] - 0.5 * d * math.log(2 * math.pi)


def _data_variance(x, w):
  """The weighted data's variance, averaged over dimensions (a scale for the covariances' jitter)."""
  var = jnp.sum(w[:, None] * (x - jnp.sum(w[:, None] * x, 0)) ** 2, 0)
  return jnp.maximum(jnp.mean(var), 1e-30)  # all points equal: a floor, not a zero covariance


def _em_step(params, x, w, jitter):
  log_resp = jax.nn.log_softmax(params["logits"][None] + _log_normal(x, params["means"], params["chol"]), -1)
  resp = jnp.exp(log_resp) * w[:, None]                                     # [N, C]
  mass = jnp.sum(resp, 0)                                                   # [C]
  alive = mass > 1e-6
  safe = jnp.where(alive, mass, 1.0)
  means = jnp.einsum("nc,nd->cd", resp, x) / safe[:, None]
  diff = x[:, None, :] - means[None]
  cov = jnp.einsum("nc,ncd,nce->cde", resp, diff, diff) / safe[:, None, None]
  cov = cov + jitter * jnp.eye(x.shape[-1])
  chol = jnp.linalg.cholesky(cov)
  # A covariance that float32 rounding left not positive definite (a component on a line, far from the
  # origin) gets a NaN factor: keep the previous one, as for a component that lost its mass.
  ok = jnp.all(jnp.isfinite(chol), axis=(-2, -1)) & jnp.all(jnp.isfinite(means), -1)
  keep = alive & ok
  return {
      "logits": jnp.log(jnp.maximum(mass, 1e-30)),
      "means": jnp.where(keep[:, None], means, params["means"]),
      "chol": jnp.where(keep[:, None, None], chol, params["chol"]),
  }


def _kmeans_pp(key, x, w, n_components):
  """k-means++ seeding on weighted points: each new centre drawn with probability ∝ w · D²."""
  k0, k_rest = jax.random.split(key)
  first = x[jax.random.categorical(k0, jnp.log(w))]

  def add(dist2, k):
    idx = jax.random.categorical(k, jnp.log(w) + jnp.log(jnp.maximum(dist2, 1e-30)))
    centre = x[idx]
    return jnp.minimum(dist2, jnp.sum((x - centre) ** 2, -1)), centre

  dist2 = jnp.sum((x - first) ** 2, -1)
  _, rest = jax.lax.scan(add, dist2, jax.random.split(k_rest, n_components - 1))
  return jnp.concatenate([first[None], rest], 0)


def make_gmm(event_shape=(2,), n_components: int = 8, em_steps: int = 30, init_em_steps: int = 100,
             reg: float = 1e-6) -> Model:
  """A mixture of ``n_components`` full-covariance Gaussians on ``prod(event_shape)`` dimensions.

  Params: ``{"logits": [C], "means": [C, d], "chol": [C, d, d]}`` (Cholesky factors of the covariances).
  ``init`` seeds means by k-means++ and runs ``init_em_steps`` EM steps; ``fit`` runs ``em_steps`` EM steps
  from the previous params. ``reg`` times the data's variance (averaged over dimensions) is added to every
  covariance's diagonal: relative, so that the fit does not depend on the data's units (an absolute ``1e-6``
  vanished in float32 beside covariances of order ``1e6`` and left singular ones NaN).
  """
  event_shape = tuple(event_shape)
  d = math.prod(event_shape)

  def flat(x):
    return x.reshape(x.shape[0], d)

  def run_em(params, x, w, steps):
    jitter = reg * _data_variance(x, w)
    return jax.lax.fori_loop(0, steps, lambda _, p: _em_step(p, x, w, jitter), params)

  def init(key, x, w):
    x = flat(x)
    means = _kmeans_pp(key, x, w, n_components)
    scale = jnp.sqrt(_data_variance(x, w) * (1.0 / n_components + reg))
    params = {
        "logits": jnp.zeros(n_components),
        "means": means,
        "chol": jnp.broadcast_to(scale * jnp.eye(d), (n_components, d, d)),
    }
    return run_em(params, x, w, init_em_steps)

  def fit(params, key, x, w, hyper):
    del key, hyper
    return run_em(params, flat(x), w, em_steps)

  def sample(params, key, n):
    k_comp, k_noise = jax.random.split(key)
    comp = jax.random.categorical(k_comp, params["logits"], shape=(n,))
    eps = jax.random.normal(k_noise, (n, d))
    x = params["means"][comp] + jnp.einsum("nde,ne->nd", params["chol"][comp], eps)
    return x.reshape((n,) + event_shape)

  def log_prob(params, x):
    lp = _log_normal(flat(x), params["means"], params["chol"])
    return jax.nn.logsumexp(jax.nn.log_softmax(params["logits"])[None] + lp, -1)

  return Model("gmm", init, fit, sample, log_prob)


@registry.MODELS.register("gmm")
def _build(cfg, event_shape, n_atoms: int | None) -> Model:
  """Registered as ``model="gmm"``: ``gmm_components`` components, ``em_steps`` EM steps per refit."""
  del n_atoms
  return make_gmm(event_shape, cfg.model.gmm_components, cfg.model.em_steps)
