"""The one interface every generative model family implements.

A model is a :class:`Model` of pure functions over an explicit params pytree (optax-style: a NamedTuple of
functions, no objects with state). Samples are arrays ``[n, *event_shape]``: 2-D points ``[n, 2]`` for the
toy data sets, atom indices ``[n]`` (int32) for the categorical model on a finite support, images later.

A weighted data set is a pair ``(x [N, *event], w [N])`` with ``w >= 0`` and ``sum(w) = 1``: it stands for the
training distribution ``sum_i w_i δ_{x_i}``. This is how the loop mixes real and curated data (weights
``1/(1+λ)`` and ``λ/(1+λ)``) and how the pool filters mask what they drop (weight 0), all at fixed shapes.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp

Params = Any


def inverse_cdf_table(w: chex.Array) -> chex.Array:
  """The running totals ``[N]`` of weights ``w [N] >= 0`` for inverse-CDF draws (``searchsorted(table, u,
  side="right")`` with ``u`` uniform in ``[0, table[-1])``) that never pick an entry of weight 0.

  A plain ``cumsum`` does not guarantee it: XLA adds in a tree order, so in float32 an entry of weight 0 can
  still raise the total by an ulp (about 6e-8) and be drawn now and then. Here an entry of weight 0 repeats its
  predecessor's total exactly (and the table never decreases), so no ``u`` selects it.
  """
  return jax.lax.cummax(jnp.where(w > 0, jnp.cumsum(w), jnp.zeros((), w.dtype)))


class Model(NamedTuple):
  """Pure functions of a generative model family.

  Attributes:
    name: family name (``"categorical"``, ``"gmm"``, ``"flow"``, ...).
    init: ``(key, x, w) -> params``: fit ``p_0`` from scratch on the weighted data ``(x, w)``.
    fit: ``(params, key, x, w, hyper) -> params``: retrain on ``(x, w)``, warm-started from ``params``
      (maximum likelihood for the categorical model and EM for the mixture, gradient steps for neural
      models). ``hyper`` is the traced :class:`scl.hyper.Hyper` (learning rate, ...).
    sample: ``(params, key, n) -> x [n, *event]`` with ``n`` static.
    log_prob: ``(params, x) -> [n]`` log density / mass, where the family has one, else None.
    probs: ``params -> [n_atoms]`` the probability vector, for models on a finite support, else None.
  """

  name: str
  init: Callable[..., Params]
  fit: Callable[..., Params]
  sample: Callable[..., chex.Array]
  log_prob: Optional[Callable[..., chex.Array]] = None
  probs: Optional[Callable[..., chex.Array]] = None
