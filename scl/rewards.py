"""Rewards of the users (``r``) and of malicious users (``r~``), registered in :data:`scl.registry.REWARDS`.

A reward is a :class:`Reward`: parameters (arrays, passed to the compiled program as data: ``x*``, later
classifier weights) and a pure ``apply(params, x [n, *event]) -> [n]``. A registered reward builder has the
signature ``(cfg, dataset) -> Reward``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import chex
import jax.numpy as jnp
import numpy as np

from scl import registry

RewardFn = Callable[[chex.Array], chex.Array]


class Reward(NamedTuple):
  """A reward ``r(x) = apply(params, x)``: ``params`` a pytree of arrays, ``apply`` pure (``[n, *event] -> [n]``)."""

  params: Any
  apply: Callable[[Any, chex.Array], chex.Array]

  def __call__(self, x: chex.Array) -> chex.Array:
    return self.apply(self.params, x)


def _clipped_distance(params, x: chex.Array) -> chex.Array:
  chex.assert_rank(x, 2)
  dist = jnp.linalg.norm(x - params["x_star"], axis=-1)
  return -params["gamma"] * jnp.maximum(dist - params["r_min"], 0.0)


def clipped_distance(x_star: Sequence[float], gamma: float = 10.0, r_min: float = 3.0) -> Reward:
  """``r(x) = -gamma * max(|x - x*| - r_min, 0)``: zero within ``r_min`` of ``x*``, falling linearly beyond.

  On the Gaussian-8 ring (radius 2, ``x*`` = mode 0 = (2, 0)) with the defaults, the opposite mode gets
  about -10, its two neighbours about -7 and the other five modes 0.
  """
  params = {"x_star": jnp.asarray(x_star, jnp.float32), "gamma": jnp.asarray(gamma, jnp.float32),
            "r_min": jnp.asarray(r_min, jnp.float32)}
  return Reward(params, _clipped_distance)


def negated(reward: Reward) -> Reward:
  """``r~ = -r``: the adversarial reward that is perfectly anti-correlated with the users' reward."""
  apply = reward.apply
  return Reward(reward.params, lambda params, x: -apply(params, x))


@registry.REWARDS.register("clipped_distance")
def _build_clipped_distance(cfg, dataset) -> Reward:
  x_star = cfg.reward.x_star if cfg.reward.x_star is not None else dataset.anchor
  if x_star is None:
    raise ValueError(f"invalid config: x_star=None: data set {cfg.data.name!r} has no default x*; set x_star")
  if dataset.anchor is not None and np.shape(x_star) != np.shape(dataset.anchor):
    raise ValueError(f"invalid config: x_star={cfg.reward.x_star!r}: data set {cfg.data.name!r} has points of "
                     f"dimension {len(dataset.anchor)}, so x* needs {len(dataset.anchor)} coordinates")
  return clipped_distance(x_star, cfg.reward.gamma, cfg.reward.r_min)


def _check_custom(cfg) -> None:
  if not callable(cfg.reward.reward_fn):
    raise ValueError(f"invalid config: reward_fn={cfg.reward.reward_fn!r}: reward='custom' needs a callable "
                     "reward_fn: [n, d] -> [n]")


@registry.REWARDS.register("custom", validate=_check_custom)
def _build_custom(cfg, dataset) -> Reward:
  del dataset
  fn = cfg.reward.reward_fn
  return Reward(None, lambda _, x: fn(x))
