"""Wei & Zhang's platform: the reward ``R~`` that users curate with when preferences pass through a platform.

::

    samples of p_t --pairs--> (x, z) --labels (r)--> o --attacker fits R_θ on o, flips κn labels--> o~
        --platform's defence fits R~ on o~ (warm-started at θ)--> R~ on the pool

:func:`learned_reward` is one pure function of the step's pool, the true rewards on it and the traced
hyper-parameters; the label mode, the attack and the defence are looked up in their registries
(:data:`scl.registry.LABELS`, :data:`scl.registry.ATTACKS`, :data:`scl.registry.DEFENCES`).
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from scl import attacks
from scl import defences  # noqa: F401  (registers the defences)
from scl import metrics
from scl import preferences
from scl import registry
from scl import reward_model


class Learned(NamedTuple):
  """The platform's learned reward ``R~`` of one step (:func:`learned_reward`)."""
  pool: chex.Array                  # [P] R~ on the pool
  stats: dict[str, chex.Array]      # the step's preference statistics
  support: chex.Array | None        # [n_atoms] R~ on a finite support's atoms, if asked for


def learned_reward(key: chex.PRNGKey, points: chex.Array, r_pool: chex.Array, hyper, data, task, *,
                   support: chex.Array | None = None) -> Learned:
  """The platform's learned reward ``R~`` on the pool (and the ``support``) and the step's statistics.

  Args:
    key: PRNG key of this iteration's preferences.
    points: ``[P, *event]`` samples of ``p_t`` (points, not atom indices).
    r_pool: ``[P]`` the users' reward ``r`` on them.
    hyper: the traced :class:`~scl.config.Hyper` (``κ``, ``α``, ``l2``).
    data, task: the run's :class:`~scl.task.TaskData` and :class:`~scl.task.Task`.
    support: optional ``[n_atoms, *event]`` points (a finite support's atoms) to evaluate ``R~`` on as well.

  Returns:
    :class:`Learned` ``(pool, stats, support)``: ``R~`` on the pool ``[P]``, the statistics, and ``R~`` on
    ``support`` (None without it). ``stats``: ``n_flips`` (labels the attacker flipped, exactly ``floor(κ n)``),
    ``cov_r_learned`` (``Cov[e^{r - max r}, e^{R~ - max R~}]`` over the pool: only its sign and the
    correlation compare across attacks, the scale of ``R~`` being arbitrary), ``corr_r_learned`` and
    ``reward_accuracy`` (pairwise accuracy of ``R~`` on fresh clean pairs, ties excluded), and any statistics
    the attack reports (the gradient attack: ``attack_kept_dist``). A defence that flags pairs
    (:mod:`scl.defences`) adds ``n_flagged``, ``flag_precision`` (the share of flagged pairs whose label the
    attacker changed; NaN if none is flagged) and ``flag_recall`` (the share of changed labels flagged; NaN if
    none changed — a flipped tie ``o = 1/2`` is not a change), and any statistics the defence reports.
  """
  cfg = task.cfg
  platform = cfg.platform
  net = reward_model.mlp_reward(tuple(platform.reward_hidden))
  reward = lambda x: task.reward(data.reward, x)
  k_pairs, k_labels, k_init, k_attack, k_held = jax.random.split(key, 5)

  # The reward model sees the points (2-D) or the classifier's logits / features (images).
  inputs = task.platform_inputs(data, points)
  index = jnp.arange(points.shape[0])
  ix, iz = preferences.draw_pairs(k_pairs, index, platform.n_pairs)
  x, z = inputs[ix], inputs[iz]
  o = registry.LABELS[platform.labels](k_labels, reward(points[ix]), reward(points[iz]))
  # The attacker's estimate R_θ of the users' reward, from genuine preferences it collected itself. When the
  # pool has fewer samples than the pairs' 2n, the plain Bradley–Terry fits (the attacker's, the gradient
  # attack's, the undefended platform's) take the pairs as indices into it: each sample is evaluated once.
  indexed = (inputs, ix, iz) if points.shape[0] < 2 * platform.n_pairs else None

  def fit(theta0, o):
    if indexed is None:
      return reward_model.fit_reward(theta0, net.apply, x, z, o, hyper.l2)
    return reward_model.fit_reward(theta0, net.apply, ix, iz, o, hyper.l2, points=inputs)

  theta = fit(net.init(k_init, x[:1]), o)
  view = attacks.AttackerView(theta, net.apply, inputs[:min(points.shape[0], 4 * platform.n_pairs)], indexed)
  o_flipped, flipped, *attack_stats = registry.ATTACKS[platform.attack](k_attack, x, z, o, view, hyper, cfg)
  # The platform's fit of R~ on the labels it received: its defence (plain Bradley–Terry for "none": the
  # registered "none", here on indexed pairs when they are). Its key is folded from the step's key, so the
  # other draws are those of an undefended run.
  if platform.defence == "none":
    theta_platform, flagged, defence_stats = fit(theta, o_flipped), None, []
  else:
    theta_platform, flagged, *defence_stats = registry.DEFENCES[platform.defence](
        jax.random.fold_in(key, 5), x, z, o_flipped, theta, net, hyper, cfg)
  r_learned = net.apply(theta_platform, inputs)

  ih, jh = preferences.draw_pairs(k_held, index, platform.n_pairs)
  xh, zh = inputs[ih], inputs[jh]
  oh = preferences.deterministic_labels(k_held, reward(points[ih]), reward(points[jh]))
  cov, corr = metrics.shifted_exp_covariance(r_pool, r_learned)
  stats = {
      "n_flips": jnp.sum(flipped).astype(jnp.float32),
      "cov_r_learned": cov,
      "corr_r_learned": corr,
      "reward_accuracy": reward_model.pairwise_accuracy(theta_platform, net.apply, xh, zh, oh),
      **(attack_stats[0] if attack_stats else {}),
  }
  if flagged is not None:
    stats.update(detection_stats(flagged, flipped & (o_flipped != o)))
  stats.update(defence_stats[0] if defence_stats else {})
  on_support = None if support is None else net.apply(theta_platform, task.platform_inputs(data, support))
  return Learned(r_learned, stats, on_support)


def detection_stats(flagged: chex.Array, changed: chex.Array) -> dict[str, chex.Array]:
  """``n_flagged``, ``flag_precision`` and ``flag_recall`` of flagged pairs against changed labels (``[n]``
  bools each); precision is NaN when nothing is flagged, recall when nothing changed."""
  chex.assert_equal_shape([flagged, changed])
  hits = jnp.sum(flagged & changed).astype(jnp.float32)
  n_flagged = jnp.sum(flagged).astype(jnp.float32)
  n_changed = jnp.sum(changed).astype(jnp.float32)
  nan = jnp.float32(jnp.nan)
  return {"n_flagged": n_flagged,
          "flag_precision": jnp.where(n_flagged > 0, hits / jnp.maximum(n_flagged, 1.0), nan),
          "flag_recall": jnp.where(n_changed > 0, hits / jnp.maximum(n_changed, 1.0), nan)}
