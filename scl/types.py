"""Core types: the static configuration and the traced hyper-parameter pytree.

A run of the loop is described by one flat, frozen :class:`Config`. Its fields fall in two groups:

* **static** fields fix shapes and program structure (data set, model family, sample counts, network
  sizes, number of iterations). They are hashed into the compilation cache: changing one recompiles.
* **dynamic** fields (:data:`DYNAMIC_FIELDS`: ``K``, ``lam``, ``phi``, ``kappa``, ``alpha``, ``beta``,
  ``lr``, ``l2``) are turned into a :class:`Hyper` pytree of arrays by :meth:`Config.hyper` and passed to the
  jitted program as traced values, so sweeping them never recompiles.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import chex
import jax.numpy as jnp
from flax import struct

Array = chex.Array
PRNGKey = chex.PRNGKey

#: Config fields that become traced values (see :class:`Hyper`).
DYNAMIC_FIELDS = ("K", "lam", "phi", "kappa", "alpha", "beta", "lr", "l2")

MODELS = ("categorical", "gmm", "flow")
CURATIONS = ("choice", "topk", "luce_pool")
ATTACKS = ("none", "random", "dist", "top", "gradient")
DATASETS = ("gaussian8", "two_moons", "points")
REWARDS = ("clipped_distance", "custom")
LABELS = ("deterministic", "bradley_terry")


@struct.dataclass
class Hyper:
  """Traced hyper-parameters of one run (every leaf is a scalar array; vmap adds a leading axis).

  Attributes:
    K: number of candidates shown per choice (``K``), int32, ``1 <= K <= K_max``.
    real_share: weight of real data in the retraining mixture, ``1 / (1 + λ)``; 0 is the fully
      synthetic loop (``λ = inf``) and 1 trains on real data only (``λ = 0``).
    phi: fraction of users who curate with the adversarial reward ``r~`` (``φ`` in [0, 1]).
    kappa: label-flip budget as a fraction of preference pairs (``κ`` in [0, 1]).
    alpha: the attacker's stealth weight (``α >= 0``).
    beta: fraction of the pool kept by the pool filters (``topk``, ``luce_pool``), in (0, 1].
    lr: learning rate of neural models.
    l2: L2 weight of the learned reward model.
  """

  K: Array
  real_share: Array
  phi: Array
  kappa: Array
  alpha: Array
  beta: Array
  lr: Array
  l2: Array


def real_share(lam) -> Array:
  """``1 / (1 + λ)`` (a float or a traced array), with ``λ = inf`` mapped to 0 exactly (never ``inf / inf``)."""
  lam = jnp.asarray(lam)
  return jnp.where(jnp.isinf(lam), 0.0, 1.0 / (1.0 + jnp.where(jnp.isinf(lam), 0.0, lam)))


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything that defines a run. Build with :mod:`scl.configs` (``scl.configs.gaussian8(K=4)``).

  Static fields (shapes and structure; hashed, changing them recompiles):
    dataset: ``"gaussian8"``, ``"two_moons"`` or ``"points"`` (a finite point set, see ``points``).
    model: generative family, one of :data:`MODELS`.
    curation: ``"choice"`` (Bradley–Terry / Luce choice of one of K candidates per kept sample),
      ``"topk"`` (keep the ``beta`` fraction of the pool with the highest reward) or ``"luce_pool"``
      (Plackett–Luce sampling without replacement of the ``beta`` fraction of the pool).
    iterations: number of retraining iterations ``T``; metrics have ``T + 1`` rows.
    pool_size: model samples drawn per iteration (the papers' code: 50,000).
    n_keep: kept samples per iteration for ``"choice"`` curation (the papers' code: 25,000).
    K_max: the largest ``K`` the compiled program accepts (candidates beyond ``K`` are masked).
    fresh_candidates: for ``"choice"``: if True every candidate is a fresh model sample
      (``n_keep * K_max`` samples); if False candidates are drawn uniformly with replacement from the
      pool of ``pool_size`` model samples (K-choice under the pool's empirical measure).
    n_real: size of the fixed real data set (ignored on a finite support: there ``p_data`` is exact).
    n_eval: model samples used for the metrics.
    data_seed: seed of the real data set and of a discretised support.
    n_atoms: for ``model="categorical"`` on continuous data: number of atoms of the discretised support.
    points / point_weights: the finite support (``[n, d]``) and ``p_data`` on it, for ``dataset="points"``.
    ring_radius, ring_std, n_modes, ring_scale: the Gaussian ring (``ring_scale`` divides the data, as the
      second paper's code does with its standard deviation, about 1.414).
    moons_noise: noise of two-moons.
    reward: ``"clipped_distance"`` or ``"custom"`` (then ``reward_fn`` is used).
    reward_fn: a JAX function ``[n, d] -> [n]`` (the true reward ``r``) when ``reward == "custom"``.
    gamma, r_min, x_star: the clipped distance reward ``-gamma * max(|x - x*| - r_min, 0)``; ``x_star``
      ``None`` means mode 0.
    adv_reward_fn: the adversarial reward ``r~`` of malicious users (``None``: ``-r``).
    attack: label-flip attack, one of :data:`ATTACKS`.
    n_pairs: preference pairs per iteration (used when ``attack != "none"`` or ``learned_reward``).
    labels: ``"deterministic"`` or ``"bradley_terry"`` preference labels.
    learned_reward: benign curation with the learned reward model instead of the true reward.
    reward_hidden: hidden widths of the learned reward MLP (``(64,)``: the papers' 2→64→1 network).
    attack_steps: outer steps of the gradient attack.
    gmm_components, em_steps: the Gaussian mixture.
    width, depth, train_steps, init_steps, batch_size, sample_steps: the flow-matching model.

  Dynamic fields (traced; see :class:`Hyper`): ``K``, ``lam`` (``λ``, ``inf`` = fully synthetic),
  ``phi``, ``kappa``, ``alpha``, ``beta``, ``lr``, ``l2``.
  """

  # -- static
  dataset: str = "gaussian8"
  model: str = "gmm"
  curation: str = "choice"
  iterations: int = 10
  pool_size: int = 50_000
  n_keep: int = 25_000
  K_max: int = 16
  fresh_candidates: bool = False
  n_real: int = 25_000
  n_eval: int = 10_000
  data_seed: int = 0
  n_atoms: int = 1024
  points: Any = None
  point_weights: Any = None
  ring_radius: float = 2.0
  ring_std: float = 0.02
  n_modes: int = 8
  ring_scale: float = 1.0
  moons_noise: float = 0.05
  reward: str = "clipped_distance"
  reward_fn: Callable | None = None
  gamma: float = 10.0
  r_min: float = 3.0
  x_star: tuple[float, ...] | None = None
  adv_reward_fn: Callable | None = None
  attack: str = "none"
  n_pairs: int = 2_000
  labels: str = "deterministic"
  learned_reward: bool = False
  reward_hidden: tuple[int, ...] = (64,)
  attack_steps: int = 5
  gmm_components: int = 8
  em_steps: int = 30
  width: int = 128
  depth: int = 3
  train_steps: int = 1250
  init_steps: int = 3000
  batch_size: int = 1000
  sample_steps: int = 100
  # -- dynamic (traced)
  K: int = 2
  lam: float = float("inf")
  phi: float = 0.0
  kappa: float = 0.0
  alpha: float = 0.8
  beta: float = 0.5
  lr: float = 1e-3
  l2: float = 1e-3

  def replace(self, **overrides) -> "Config":
    return dataclasses.replace(self, **overrides)

  def static(self) -> "Config":
    """This config with every dynamic field blanked: the part that keys the compilation cache."""
    return dataclasses.replace(self, **{f: None for f in DYNAMIC_FIELDS})

  def hyper(self) -> Hyper:
    """The dynamic fields as a :class:`Hyper` pytree of scalar arrays."""
    return Hyper(
        K=jnp.asarray(self.K, jnp.int32),
        real_share=jnp.asarray(real_share(self.lam), jnp.float32),
        phi=jnp.asarray(self.phi, jnp.float32),
        kappa=jnp.asarray(self.kappa, jnp.float32),
        alpha=jnp.asarray(self.alpha, jnp.float32),
        beta=jnp.asarray(self.beta, jnp.float32),
        lr=jnp.asarray(self.lr, jnp.float32),
        l2=jnp.asarray(self.l2, jnp.float32),
    )

  # Arrays (``points``) and functions make the dataclass unhashable by value; hash them by identity so a
  # config can key a cache. Two configs with equal arrays but different objects compile separately.
  def __hash__(self):
    return hash(tuple(_hashable(getattr(self, f.name)) for f in dataclasses.fields(self)))

  def __eq__(self, other):
    if type(other) is not type(self):
      return NotImplemented
    return all(
        _hashable(getattr(self, f.name)) == _hashable(getattr(other, f.name))
        for f in dataclasses.fields(self))


def _hashable(value):
  if value is None or isinstance(value, (str, int, float, bool, tuple)):
    return value
  return ("id", id(value))
