"""The float64 instance on which the attack's gradients are checked against central differences.

Shared by the plain (``tests/test_attacks.py``) and the defended (``tests/test_defences.py``) fits' tests:
24 Bradley–Terry pairs from a 60-point Gaussian pool, a 2 -> 4 -> 1 reward, tight solver settings and an
interior relaxed point ``δ0``. Call inside ``jax.enable_x64(True)``.
"""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np

from scl import preferences
from scl import reward_model as rm


def instance() -> types.SimpleNamespace:
  """``n, pool, l2, alpha, x, z, o, net, p0, tight, delta0, h, eye`` of the finite-difference checks."""
  n, pool_size = 24, 60
  pool = jax.random.normal(jax.random.key(0), (pool_size, 2), jnp.float64)
  x, z, o = preferences.make_preferences(
      jax.random.key(1), pool, n, lambda s: -jnp.sum((s - 0.5) ** 2, -1), "bradley_terry")
  net = rm.mlp_reward((4,))
  return types.SimpleNamespace(
      n=n, pool=pool, l2=1e-2, alpha=0.5, x=x, z=z, o=o, net=net,
      p0=jax.tree.map(lambda a: a.astype(jnp.float64), net.init(jax.random.key(2), x[:1])),
      tight=dict(maxiter=1000, tol=1e-10, cg_maxiter=200, cg_tol=1e-12),
      delta0=jnp.asarray(np.random.default_rng(3).uniform(0, 0.4, n)) * (1 - 2 * o),  # interior point
      h=1e-4, eye=jnp.eye(n, dtype=jnp.float64))
