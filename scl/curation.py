"""Curation: which of the model's samples the users keep.

Every curation returns **weights over the pool** of model samples ``[P]`` (non-negative, summing to 1), so
the kept set has a static shape whatever ``K``, ``β`` or ``φ`` are (they are all traced):

* :func:`choice_weights` — Bradley–Terry / Luce K-choice (Ferbach et al.): for each of ``n_keep`` kept
  samples, ``K`` candidates are shown and the user keeps ``x_k`` with probability
  ``exp(r(x_k)) / sum_j exp(r(x_j))``. ``K`` is traced: ``K_max`` candidates are drawn and those beyond ``K``
  get logit ``-inf``.
* :func:`topk_weights` — keep the ``β`` fraction of the pool with the highest reward (the papers' code).
* :func:`luce_pool_weights` — Plackett–Luce sampling without replacement of the ``β`` fraction of the pool
  (Gumbel top-k: ``argsort(r + Gumbel)``), the other filter of the papers' code.

Each is registered in :data:`scl.registry.CURATIONS` (``curation="choice" | "topk" | "luce_pool"``) with
the signature ``(key, r [P], r_tilde [P], hyper, cfg: CurationConfig) -> weights [P]``.

Mixed users: a fraction ``φ`` of users curates with the adversarial reward ``r~``. For K-choice each kept
sample's user is malicious with probability ``φ``; for the pool filters each pool sample is judged by a
malicious user with probability ``φ``, and each group keeps the ``β`` fraction of what it judged (rounded so
that together they keep exactly ``floor(β P)``).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from scl import registry


def keep_count(fraction: chex.Numeric, n: chex.Numeric) -> chex.Array:
  """``floor(fraction · n)`` as int32, clipped to ``[0, n]``; ``n`` may be traced.

  ``fraction · n`` within float32 rounding of an integer counts as that integer: ``0.7`` is stored as
  ``0.69999999``, and ``0.7 · 10`` must keep 7, not 6. Shared by the pool filters (``β``) and the
  label-flip budgets (``κ``, :func:`scl.attacks.flip_budget`).
  """
  n = jnp.asarray(n, jnp.float32)
  m = jnp.asarray(fraction, jnp.float32) * n
  nearest = jnp.round(m)
  # float32 rounding of the fraction and of the product moves m by at most about eps |m|: a tolerance that
  # grows with n instead (8 eps n is 0.05 at n = 50,000) rounded κ = 0.1999995 up to 10,000 flips, not 9,999
  close = jnp.abs(m - nearest) <= 4 * jnp.finfo(jnp.float32).eps * jnp.maximum(jnp.abs(m), 1.0)
  return jnp.clip(jnp.where(close, nearest, jnp.floor(m)), 0.0, n).astype(jnp.int32)


def choice_indices(key: chex.PRNGKey, r_cand: chex.Array, K: chex.Numeric,
                   r_tilde_cand: chex.Array | None = None, phi: chex.Numeric = 0.0) -> chex.Array:
  """Luce choice among the first ``K`` of ``K_max`` candidates per row.

  Args:
    key: PRNG key.
    r_cand: ``[n, K_max]`` rewards of the candidates (any magnitude: used as logits).
    K: traced number of candidates shown, ``1 <= K <= K_max``.
    r_tilde_cand: ``[n, K_max]`` adversarial rewards ``r~`` (None: no malicious users).
    phi: probability that a row's user is malicious (``φ``).

  Returns:
    ``[n]`` int32 index of the kept candidate in each row.
  """
  chex.assert_rank(r_cand, 2)
  n, k_max = r_cand.shape
  k_choice, k_user = jax.random.split(key)
  logits = r_cand
  if r_tilde_cand is not None:
    chex.assert_equal_shape([r_cand, r_tilde_cand])
    malicious = jax.random.bernoulli(k_user, phi, (n,))
    logits = jnp.where(malicious[:, None], r_tilde_cand, r_cand)
  shown = jnp.arange(k_max) < K
  logits = jnp.where(shown[None, :], logits, -jnp.inf)
  # Shift by the row max: Gumbel noise added to logits of 1e6 in float32 would be quantised to 1/16.
  logits = logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  return jax.random.categorical(k_choice, logits, axis=-1)


def choice_weights(key: chex.PRNGKey, r_pool: chex.Array, K: chex.Numeric, *, n_keep: int, K_max: int,
                   fresh: bool = False, r_tilde_pool: chex.Array | None = None,
                   phi: chex.Numeric = 0.0) -> chex.Array:
  """K-choice curation of a pool: weights ``[P]`` (counts of each pool sample among the kept, / n_keep).

  With ``fresh=True`` the pool must hold ``n_keep * K_max`` samples and row ``i`` of candidates is
  ``pool[i * K_max:(i + 1) * K_max]``: every candidate is an independent model sample. Otherwise candidates
  are drawn uniformly with replacement from the pool, i.e. K-choice under the pool's empirical measure.
  """
  chex.assert_rank(r_pool, 1)
  pool_size = r_pool.shape[0]
  k_cand, k_choice = jax.random.split(key)
  if fresh:
    if pool_size != n_keep * K_max:
      raise ValueError(f"fresh candidates need a pool of n_keep * K_max = {n_keep * K_max}, got {pool_size}")
    cand = jnp.arange(pool_size, dtype=jnp.int32).reshape(n_keep, K_max)
  else:
    cand = jax.random.randint(k_cand, (n_keep, K_max), 0, pool_size)
  r_tilde_cand = None if r_tilde_pool is None else r_tilde_pool[cand]
  pick = choice_indices(k_choice, r_pool[cand], K, r_tilde_cand, phi)
  kept = jnp.take_along_axis(cand, pick[:, None], axis=1)[:, 0]
  return jnp.zeros(pool_size, jnp.float32).at[kept].add(1.0 / n_keep)


def _keep_top_fraction(scores: chex.Array, beta: chex.Numeric, group: chex.Array) -> chex.Array:
  """Keep ``floor(β P)`` of the ``P`` scores, within each group (0 or 1) its highest ones: the malicious
  group (1) about ``β`` of its size (rounded to the nearest count), the honest group the rest; weights ``[P]``.

  Rounding each group's count down on its own kept up to one sample fewer per group than ``floor(β P)``, and
  none at all where both groups' ``β`` shares were below 1.
  """
  order = jnp.argsort(-scores, stable=True)
  sorted_group = group[order]
  rank_in_group = jnp.where(sorted_group, jnp.cumsum(sorted_group), jnp.cumsum(~sorted_group)) - 1
  n_mal = jnp.sum(group).astype(jnp.int32)
  total = keep_count(beta, group.shape[0])
  m_mal = jnp.minimum(jnp.round(jnp.asarray(beta, jnp.float32) * n_mal).astype(jnp.int32), jnp.minimum(n_mal, total))
  m_honest = jnp.minimum(total - m_mal, group.shape[0] - n_mal)
  budget = jnp.where(sorted_group, total - m_honest, m_honest)
  keep = jnp.zeros(scores.shape, jnp.float32).at[order].set((rank_in_group < budget).astype(jnp.float32))
  return keep / jnp.maximum(jnp.sum(keep), 1.0)


def _user_groups(key, r_pool, r_tilde_pool, phi):
  if r_tilde_pool is None:
    return r_pool, jnp.zeros(r_pool.shape, bool)
  chex.assert_equal_shape([r_pool, r_tilde_pool])
  malicious = jax.random.bernoulli(key, phi, r_pool.shape)
  return jnp.where(malicious, r_tilde_pool, r_pool), malicious


def topk_weights(key: chex.PRNGKey, r_pool: chex.Array, beta: chex.Numeric, *,
                 r_tilde_pool: chex.Array | None = None, phi: chex.Numeric = 0.0) -> chex.Array:
  """Keep the ``β`` fraction of the pool with the highest reward (per user group); weights ``[P]``."""
  chex.assert_rank(r_pool, 1)
  scores, group = _user_groups(key, r_pool, r_tilde_pool, phi)
  return _keep_top_fraction(scores, beta, group)


def luce_pool_weights(key: chex.PRNGKey, r_pool: chex.Array, beta: chex.Numeric, *,
                      r_tilde_pool: chex.Array | None = None, phi: chex.Numeric = 0.0) -> chex.Array:
  """Plackett–Luce sampling without replacement of the ``β`` fraction of the pool; weights ``[P]``.

  Adding i.i.d. Gumbel noise to the rewards and keeping the top ``m`` draws ``m`` items without
  replacement, each successive pick with probability ``softmax(r)`` over what is left.
  """
  chex.assert_rank(r_pool, 1)
  k_group, k_gumbel = jax.random.split(key)
  scores, group = _user_groups(k_group, r_pool, r_tilde_pool, phi)
  # Shift each group's scores by its max so that the Gumbel noise keeps its precision for large rewards.
  top = jnp.where(group, jnp.max(jnp.where(group, scores, -jnp.inf)),
                  jnp.max(jnp.where(group, -jnp.inf, scores)))
  scores = scores - top + jax.random.gumbel(k_gumbel, scores.shape)
  return _keep_top_fraction(scores, beta, group)


# ----------------------------------------------------------------------------------------------------------
# Registered rules: ``(key, r [P], r_tilde [P], hyper, cfg: CurationConfig) -> weights [P]``.


@registry.CURATIONS.register("choice", k_choice=True)
def _choice(key, r, r_tilde, hyper, cfg):
  """Luce K-choice (the law the papers' theorems describe: ``k_choice=True``)."""
  return choice_weights(key, r, hyper.K, n_keep=cfg.n_keep, K_max=cfg.K_max, fresh=cfg.fresh_candidates,
                        r_tilde_pool=r_tilde, phi=hyper.phi)


@registry.CURATIONS.register("topk", keeps_fraction=True)
def _topk(key, r, r_tilde, hyper, cfg):
  del cfg
  return topk_weights(key, r, hyper.beta, r_tilde_pool=r_tilde, phi=hyper.phi)


@registry.CURATIONS.register("luce_pool", keeps_fraction=True)
def _luce_pool(key, r, r_tilde, hyper, cfg):
  del cfg
  return luce_pool_weights(key, r, hyper.beta, r_tilde_pool=r_tilde, phi=hyper.phi)
