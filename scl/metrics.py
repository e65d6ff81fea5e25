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
  ``energy_distance``  energy distance between model samples and a fixed sample of ``p_data`` (2,000 points).
  ``kl_to_data``       KL(p_t || p_data), exact, for the categorical model only.

:func:`scl.run` adds, on a finite support, the theorem monitors of :func:`scl.theory.monitors` (row ``t``
describes the step ``p_{t-1} -> p_t``; row 0 is NaN), and with a learned reward (``attack != "none"`` or
``learned_reward=True``; row ``T`` is NaN since no preferences are collected from ``p_T``):
  ``n_flips``          labels flipped by the attacker (exactly ``floor(κ n_pairs)``).
  ``cov_r_learned``    Cov_{p_t}[e^{r - max r}, e^{R~ - max R~}] between the users' reward and the platform's
                       learned reward ``R~`` (each shifted by its max); ``corr_r_learned`` its correlation.
  ``reward_accuracy``  pairwise accuracy of ``R~`` on fresh clean pairs of ``p_t``'s samples (ties excluded;
                       NaN when every pair is a tie).
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp

N_ENERGY = 1000


def _mean_pairwise_distance(a, b):
  return jnp.mean(jnp.sqrt(jnp.maximum(jnp.sum((a[:, None] - b[None]) ** 2, -1), 1e-30)))


def energy_distance(x: chex.Array, y: chex.Array) -> chex.Array:
  """``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (the V-statistic) between point sets ``[n, d]`` and ``[m, d]``."""
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
  return out


def kl(p: chex.Array, q: chex.Array) -> chex.Array:
  """``KL(p || q) = sum p log(p / q)`` with ``0 log 0 = 0`` (``inf`` where p puts mass outside q)."""
  ratio = jnp.where(p > 0, p / jnp.where(q > 0, q, 1.0), 1.0)
  terms = jnp.where(p > 0, p * jnp.log(ratio), 0.0)
  return jnp.where(jnp.any((p > 0) & (q <= 0)), math.inf, jnp.sum(terms))
