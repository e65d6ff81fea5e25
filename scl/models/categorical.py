"""The categorical model on a finite support: the papers' "global optimum" model family.

Samples are atom indices ``[n]`` (int32) into a support of ``n_atoms`` points. Retraining is exact maximum
likelihood on the weighted data — the histogram of the weights — so ``p_{t+1}`` is exactly
``1/(1+λ) p_data + λ/(1+λ) (curated empirical measure)`` and the loop can be compared with
:mod:`scl.exact` term by term.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from scl import registry
from scl.models.base import Model
from scl.models.base import inverse_cdf_table


def _histogram_logits(x: chex.Array, w: chex.Array, n_atoms: int, fallback: chex.Array) -> chex.Array:
  """Log of the normalised weighted histogram of atoms ``x``; ``fallback`` where the weights hold no mass (the
  loop never passes such weights: without the guard the logits would be NaN)."""
  chex.assert_rank([x, w], 1)
  mass = jax.ops.segment_sum(w, x, num_segments=n_atoms)
  total = jnp.sum(mass)
  logits = jnp.log(mass / jnp.where(total > 0, total, 1.0))  # -inf on atoms with no mass: never drawn again
  return jnp.where(total > 0, logits, fallback)


def make_categorical(n_atoms: int) -> Model:
  """A categorical distribution over ``n_atoms`` atoms with params ``{"logits": [n_atoms]}``."""

  def init(key, x, w):
    del key
    return {"logits": _histogram_logits(x, w, n_atoms, jnp.zeros((n_atoms,)))}  # no mass: uniform

  def fit(params, key, x, w, hyper):
    del key, hyper  # Maximum likelihood is closed form: no warm start, no learning rate.
    return {"logits": _histogram_logits(x, w, n_atoms, params["logits"])}  # no mass: the model stays

  def sample(params, key, n):
    # Inverse CDF (O(n log n_atoms)); Gumbel-max would build an [n, n_atoms] matrix.
    cdf = inverse_cdf_table(jax.nn.softmax(params["logits"]))  # an atom of mass 0 is never drawn
    u = jax.random.uniform(key, (n,), maxval=cdf[-1])
    return jnp.minimum(jnp.searchsorted(cdf, u, side="right"), n_atoms - 1).astype(jnp.int32)

  def log_prob(params, x):
    return jax.nn.log_softmax(params["logits"])[x]

  def probs(params):
    return jax.nn.softmax(params["logits"])

  return Model("categorical", init, fit, sample, log_prob, probs)


@registry.MODELS.register("categorical", finite_support=True)
def _build(cfg, event_shape, n_atoms: int | None) -> Model:
  """Registered as ``model="categorical"``; the data set is discretised to ``n_atoms`` points if continuous."""
  del cfg, event_shape
  return make_categorical(n_atoms)
