"""Data sets of the papers, registered in :data:`scl.registry.DATASETS`: the Gaussian-8 ring, two-moons, and
any finite point set."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np

from scl import registry
from scl import task


def ring_modes(n_modes: int = 8, radius: float = 2.0) -> np.ndarray:
  """Centres of the Gaussian ring, ``[n_modes, 2]``; mode 0 is ``(radius, 0)``."""
  angles = 2.0 * np.pi * np.arange(n_modes) / n_modes
  return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=-1).astype(np.float32)


def sample_gaussian8(key: chex.PRNGKey, n: int, n_modes: int = 8, radius: float = 2.0,
                     std: float = 0.02, scale: float = 1.0) -> chex.Array:
  """``n`` points of the ring: a uniform mode plus isotropic noise of ``std``, divided by ``scale``.

  Returns ``[n, 2]`` float32. ``scale`` reproduces the second paper's code, which divides its data by the
  ring's standard deviation (about 1.414) while keeping ``x* = (2, 0)``.
  """
  k_mode, k_noise = jax.random.split(key)
  modes = jnp.asarray(ring_modes(n_modes, radius))
  which = jax.random.randint(k_mode, (n,), 0, n_modes)
  x = modes[which] + std * jax.random.normal(k_noise, (n, 2))
  return x / scale


def sample_two_moons(key: chex.PRNGKey, n: int, noise: float = 0.05) -> chex.Array:
  """Two interleaving half circles (scikit-learn's ``make_moons``), ``[n, 2]`` float32."""
  k_side, k_angle, k_noise = jax.random.split(key, 3)
  side = jax.random.bernoulli(k_side, 0.5, (n,))
  angle = jnp.pi * jax.random.uniform(k_angle, (n,))
  upper = jnp.stack([jnp.cos(angle), jnp.sin(angle)], -1)
  lower = jnp.stack([1.0 - jnp.cos(angle), 0.5 - jnp.sin(angle)], -1)
  x = jnp.where(side[:, None], lower, upper)
  return x + noise * jax.random.normal(k_noise, (n, 2))


def validate_points(points, weights=None) -> tuple[np.ndarray, np.ndarray]:
  """Check a finite support ``[n, d]`` and its weights ``[n]``; return them as float32 numpy arrays."""
  pts = np.asarray(points, dtype=np.float32)
  if pts.ndim == 1:
    pts = pts[:, None]
  if pts.ndim != 2 or pts.shape[0] < 1 or pts.shape[1] < 1:
    raise ValueError(f"invalid config: points: must have shape [n, d] with n, d >= 1, got shape "
                     f"{np.shape(points)}")
  if not np.all(np.isfinite(pts)):
    rows = np.flatnonzero(~np.all(np.isfinite(pts), axis=1))
    raise ValueError(f"invalid config: points: row {rows[0]} is {pts[rows[0]].tolist()} ({rows.size} rows with "
                     "non-finite values); the support must be finite")
  if weights is None:
    w = np.full(pts.shape[0], 1.0 / pts.shape[0], np.float32)
  else:
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (pts.shape[0],):
      raise ValueError(f"invalid config: point_weights: must have shape [{pts.shape[0]}], got {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or not np.any(w > 0):
      raise ValueError(f"invalid config: point_weights={w}: must be finite, >= 0 and not all 0")
    w = w / w.max()  # then the sum cannot overflow (weights of 1e308 summed to inf, and p_data to 0)
    w = (w / w.sum()).astype(np.float32)
  return pts, w


# ----------------------------------------------------------------------------------------------------------
# Registered data sets: ``(cfg) -> scl.task.Dataset``.


@registry.DATASETS.register("gaussian8")
def gaussian8(cfg) -> "task.Dataset":
  """The Gaussian ring of both papers (``n_modes`` modes of radius ``ring_radius``, std ``ring_std``)."""
  d = cfg.data
  sample = lambda key, n: sample_gaussian8(key, n, d.n_modes, d.ring_radius, d.ring_std, d.ring_scale)
  # One mode has no neighbour: its radius is then bounded by the ring's spread alone.
  spacing = 2 * d.ring_radius * math.sin(math.pi / d.n_modes) / d.ring_scale if d.n_modes > 1 else math.inf
  # x* = (radius, 0) is not divided by ring_scale: the second paper's code scales its data, not x*.
  return task.Dataset(sample=sample, anchor=(d.ring_radius, 0.0),
                      modes=ring_modes(d.n_modes, d.ring_radius) / d.ring_scale,
                      mode_radius=min(0.25 * spacing, max(10 * d.ring_std / d.ring_scale, 0.05)))


@registry.DATASETS.register("two_moons")
def two_moons(cfg) -> "task.Dataset":
  """Two-moons; the default ``x*`` is the left tip of the upper moon, ``(-1, 0)``."""
  return task.Dataset(sample=lambda key, n: sample_two_moons(key, n, cfg.data.moons_noise), anchor=(-1.0, 0.0))


def _check_points(cfg) -> None:
  if cfg.data.points is None:
    raise ValueError("invalid config: points=None: dataset='points' needs a [n, d] array of points")
  validate_points(cfg.data.points, cfg.data.point_weights)


@registry.DATASETS.register("points", validate=_check_points)
def points(cfg) -> "task.Dataset":
  """Any finite point set ``cfg.data.points [n, d]`` with ``p_data = point_weights`` (default uniform)."""
  support, weights = validate_points(cfg.data.points, cfg.data.point_weights)
  return task.Dataset(support=support, weights=weights, anchor=tuple(support[0].tolist()))
