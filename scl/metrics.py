"""Per-iteration metrics of the model ``p_t``.

All metrics are computed from model samples, except on a finite support with the categorical model, where
the expectations are exact sums over the probability vector and the distance to ``p_data`` is the exact
``KL(p_t || p_data)``.

Names (each a scalar per iteration, or ``[m]`` for ``mode_props``):
  ``expected_reward``  E_{p_t}[r]  — the headline metric of both papers.
  ``reward_var``       Var_{p_t}[r].
  ``exp_reward``       E_{p_t}[e^r] (the quantity the theorems bound); ``log_exp_reward`` its log, computed
                       by logsumexp, finite even where ``exp_reward`` overflows.
  ``mode_props``       fraction of samples within ``mode_radius`` of each mode (Gaussian-8 only).
  ``off_mode``         fraction of samples near no mode (Gaussian-8 only).
  ``energy_distance``  energy distance between model samples and a fixed sample of ``p_data`` (1,000 points,
                       ``N_ENERGY``).
  ``kl_to_data``       KL(p_t || p_data), exact, for the categorical model only.
  ``cov_r_rtilde_pool``  Cov[e^{r - max r}, e^{r~ - max r~}] over the step's pool (:func:`scl.loop.step`),
                       ``r~`` the malicious users' reward (the platform's ``R~`` with
                       ``learned_for="malicious"``): the sign of Wei & Zhang's ``g_cov``, on any task;
                       ``corr_r_rtilde_pool`` its correlation. NaN at ``p_T``.

On image data sets (a classifier is part of the task), measured in the classifier's space:
  ``class_props``      ``[C]`` share of samples the classifier assigns to each class (argmax).
  ``frechet_distance`` Fréchet distance between Gaussians fitted to the penultimate features of model samples
                       and of the real training images — the small-image analogue of FID (FID uses
                       Inception-v3 features of 299×299 images; here the task's own classifier).
  ``precision``, ``recall``  k-nearest-neighbour manifold precision and recall in the same features
                       (Kynkäänniemi et al. 2019, ``k = 3``): the share of samples inside the real manifold,
                       and of real images inside the samples' manifold.

:func:`scl.run` adds, on a finite support, the theorem monitors of :func:`scl.theory.monitors` (row ``t``
describes the step ``p_{t-1} -> p_t``; row 0 is NaN), and with a learned reward (``attack != "none"`` or
``learned_reward=True``; row ``T`` is NaN since no preferences are collected from ``p_T``):
  ``n_flips``          labels flipped by the attacker (exactly ``floor(κ n_pairs)``).
  ``cov_r_learned``    Cov_{p_t}[e^{r - max r}, e^{R~ - max R~}] between the users' reward and the platform's
                       learned reward ``R~`` (each shifted by its max); ``corr_r_learned`` its correlation.
  ``reward_accuracy``  pairwise accuracy of ``R~`` on fresh clean pairs of ``p_t``'s samples (ties excluded;
                       NaN when every pair is a tie).
and with a defence that flags pairs (``defence="outlier" | "ensemble_filter" | "knn_relabel"``,
:mod:`scl.defences`):
  ``n_flagged``        pairs the defence flagged as flipped.
  ``flag_precision``   the share of flagged pairs whose label the attacker changed (NaN if none is flagged).
  ``flag_recall``      the share of changed labels that were flagged (NaN if none changed).
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp

N_ENERGY = 1000
#: Neighbours of the precision/recall manifolds (Kynkäänniemi et al. 2019 use k = 3).
K_NEIGHBOURS = 3


def _mean_pairwise_distance(a, b):
  return jnp.mean(jnp.sqrt(jnp.maximum(jnp.sum((a[:, None] - b[None]) ** 2, -1), 1e-30)))


def energy_distance(x: chex.Array, y: chex.Array) -> chex.Array:
  """``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (the V-statistic) between ``[n, *event]`` and ``[m, *event]``."""
  x, y = x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)
  return 2 * _mean_pairwise_distance(x, y) - _mean_pairwise_distance(x, x) - _mean_pairwise_distance(y, y)


def reward_moments(r: chex.Array, weights: chex.Array | None = None) -> dict[str, chex.Array]:
  """Expected reward, variance, E[e^r] and log E[e^r] of rewards ``[n]`` (optionally weighted, sum 1)."""
  if weights is None:
    weights = jnp.full(r.shape, 1.0 / r.shape[0], r.dtype)
  mean = jnp.sum(weights * r)
  var = jnp.sum(weights * (r - mean) ** 2)
  # Atoms of weight 0 are left out of logsumexp's shift: a huge reward there must not underflow the rest.
  log_exp = jax.nn.logsumexp(jnp.where(weights > 0, r, -jnp.inf), b=weights)
  return {"expected_reward": mean, "reward_var": var, "exp_reward": jnp.exp(log_exp),
          "log_exp_reward": log_exp}


def shifted_exp_covariance(r: chex.Array, r_tilde: chex.Array) -> tuple[chex.Array, chex.Array]:
  """``Cov[e^{r - max r}, e^{r~ - max r~}]`` over samples (``[n]`` each; each reward shifted by its own max, so
  neither overflows) and the correlation (``0`` where either reward is constant)."""
  a = jnp.exp(r - jnp.max(r))
  b = jnp.exp(r_tilde - jnp.max(r_tilde))
  cov = jnp.mean((a - a.mean()) * (b - b.mean()))
  return cov, cov / jnp.maximum(a.std() * b.std(), 1e-30)


def mode_proportions(points: chex.Array, modes: chex.Array, radius: chex.Numeric,
                     weights: chex.Array | None = None) -> dict[str, chex.Array]:
  """Share of ``points [n, d]`` (``weights [n]``, default uniform) within ``radius`` of each mode ``[m, d]``.

  Returns ``mode_props [m]`` (by nearest mode) and ``off_mode`` (the share near no mode).
  """
  dist = jnp.linalg.norm(points[:, None, :] - modes[None], axis=-1)   # [n, m]
  nearest = jnp.argmin(dist, -1)
  near = jnp.min(dist, -1) <= radius
  if weights is None:
    weights = jnp.full(points.shape[:1], 1.0 / points.shape[0])
  props = jax.ops.segment_sum(jnp.where(near, weights, 0.0), nearest, num_segments=modes.shape[0])
  return {"mode_props": props, "off_mode": 1.0 - jnp.sum(props)}


def model_metrics(task, data, params, samples: chex.Array) -> dict[str, chex.Array]:
  """Metrics of the model ``p_t`` (``params``) from its samples ``[n, *event]`` in the model's sample space.

  On a finite support (``task.finite``) the reward moments, mode proportions and ``kl_to_data`` are exact
  sums over the probability vector; the samples feed only the energy distance. Otherwise all come from the
  first ``cfg.data.n_eval`` samples.
  """
  points = task.to_points(data, samples)
  if task.finite:
    p = task.model.probs(params)
    out = reward_moments(task.reward(data.reward, data.support), p)
    where, weights = data.support, p
  else:
    points = points[:task.cfg.data.n_eval]
    out = reward_moments(task.reward(data.reward, points))
    where, weights = points, None
  if data.modes is not None:
    out.update(mode_proportions(where, data.modes, data.mode_radius, weights))
  out["energy_distance"] = energy_distance(points[:N_ENERGY], data.eval_points[:N_ENERGY])
  if task.finite:
    out["kl_to_data"] = kl(p, data.p_data)
  if task.classifier is not None:
    out.update(image_metrics(task, data, samples[:task.cfg.data.n_eval]))
  return out


def image_metrics(task, data, images: chex.Array) -> dict[str, chex.Array]:
  """``class_props``, ``frechet_distance``, ``precision`` and ``recall`` of model images ``[n, H, W, C]``
  against the real images' features held in ``data.images`` (see :class:`scl.task.TaskData`)."""
  ref = data.images
  logits, features = task.classifier.apply(ref["classifier"], images)
  props = jnp.mean(jax.nn.one_hot(jnp.argmax(logits, -1), logits.shape[-1]), 0)
  mu, cov = gaussian_stats(features)
  out = {"class_props": props, "frechet_distance": frechet_distance(mu, cov, ref["mu"], ref["cov"])}
  m = min(features.shape[0], ref["features"].shape[0])
  out.update(precision_recall(ref["features"], ref["radii"], features[:m], K_NEIGHBOURS))
  return out


def gaussian_stats(features: chex.Array) -> tuple[chex.Array, chex.Array]:
  """Mean ``[F]`` and covariance ``[F, F]`` (``ddof = 1``) of features ``[n, F]``, ``n >= 2``."""
  if features.shape[0] < 2:
    raise ValueError(f"gaussian_stats: a covariance needs at least 2 points; got {features.shape[0]}")
  mu = jnp.mean(features, 0)
  centred = features - mu
  return mu, centred.T @ centred / (features.shape[0] - 1)


def _sqrt_psd(a: chex.Array) -> chex.Array:
  w, v = jnp.linalg.eigh(0.5 * (a + a.T))
  return (v * jnp.sqrt(jnp.maximum(w, 0.0))) @ v.T


def frechet_distance(mu1: chex.Array, cov1: chex.Array, mu2: chex.Array, cov2: chex.Array) -> chex.Array:
  """``|mu1 - mu2|² + tr(cov1 + cov2 - 2 (cov1^{1/2} cov2 cov1^{1/2})^{1/2})`` (means ``[F]``, covariances
  ``[F, F]``), by symmetric eigendecompositions (``tr sqrt(cov1 cov2)`` is the trace of the PSD square root
  of ``cov1^{1/2} cov2 cov1^{1/2}``)."""
  s1 = _sqrt_psd(cov1)
  inner = jnp.linalg.eigvalsh(s1 @ cov2 @ s1)
  return jnp.sum(jnp.square(mu1 - mu2)) + jnp.trace(cov1) + jnp.trace(cov2) - 2 * jnp.sum(
      jnp.sqrt(jnp.maximum(inner, 0.0)))


def _sq_distances(a: chex.Array, b: chex.Array) -> chex.Array:
  return jnp.maximum(jnp.sum(a * a, 1)[:, None] + jnp.sum(b * b, 1)[None] - 2 * a @ b.T, 0.0)


def knn_radii(features: chex.Array, k: int = 3) -> chex.Array:
  """Squared distance of each of ``features [n, F]`` to its ``k``-th nearest other point, ``[n]`` (``n > k``)."""
  if not 1 <= k < features.shape[0]:  # else the index below would be clamped to the farthest point, silently
    raise ValueError(f"knn_radii: k={k} needs 1 <= k < n (the number of points, {features.shape[0]})")
  d = _sq_distances(features, features)
  return jnp.sort(d, axis=1)[:, k]            # column 0 is the point itself


def precision_recall(real: chex.Array, real_radii: chex.Array, fake: chex.Array, k: int = 3
                     ) -> dict[str, chex.Array]:
  """Improved precision and recall (Kynkäänniemi et al. 2019) of ``fake [m, F]`` against ``real [n, F]``.

  The real manifold is the union of balls around each real point reaching its ``k``-th neighbour
  (``real_radii``, squared, from :func:`knn_radii`); likewise for the samples. Precision: the share of
  samples inside the real manifold; recall: the share of real points inside the samples' manifold.
  """
  chex.assert_shape(real_radii, (real.shape[0],))
  d = _sq_distances(fake, real)                                   # [m, n]
  precision = jnp.mean(jnp.any(d <= real_radii[None], axis=1))
  recall = jnp.mean(jnp.any(d <= knn_radii(fake, k)[:, None], axis=0))
  return {"precision": precision, "recall": recall}


def kl(p: chex.Array, q: chex.Array) -> chex.Array:
  """``KL(p || q) = sum p log(p / q)`` with ``0 log 0 = 0`` (``inf`` where p puts mass outside q)."""
  chex.assert_equal_shape([p, q])
  ratio = jnp.where(p > 0, p / jnp.where(q > 0, q, 1.0), 1.0)
  terms = jnp.where(p > 0, p * jnp.log(ratio), 0.0)
  return jnp.where(jnp.any((p > 0) & (q <= 0)), math.inf, jnp.sum(terms))
