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


def _histogram_logits(x: chex.Array, w: chex.Array, n_atoms: int) -> chex.Array:
  chex.assert_rank([x, w], 1)
  mass = jax.ops.segment_sum(w, x, num_segments=n_atoms)
  return jnp.log(mass / jnp.sum(mass))  # -inf on atoms with no mass: they can never be sampled again.


def make_categorical(n_atoms: int) -> Model:
  """A categorical distribution over ``n_atoms`` atoms with params ``{"logits": [n_atoms]}``."""

  def init(key, x, w):
    del key
    return {"logits": _histogram_logits(x, w, n_atoms)}

  def fit(params, key, x, w, hyper):
    del params, key, hyper  # Maximum likelihood is closed form: no warm start, no learning rate.
    return {"logits": _histogram_logits(x, w, n_atoms)}

  def sample(params, key, n):
    # Inverse CDF (O(n log n_atoms)); Gumbel-max would build an [n, n_atoms] matrix.
    cdf = jnp.cumsum(jax.nn.softmax(params["logits"]))
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
