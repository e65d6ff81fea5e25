"""From a :class:`~scl.types.Config` to the concrete pieces a run needs: data, rewards, model.

:func:`build` validates the configuration first (every bad value fails here, before any compute, with an
error that names the field and the value) and then materialises the real data set, the support of a finite
data set, the true and adversarial rewards and the model family.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from scl import data as data_lib
from scl import rewards as rewards_lib
from scl import types
from scl.models.base import Model
from scl.models.categorical import make_categorical
from scl.models.flow import make_flow
from scl.models.gmm import make_gmm


class Task(NamedTuple):
  """Everything static a run closes over.

  Attributes:
    model: the generative model family.
    real_x, real_w: the real data set ``p_data`` as weighted samples in the model's sample space
      (``[R, *event]`` and ``[R]``; on a finite support: every atom, weighted by ``p_data`` exactly).
    to_points: model samples -> points ``[n, d]`` (atom lookup on a finite support, else identity).
    reward, adv_reward: true reward ``r`` and adversarial reward ``r~`` on points, ``[n, d] -> [n]``.
    support: atoms ``[n_atoms, d]`` of a finite support, else None.
    p_data: ``[n_atoms]`` the real distribution on the support, else None.
    support_rewards: ``[n_atoms]`` ``r`` on the atoms, else None.
    support_adv_rewards: ``[n_atoms]`` ``r~`` on the atoms, else None.
    modes: ``[m, d]`` mode centres for the mode proportions (Gaussian-8), else None.
    mode_radius: points farther than this from every mode count as off-mode.
    real_points: ``[E, d]`` a fixed sample of ``p_data`` for the energy distance.
  """

  model: Model
  real_x: chex.Array
  real_w: chex.Array
  to_points: Callable[[chex.Array], chex.Array]
  reward: Callable[[chex.Array], chex.Array]
  adv_reward: Callable[[chex.Array], chex.Array]
  support: chex.Array | None
  p_data: chex.Array | None
  support_rewards: chex.Array | None
  support_adv_rewards: chex.Array | None
  modes: chex.Array | None
  mode_radius: float
  real_points: chex.Array


def _fail(field: str, value, why: str):
  raise ValueError(f"invalid config: {field}={value!r}: {why}")


def validate(cfg: types.Config) -> None:
  """Raise ``ValueError`` naming the field and value of the first invalid setting."""
  validate_static(cfg)
  validate_hyper(cfg)


def validate_static(cfg: types.Config) -> None:
  """Check the static fields (those that shape the compiled program)."""
  for field, allowed in (("dataset", types.DATASETS), ("model", types.MODELS),
                         ("curation", types.CURATIONS), ("attack", types.ATTACKS),
                         ("reward", types.REWARDS), ("labels", types.LABELS)):
    if getattr(cfg, field) not in allowed:
      _fail(field, getattr(cfg, field), f"unknown {field}; choose one of {allowed}")
  if cfg.reward == "custom" and not callable(cfg.reward_fn):
    _fail("reward_fn", cfg.reward_fn, "reward='custom' needs a callable reward_fn: [n, d] -> [n]")
  if not isinstance(cfg.iterations, (int, np.integer)) or cfg.iterations < 0:
    _fail("iterations", cfg.iterations, "must be an integer >= 0")
  for field in ("pool_size", "n_keep", "K_max", "n_real", "n_eval", "n_atoms", "gmm_components",
                "em_steps", "width", "depth", "train_steps", "init_steps", "batch_size", "sample_steps",
                "n_pairs", "attack_steps"):
    value = getattr(cfg, field)
    if not isinstance(value, (int, np.integer)) or value < 1:
      _fail(field, value, "must be an integer >= 1")
  if cfg.dataset == "points":
    if cfg.points is None:
      _fail("points", None, "dataset='points' needs a [n, d] array of points")
    data_lib.validate_points(cfg.points, cfg.point_weights)
  if cfg.fresh_candidates and cfg.curation == "choice" and cfg.pool_size != cfg.n_keep * cfg.K_max:
    _fail("pool_size", cfg.pool_size, f"fresh_candidates needs pool_size = n_keep * K_max = "
          f"{cfg.n_keep * cfg.K_max}")


def validate_hyper(cfg: types.Config, **values) -> None:
  """Check the dynamic fields (or the given ``values`` of them) against their domains."""
  get = lambda f: values.get(f, getattr(cfg, f))
  K = get("K")
  K_arr = np.asarray(K, dtype=np.float64)
  if not np.all(np.isfinite(K_arr)) or np.any(K_arr < 1) or np.any(K_arr != np.round(K_arr)):
    _fail("K", K, "the number of candidates must be an integer >= 1")
  if np.any(K_arr > cfg.K_max):
    _fail("K", K, f"exceeds K_max={cfg.K_max}; raise K_max (static) to sweep larger K")
  for field, lo, hi in (("lam", 0.0, math.inf), ("phi", 0.0, 1.0), ("kappa", 0.0, 1.0),
                        ("alpha", 0.0, math.inf), ("beta", 0.0, 1.0), ("lr", 0.0, math.inf),
                        ("l2", 0.0, math.inf)):
    value = np.asarray(get(field), dtype=np.float64)
    if np.any(np.isnan(value)) or np.any(value < lo) or np.any(value > hi):
      _fail(field, get(field), f"must lie in [{lo}, {hi}]")
    if field in ("beta", "lr") and np.any(value <= 0):
      _fail(field, get(field), "must be > 0")
    if field in ("phi", "kappa", "alpha", "beta", "lr", "l2") and np.any(np.isinf(value)):
      _fail(field, get(field), "must be finite")


def _check_rewards(name: str, values) -> None:
  values = np.asarray(values)
  if not np.all(np.isfinite(values)):
    bad = values[~np.isfinite(values)][:3]
    raise ValueError(f"invalid reward: {name} is not finite on the data (values such as {bad})")


def make_model(cfg: types.Config, event_shape, n_atoms: int | None) -> Model:
  if cfg.model == "categorical":
    if n_atoms is None:
      _fail("model", cfg.model, "the categorical model needs a finite support")
    return make_categorical(n_atoms)
  if cfg.model == "gmm":
    return make_gmm(event_shape, cfg.gmm_components, cfg.em_steps)
  return make_flow(event_shape, width=cfg.width, depth=cfg.depth, train_steps=cfg.train_steps,
                   init_steps=cfg.init_steps, batch_size=cfg.batch_size, sample_steps=cfg.sample_steps)


def build(cfg: types.Config) -> Task:
  """Validate the static part of ``cfg`` and build its :class:`Task` (concrete arrays; outside ``jit``)."""
  validate_static(cfg)
  key = jax.random.PRNGKey(cfg.data_seed)
  k_real, k_support, k_eval = jax.random.split(key, 3)

  modes, mode_radius = None, 0.0
  if cfg.dataset == "gaussian8":
    draw = lambda k, n: data_lib.sample_gaussian8(k, n, cfg.n_modes, cfg.ring_radius, cfg.ring_std,
                                                  cfg.ring_scale)
    modes = jnp.asarray(data_lib.ring_modes(cfg.n_modes, cfg.ring_radius)) / cfg.ring_scale
    spacing = 2 * cfg.ring_radius * math.sin(math.pi / cfg.n_modes) / cfg.ring_scale
    mode_radius = min(0.25 * spacing, max(10 * cfg.ring_std / cfg.ring_scale, 0.05))
    default_x_star = (cfg.ring_radius, 0.0)
  elif cfg.dataset == "two_moons":
    draw = lambda k, n: data_lib.sample_two_moons(k, n, cfg.moons_noise)
    default_x_star = (-1.0, 0.0)
  else:
    points, weights = data_lib.validate_points(cfg.points, cfg.point_weights)
    draw = None
    default_x_star = tuple(points[0].tolist())

  if cfg.reward == "custom":
    reward = cfg.reward_fn
  else:
    x_star = cfg.x_star if cfg.x_star is not None else default_x_star
    reward = rewards_lib.clipped_distance(x_star, cfg.gamma, cfg.r_min)
  adv_reward = cfg.adv_reward_fn if cfg.adv_reward_fn is not None else rewards_lib.negated(reward)

  finite = cfg.dataset == "points" or cfg.model == "categorical"
  if finite:
    if cfg.dataset != "points":
      points = np.asarray(draw(k_support, cfg.n_atoms))
      weights = np.full(cfg.n_atoms, 1.0 / cfg.n_atoms, np.float32)
    support, p_data = jnp.asarray(points), jnp.asarray(weights)
    support_rewards = reward(support)
    if support_rewards.shape != (support.shape[0],):
      _fail("reward_fn", reward, f"must map [n, d] to [n]; got shape {support_rewards.shape}")
    _check_rewards("r", support_rewards)
    support_adv_rewards = adv_reward(support)
    _check_rewards("r~", support_adv_rewards)
    eval_idx = jax.random.categorical(k_eval, jnp.log(p_data), shape=(2000,))
    real_points = support[eval_idx]
    if cfg.model == "categorical":
      real_x = jnp.arange(support.shape[0], dtype=jnp.int32)
      real_w = p_data
      to_points = lambda idx: support[idx]
    else:
      real_x, real_w, to_points = support, p_data, lambda x: x
    model = make_model(cfg, (support.shape[1],), support.shape[0])
  else:
    support = p_data = support_rewards = support_adv_rewards = None
    real_x = draw(k_real, cfg.n_real)
    real_w = jnp.full((cfg.n_real,), 1.0 / cfg.n_real)
    real_points = draw(k_eval, 2000)
    r_real = reward(real_x)
    if r_real.shape != (cfg.n_real,):
      _fail("reward_fn", reward, f"must map [n, d] to [n]; got shape {r_real.shape}")
    _check_rewards("r", r_real)
    _check_rewards("r~", adv_reward(real_x))
    to_points = lambda x: x
    model = make_model(cfg, real_x.shape[1:], None)

  return Task(model=model, real_x=real_x, real_w=real_w, to_points=to_points, reward=reward,
              adv_reward=adv_reward, support=support, p_data=p_data, support_rewards=support_rewards,
              support_adv_rewards=support_adv_rewards,
              modes=modes, mode_radius=mode_radius, real_points=real_points)
