"""Rewards ``r: [n, d] -> [n]`` of the users (true) and of malicious users (adversarial ``r~``)."""

from __future__ import annotations

from typing import Callable, Sequence

import chex
import jax.numpy as jnp

RewardFn = Callable[[chex.Array], chex.Array]


def clipped_distance(x_star: Sequence[float], gamma: float = 10.0, r_min: float = 3.0) -> RewardFn:
  """``r(x) = -gamma * max(|x - x*| - r_min, 0)``: zero within ``r_min`` of ``x*``, falling linearly beyond.

  On the Gaussian-8 ring (radius 2, ``x*`` = mode 0 = (2, 0)) with the defaults, the opposite mode gets
  about -10, its two neighbours about -7 and the other five modes 0.
  """
  x_star = jnp.asarray(x_star, jnp.float32)

  def reward(x: chex.Array) -> chex.Array:
    chex.assert_rank(x, 2)
    dist = jnp.linalg.norm(x - x_star, axis=-1)
    return -gamma * jnp.maximum(dist - r_min, 0.0)

  return reward


def negated(reward: RewardFn) -> RewardFn:
  """``r~ = -r``: the adversarial reward that is perfectly anti-correlated with the users' reward."""
  return lambda x: -reward(x)
