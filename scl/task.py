"""From a :class:`~scl.config.Config` to what a run needs: the static :class:`Task` and its array data.

:func:`build` looks every component up in its registry (:mod:`scl.registry`) and returns two things:

* a :class:`Task` — the static part: the model family, the reward functions, the sizes. It is built once per
  static config (cached), so a jitted program closes over functions only.
* a :class:`TaskData` — every array a run needs (real data, support, ``p_data``, reward parameters such as
  ``x*`` or classifier weights), a pytree passed to the compiled program as an argument, never baked into
  it as a constant: the program does not grow with the data.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from scl import config as config_lib
from scl import metrics as metrics_lib
from scl import registry
from scl import reward_model
from scl import rewards as rewards_lib
from scl.models.base import Model

#: Points of ``p_data`` kept for the sample-based distances (energy distance).
N_EVAL_POINTS = 2000


class Dataset(NamedTuple):
  """What a registered data-set builder ``(cfg) -> Dataset`` returns (concrete arrays, outside ``jit``).

  A continuous data set gives ``sample``; a finite one gives its ``support`` and ``weights`` (``p_data``).

  An empirical data set (images) gives ``real``, the whole training set, and the ``classifier`` that
  defines its rewards and image metrics.

  Attributes:
    sample: ``(key, n) -> [n, *event]`` i.i.d. draws of ``p_data`` (None for a finite data set).
    support: ``[n_atoms, *event]`` atoms of a finite data set, else None.
    weights: ``[n_atoms]`` ``p_data`` on the atoms (sum 1), else None.
    anchor: a point ``[d]``: the default ``x*`` of the clipped-distance reward (mode 0, the first atom).
    modes: ``[m, d]`` mode centres for the mode proportions, or None.
    mode_radius: points farther than this from every mode count as off-mode.
    real: ``(x [N, *event], w [N])`` the real data set itself (images: the training split), or None.
    classifier: ``(scl.classifier.Classifier, params)`` trained on the real data, or None.
  """

  sample: Callable[[chex.PRNGKey, int], chex.Array] | None = None
  support: Any = None
  weights: Any = None
  anchor: tuple[float, ...] | None = None
  modes: Any = None
  mode_radius: float = 0.0
  real: Any = None
  classifier: Any = None


class TaskData(NamedTuple):
  """The arrays of a run (a pytree, an argument of the compiled program).

  Attributes:
    real_x, real_w: ``p_data`` as weighted samples in the model's sample space (``[R, *event]``, ``[R]``;
      on a finite support every atom, weighted by ``p_data`` exactly; for the categorical model the atoms'
      indices).
    eval_points: ``[N_EVAL_POINTS, d]`` a fixed sample of ``p_data`` for the energy distance.
    support: ``[n_atoms, d]`` atoms of a finite support, else None.
    p_data: ``[n_atoms]`` ``p_data`` on the support, else None.
    modes: ``[m, d]`` mode centres, else None; mode_radius: scalar.
    reward, r_tilde: parameters of the users' reward ``r`` and of the malicious users' ``r~`` (pytrees).
    images: on image data sets, ``{"classifier": params, "features": [M, F], "radii": [M], "mu": [F],
      "cov": [F, F]}``: the classifier and the penultimate features of (up to ``N_EVAL_POINTS``) real
      training images with their k-NN radii and Gaussian statistics (:func:`scl.metrics.image_metrics`);
      else None.
  """

  real_x: chex.Array
  real_w: chex.Array
  eval_points: chex.Array
  support: Any
  p_data: Any
  modes: Any
  mode_radius: chex.Array
  reward: Any
  r_tilde: Any
  images: Any = None


class Task(NamedTuple):
  """The static part of a run (functions and sizes).

  Attributes:
    cfg: the static config (traced values at their defaults).
    model: the generative model family.
    reward, r_tilde: ``(params, points [n, d]) -> [n]``, the users' reward ``r`` and the malicious users'
      ``r~``; their parameters are ``TaskData.reward`` / ``TaskData.r_tilde``.
    finite: the model lives on a finite support (samples are atom indices; metrics are exact).
    classifier: the image classifier (:class:`scl.classifier.Classifier`), or None.
  """

  cfg: config_lib.Config
  model: Model
  reward: Callable[[Any, chex.Array], chex.Array]
  r_tilde: Callable[[Any, chex.Array], chex.Array]
  finite: bool
  classifier: Any = None

  def platform_inputs(self, data: TaskData, points: chex.Array) -> chex.Array:
    """What the platform's reward model sees of ``points``: the points, or (images) the classifier's
    logits or penultimate features (``cfg.platform.reward_input``)."""
    how = self.cfg.platform.reward_input
    if how == "points":
      return points
    logits, features = self.classifier.apply(data.images["classifier"], points)
    return logits if how == "logits" else features

  def to_points(self, data: TaskData, samples: chex.Array) -> chex.Array:
    """Model samples -> points (atom lookup on a finite support, else the samples themselves)."""
    return data.support[samples] if self.finite else samples


#: Rows of one call when a reward is checked on a larger data set (one pass of a classifier over CIFAR's 50,000
#: training images at once would hold tens of GB of activations).
CHECK_ROWS = 1024


def _check_reward(field: str, apply: Callable, params: Any, x: chex.Array) -> None:
  """The reward named by the config ``field`` maps ``[n, ...]`` to ``[n]`` finite values on the data ``x``.

  Up to :data:`CHECK_ROWS` rows in one call; a larger ``x`` in chunks of that many (the first called directly,
  the rest jitted, :func:`scl.reward_model.in_chunks`), so the check's memory does not grow with the data set.
  """
  n = x.shape[0]
  rows = min(n, CHECK_ROWS)
  values = np.asarray(apply(params, x[:rows]))
  if values.shape != (rows,):
    raise ValueError(f"invalid config: {field}: the reward must map [n, d] to [n]; got shape {values.shape} "
                     f"for n={rows}")
  if n > rows:
    more = jax.jit(reward_model.in_chunks(apply, rows))(params, x[rows:])
    values = np.concatenate([values, np.asarray(more)])
  if not np.all(np.isfinite(values)):
    bad = np.flatnonzero(~np.isfinite(values))[:3]
    raise ValueError(f"invalid reward: {field} is not finite on the data (rows {bad.tolist()}: values "
                     f"{values[bad]})")


def reward_functions(cfg: config_lib.Config) -> tuple[Callable, Callable]:
  """The users' reward ``r`` and the malicious users' ``r~`` of ``cfg`` as functions ``[n, d] -> [n]``
  (their parameters bound; for plots and analysis outside the loop)."""
  task, data = build(cfg)
  return (lambda x: task.reward(data.reward, x)), (lambda x: task.r_tilde(data.r_tilde, x))


def support_arrays(cfg: config_lib.Config) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``(p_data, r, r~)`` on the finite support of ``cfg`` (``[n]`` each), the inputs of :mod:`scl.exact`.

  A continuous data set is discretised to ``n_atoms`` points, as for the categorical model
  (``cfg.replace(model="categorical")``).
  """
  if not registry.MODELS.meta(cfg.model.name, "finite_support", False):
    cfg = cfg.replace(model="categorical")
  task, data = build(cfg)
  return (np.asarray(data.p_data), np.asarray(task.reward(data.reward, data.support)),
          np.asarray(task.r_tilde(data.r_tilde, data.support)))


@registry.on_replace
@functools.lru_cache(maxsize=32)
def build(cfg: config_lib.Config) -> tuple[Task, TaskData]:
  """Validate ``cfg`` and build its :class:`Task` and :class:`TaskData` (cached on the static config)."""
  cfg = cfg.static().validate(traced=False)  # the caller checked the traced values (scl.run, scl.sweep)
  dataset = registry.DATASETS[cfg.data.name](cfg)
  reward = registry.REWARDS[cfg.reward.name](cfg, dataset)
  r_tilde = (rewards_lib.Reward(None, lambda _, x: cfg.reward.r_tilde_fn(x))
             if cfg.reward.r_tilde_fn is not None else rewards_lib.negated(reward))
  k_real, k_support, k_eval = jax.random.split(jax.random.PRNGKey(cfg.data.data_seed), 3)

  as_indices = registry.MODELS.meta(cfg.model.name, "finite_support", False)
  if dataset.real is not None:  # An empirical data set (images): the real data is the whole set.
    if as_indices:
      raise ValueError(f"invalid config: model={cfg.model.name!r}: data set {cfg.data.name!r} has no finite "
                       "support to put it on")
    support = p_data = None
    real_x, real_w = (jnp.asarray(a) for a in dataset.real)
    eval_idx = jax.random.choice(k_eval, real_x.shape[0], (min(N_EVAL_POINTS, real_x.shape[0]),), replace=False)
    eval_points = real_x[eval_idx]
    checked = real_x
    model = registry.MODELS[cfg.model.name](cfg, tuple(real_x.shape[1:]), None)
  elif dataset.support is not None or as_indices:  # A finite support: given, or a discretised data set.
    if dataset.support is not None:
      support, p_data = jnp.asarray(dataset.support), jnp.asarray(dataset.weights)
    else:
      support = dataset.sample(k_support, cfg.data.n_atoms)
      p_data = jnp.full((cfg.data.n_atoms,), 1.0 / cfg.data.n_atoms, jnp.float32)
    real_w = p_data
    real_x = jnp.arange(support.shape[0], dtype=jnp.int32) if as_indices else support
    eval_points = support[jax.random.categorical(k_eval, jnp.log(p_data), shape=(N_EVAL_POINTS,))]
    checked = support
    model = registry.MODELS[cfg.model.name](cfg, tuple(support.shape[1:]), support.shape[0])
  else:
    support = p_data = None
    real_x = dataset.sample(k_real, cfg.data.n_real)
    real_w = jnp.full((cfg.data.n_real,), 1.0 / cfg.data.n_real)
    eval_points = dataset.sample(k_eval, N_EVAL_POINTS)
    checked = real_x
    model = registry.MODELS[cfg.model.name](cfg, tuple(real_x.shape[1:]), None)
  r_field = "reward_fn" if cfg.reward.name == "custom" else f"reward={cfg.reward.name!r}"
  _check_reward(r_field, reward.apply, reward.params, checked)
  _check_reward("r_tilde_fn" if cfg.reward.r_tilde_fn is not None else f"r~ = -r ({r_field})",
                r_tilde.apply, r_tilde.params, checked)

  modes = None if dataset.modes is None else jnp.asarray(dataset.modes, jnp.float32)
  classifier, images = None, None
  if dataset.classifier is not None:
    classifier, params = dataset.classifier
    n_images = min(cfg.data.n_eval, cfg.curation.pool_size)  # the first n_eval of each iteration's pool
    if n_images <= metrics_lib.K_NEIGHBOURS or eval_points.shape[0] <= metrics_lib.K_NEIGHBOURS:
      raise ValueError(f"invalid config: n_eval={cfg.data.n_eval!r}, pool_size={cfg.curation.pool_size!r}: the "
                       f"image metrics compare {n_images} model images with {eval_points.shape[0]} real ones; "
                       f"precision and recall need more than k = {metrics_lib.K_NEIGHBOURS} of each (their "
                       f"k-th nearest neighbour), the Fréchet distance at least 2")
    _, features = jax.jit(classifier.apply)(params, eval_points)
    mu, cov = metrics_lib.gaussian_stats(features)
    images = {"classifier": params, "features": features, "mu": mu, "cov": cov,
              "radii": metrics_lib.knn_radii(features, metrics_lib.K_NEIGHBOURS)}
  data = TaskData(real_x=real_x, real_w=real_w, eval_points=eval_points, support=support, p_data=p_data,
                  modes=modes, mode_radius=jnp.asarray(dataset.mode_radius, jnp.float32),
                  reward=reward.params, r_tilde=r_tilde.params, images=images)
  task = Task(cfg=cfg, model=model, reward=reward.apply, r_tilde=r_tilde.apply, finite=as_indices,
              classifier=classifier)
  if cfg.platform.reward_input != "points" and classifier is None:
    raise ValueError(f"invalid config: reward_input={cfg.platform.reward_input!r}: needs an image data set "
                     f"with a classifier; {cfg.data.name!r} has none")
  return task, data
