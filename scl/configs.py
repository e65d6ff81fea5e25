"""Paper-default configurations: ``scl.configs.<dataset>(**overrides)``.

Each builder returns a validated :class:`~scl.config.Config`; keyword overrides are any of its flat keywords
(:meth:`scl.Config.keywords`), in particular ``K``, ``lam``, ``phi``, ``kappa``, ``alpha``, ``iterations``, ``model`` and ``attack``::

    cfg = scl.configs.gaussian8()                       # paper defaults
    cfg = scl.configs.gaussian8(K=4, lam=1.0, model="flow", attack="gradient", kappa=0.2, iterations=10)

Defaults follow the second paper's public code on Gaussian-8: 10 iterations, 50,000 model samples drawn per
iteration and 25,000 kept, ``κ = 0.2``-ready attacks with ``α = 0.8``, the clipped distance reward with
``γ = 10``, ``r_min = 3``, ``x*`` = mode 0. K-choice candidates are drawn from the 50,000-sample pool
(``fresh_candidates=False``), so ``K`` up to ``K_max = 16`` costs no extra model samples.
"""

from __future__ import annotations

from scl.config import Config


def _make(base: dict, overrides: dict) -> Config:
  """``Config()`` with ``base`` then ``overrides`` (flat keywords), validated."""
  return Config().replace(**{**base, **overrides}).validate()


def gaussian8(**overrides) -> Config:
  """The Gaussian-8 ring of both papers: 8 modes on a circle of radius 2, std 0.02.

  ``ring_scale=1.414`` reproduces the second paper's code, which divides its data by the ring's standard
  deviation while keeping ``x* = (2, 0)``. With ``model="categorical"`` the ring is discretised to
  ``n_atoms`` points sampled from it (``p_data`` uniform on them).
  """
  return _make(dict(dataset="gaussian8"), overrides)


def two_moons(**overrides) -> Config:
  """Two-moons (the first paper's other 2-D data set), reward ``-2 * max(|x - (-1, 0)| - 0.5, 0)``.

  The rewarded region is the left tip of the upper moon.
  """
  return _make(dict(dataset="two_moons", x_star=(-1.0, 0.0), gamma=2.0, r_min=0.5), overrides)


def points(support, weights=None, **overrides) -> Config:
  """Any finite point set ``[n, d]`` with ``p_data = weights`` (default uniform); categorical model.

  The reward defaults to the clipped distance to the first point; pass ``reward="custom"`` and
  ``reward_fn=...`` (a JAX function ``[n, d] -> [n]``) for your own.
  """
  base = dict(dataset="points", points=support, point_weights=weights, model="categorical")
  return _make(base, overrides)
