"""Pairwise preferences ``(x_i, z_i, o_i)`` between model samples, ``o_i = 1`` when ``z_i`` is preferred.

Shapes: ``n`` pairs (static), samples with any event shape ``[n, *event]`` (2-D points ``[n, 2]``, images
``[n, H, W, C]``), labels ``o`` float ``[n]`` in ``[0, 1]``.
"""

from __future__ import annotations

from typing import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np

from scl import registry


def check_labels(o: chex.Array, name: str = "o") -> None:
  """Raise ``ValueError`` naming the first bad entry unless concrete labels ``o [n]`` are finite and in
  ``[0, 1]`` (a traced ``o``, under ``jit``, is its caller's to check). A NaN label made the reward fit stop
  at its start without a word, and labels outside ``[0, 1]`` are not Bradley–Terry probabilities."""
  if isinstance(o, jax.core.Tracer):
    return
  values = np.asarray(o, np.float64)
  bad = np.flatnonzero(~(np.isfinite(values) & (values >= 0.0) & (values <= 1.0)))
  if bad.size:
    raise ValueError(f"invalid labels: {name}[{bad[0]}]={float(values.flat[bad[0]])!r}: preference labels must be "
                     f"finite and in [0, 1] ({bad.size} of {values.size} are not)")


@registry.LABELS.register("deterministic")
def deterministic_labels(key: chex.PRNGKey, r_x: chex.Array, r_z: chex.Array) -> chex.Array:
  """``o = 1[r(z) > r(x)]``, ``0.5`` on exact ties (as the second paper's code); ``key`` unused."""
  del key
  return jnp.where(r_z > r_x, 1.0, jnp.where(r_z < r_x, 0.0, 0.5)).astype(jnp.float32)


@registry.LABELS.register("bradley_terry")
def bradley_terry_labels(key: chex.PRNGKey, r_x: chex.Array, r_z: chex.Array) -> chex.Array:
  """``o ~ Bernoulli(sigmoid(r(z) - r(x)))``."""
  return jax.random.bernoulli(key, jax.nn.sigmoid(r_z - r_x)).astype(jnp.float32)


def minority_labels(share: float, target: float) -> Callable[[chex.PRNGKey, chex.Array, chex.Array], chex.Array]:
  """A label mode of heterogeneous honest users: a majority and a minority with its own taste.

  Each pair is labelled by a minority user with probability ``share`` (independently), otherwise by a
  majority user. Majority users prefer the higher reward ``r`` (:func:`deterministic_labels`); minority users
  prefer the sample whose reward is nearer ``target``, i.e. the higher ``r_m = -|r - target|`` (on Gaussian-8
  with ``target = -7``: the two modes next to the worst one). Register it to use it in the loop, e.g.
  ``scl.register("labels", "minority", minority_labels(0.3, -7.0))`` and ``labels="minority"``: the labels
  are honest, so whatever a defence flags among them is a false alarm, and what it does to the minority's
  preferred samples is the cost of the defence to the minority.

  Returns:
    ``(key, r_x [n], r_z [n]) -> o [n]`` in ``{0, 1/2, 1}``.
  """
  if not 0.0 <= share <= 1.0:
    raise ValueError(f"minority share={share!r} must be in [0, 1]")

  def labels(key, r_x, r_z):
    minority = jax.random.bernoulli(key, share, r_x.shape)
    o_majority = deterministic_labels(key, r_x, r_z)
    o_minority = deterministic_labels(key, -jnp.abs(r_x - target), -jnp.abs(r_z - target))
    return jnp.where(minority, o_minority, o_majority)

  return labels


def label_pairs(key: chex.PRNGKey, r_x: chex.Array, r_z: chex.Array,
                mode: str = "deterministic") -> chex.Array:
  """Preference labels ``o_i`` (``1`` when ``z_i`` is preferred) from the users' rewards of the two samples.

  Args:
    key: PRNG key (unused for ``"deterministic"``).
    r_x, r_z: rewards ``r(x_i)``, ``r(z_i)``, shape ``[n]``.
    mode (static): a label mode of :data:`scl.registry.LABELS`: ``"deterministic"`` (``o = 1[r(z) > r(x)]``,
      ``0.5`` on exact ties, as the second paper's code) or ``"bradley_terry"`` (``o ~ Bernoulli(s(r(z) -
      r(x)))``, ``s`` the logistic sigmoid).

  Returns:
    ``o``: float32 ``[n]`` with values in ``{0, 0.5, 1}`` (deterministic) or ``{0, 1}`` (Bradley–Terry).
  """
  chex.assert_rank([r_x, r_z], 1)
  chex.assert_equal_shape([r_x, r_z])
  return registry.LABELS[mode](key, r_x, r_z)


def draw_pairs(key: chex.PRNGKey, pool: chex.Array, n: int) -> tuple[chex.Array, chex.Array]:
  """``n`` pairs ``(x_i, z_i)`` of independent uniform draws (with replacement) from a pool of samples.

  Args:
    key: PRNG key.
    pool: model samples ``[P, *event]`` (draws of ``p_t``).
    n (static): number of pairs.

  Returns:
    ``(x, z)``, each ``[n, *event]``; ``x`` and ``z`` are drawn independently of each other.
  """
  chex.assert_rank(pool, {1, 2, 3, 4, 5})
  kx, kz = jax.random.split(key)
  size = pool.shape[0]
  ix = jax.random.randint(kx, (n,), 0, size)
  iz = jax.random.randint(kz, (n,), 0, size)
  return pool[ix], pool[iz]


def make_preferences(key: chex.PRNGKey, pool: chex.Array, n: int,
                     reward_fn: Callable[[chex.Array], chex.Array],
                     mode: str = "deterministic") -> tuple[chex.Array, chex.Array, chex.Array]:
  """Draw ``n`` pairs from ``pool`` and label them with the users' reward ``r``.

  Args:
    key: PRNG key.
    pool: model samples ``[P, *event]``.
    n (static): number of pairs.
    reward_fn: the true reward ``r``: ``[n, *event] -> [n]``.
    mode (static): see :func:`label_pairs`.

  Returns:
    ``(x, z, o)``: ``[n, *event]``, ``[n, *event]``, ``[n]``.
  """
  k_pairs, k_labels = jax.random.split(key)
  x, z = draw_pairs(k_pairs, pool, n)
  o = label_pairs(k_labels, reward_fn(x), reward_fn(z), mode)
  return x, z, o
