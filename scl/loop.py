"""The curated self-consuming loop: one pure :func:`step`, scanned over iterations.

::

    p_t --sample--> pool [P] --rewards r, r~--> (platform: pairs -> attack -> learned R~) --curate--> weights
    real data (1/(1+λ)) + curated (λ/(1+λ)) --refit (warm start)--> p_{t+1};   metrics and monitors of the step

:func:`make_run_fn` is the whole loop (``init`` of ``p_0`` on the real data, a ``lax.scan`` of :func:`step`,
the metrics of ``p_T``) as one pure function of the traced hyper-parameters, a key and the run's arrays
(:class:`~scl.task.TaskData`, an argument, never a constant of the program), so changing ``K``, ``λ``,
``φ``, ... or the seed never recompiles and :func:`scl.sweep` can map it over a grid. :func:`run` is the
user-facing call; with a ``workdir`` it runs the same step in chunks between atomic checkpoints
(:mod:`scl.checkpoint`) and resumes a stopped run with the same result as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np

from scl import config as config_lib
from scl import hyper as hyper_lib
from scl import metrics as metrics_lib
from scl import platform
from scl import registry
from scl import task as task_lib
from scl import theory

N_SNAPSHOT = 1000  # points kept per iteration for scatter plots


def iteration_key(key: chex.PRNGKey, t) -> chex.PRNGKey:
  """The key of iteration ``t`` (``t = -1`` is ``init``): independent of how the scan is chunked."""
  return jax.random.fold_in(key, t + 1)


def observe(params, samples: chex.Array, data: task_lib.TaskData, task: task_lib.Task) -> dict:
  """The metrics of ``p_t`` (:func:`scl.metrics.model_metrics`) and a snapshot of its points."""
  out = metrics_lib.model_metrics(task, data, params, samples)
  out["samples"] = task.to_points(data, samples[:N_SNAPSHOT])
  return out


def step(params, hyper: hyper_lib.Hyper, data: task_lib.TaskData, key: chex.PRNGKey, *,
         task: task_lib.Task) -> tuple[Any, dict]:
  """One iteration ``p_t -> p_{t+1}``; returns ``(params_{t+1}, outputs_t)``.

  ``outputs_t`` maps metric names to values describing ``p_t`` (and the step's preference statistics), plus
  ``samples`` (a snapshot of ``p_t``'s points) and, on a finite support, ``monitors``: the theorem monitors
  of the step ``p_t -> p_{t+1}`` (:func:`scl.theory.monitors`; NaN where the step is not the one the
  theorems describe).
  """
  cfg = task.cfg
  k_pool, k_curate, k_fit, k_prefs = jax.random.split(key, 4)
  pool = task.model.sample(params, k_pool, cfg.curation.pool_size)            # sample p_t
  points = task.to_points(data, pool)
  r = task.reward(data.reward, points)                                       # the users' rewards
  r_tilde = task.r_tilde(data.r_tilde, points)                               # the malicious users'
  r_tilde_support = None                                                     # the monitors' default: the task's
  out = observe(params, pool, data, task)
  curator = r
  if cfg.platform.active:                                                    # the platform's learned R~
    malicious = cfg.platform.learned_for == "malicious"
    learned = platform.learned_reward(k_prefs, points, r, hyper, data, task,
                                      support=data.support if task.finite and malicious else None)
    out.update(learned.stats)
    if malicious:                                                            # R~ is the φ share's r~ (on the
      r_tilde, r_tilde_support = learned.pool, learned.support               # atoms too, for the monitors)
    else:                                                                    # R~ curates for every user
      curator = learned.pool
  out["cov_r_rtilde_pool"], out["corr_r_rtilde_pool"] = metrics_lib.shifted_exp_covariance(r, r_tilde)
  curate = registry.CURATIONS[cfg.curation.name]                             # curate
  w_pool = curate(k_curate, curator, r_tilde, hyper, cfg.curation)
  share = hyper_lib.real_share(hyper.lam)                                   # mix with real data
  x_train = jnp.concatenate([data.real_x, pool], 0)
  w_train = jnp.concatenate([share * data.real_w, (1.0 - share) * w_pool], 0)
  params_next = task.model.fit(params, k_fit, x_train, w_train, hyper)       # refit
  if task.finite:                                                            # theorem monitors
    se = sampling_se(r, w_pool, task.reward(data.reward, data.support), share)
    out["monitors"] = {**step_monitors(task, data, hyper, params, params_next, se, r_tilde_support),
                       "monitor_se": se}
  return params_next, out


def sampling_se(r_pool: chex.Array, w_pool: chex.Array, r_support: chex.Array, share: chex.Array) -> chex.Array:
  """Standard error of ``E_{p_{t+1}}[e^{r - r*}]`` over the curated pool's sampling (scaled units).

  On a finite support the refit is the weighted histogram of the real data (``p_data`` itself, no noise) and
  the curated pool, so ``E_{p_{t+1}}[ā] = s E_{p_data}[ā] + (1 - s) Σ_i w̃_i ā_i`` (``w̃`` the pool's normalised
  weights). Its standard error is ``(1 - s) sqrt(Var_w̃[ā] Σ_i w̃_i²)`` (Kish's effective sample size).
  """
  r_star = jnp.max(r_support)
  a = jnp.exp(jnp.minimum(r_pool - r_star, 0.0))
  w = w_pool / jnp.maximum(jnp.sum(w_pool), jnp.finfo(w_pool.dtype).tiny)
  mean = jnp.sum(w * a)
  var = jnp.sum(w * (a - mean) ** 2)
  return (1.0 - share) * jnp.sqrt(var * jnp.sum(w ** 2))


def step_monitors(task: task_lib.Task, data: task_lib.TaskData, hyper, params, params_next,
                  se: chex.Array | float = 0.0, r_tilde: chex.Array | None = None) -> dict:
  """Ferbach Lemma 2.2 / Thm 2.3 / Thm 2.4 and Wei Lemma 3.3 for ``p_t -> p_{t+1}`` on a finite support.

  They describe K-choice curation by the true reward (``r~`` for the ``φ`` share: ``r_tilde`` on the support,
  default the task's; the platform's ``R~`` with ``learned_for="malicious"``) with an exact refit, from
  ``p_0 = p_data`` (the categorical model's ``init`` is exact maximum likelihood on ``p_data``). For any other
  step — a pool filter (``topk``, ``luce_pool``), or honest users curating through the learned reward — every
  bound (``*_rhs``, ``*_slack``, ``*_holds``, ``g_*``) is NaN; the measured quantities (covariances,
  ``exp_reward_prev``) are still reported. Lemma 3.4 (``lemma34_*``, an asymptotic bound on the running
  minimum covariance) is monitored by :func:`scl.exact.run` only, and is NaN here.

  ``p_{t+1}`` is fitted to a sample, so its ``E[e^r]`` is off the exact step's by sampling noise of standard error
  ``se`` (:func:`sampling_se`, reported as ``monitor_se``): the ``*_holds`` comparisons of expectations allow
  ``4 se`` (a false violation about once in 30,000 steps); the ``*_slack`` values are the margins as measured.
  Theorem 2.4's KL comparison has no such allowance: a sampled refit's ``KL(p_{t+1} || p_data)`` is biased
  upward by about ``(1 - s)^2 (atoms - 1) / (2 n_eff)``, so read ``thm24_slack`` against that size.
  """
  cfg = task.cfg
  p, p_next = task.model.probs(params), task.model.probs(params_next)
  if r_tilde is None:
    r_tilde = task.r_tilde(data.r_tilde, data.support)
  out = theory.monitors(p, p_next, task.reward(data.reward, data.support), hyper.K.astype(jnp.float32),
                        hyper_lib.real_share(hyper.lam), data.p_data, r_tilde, hyper.phi, rtol=1e-5,
                        atol=4.0 * se)
  # With the platform, the step is the theorems' only when R~ is the malicious users' r~ (honest users keep r).
  honest_r = not cfg.platform.active or cfg.platform.learned_for == "malicious"
  applies = registry.CURATIONS.meta(cfg.curation.name, "k_choice", False) and honest_r
  bound = lambda name: name.endswith(("_rhs", "_slack", "_holds")) or name.startswith("g_")
  # Lemma 3.4 needs the running minimum covariance over the iterations: scl.exact.run carries it.
  skip = lambda name: (not applies and bound(name)) or name.startswith("lemma34")
  return {name: jnp.full_like(v, jnp.nan) if skip(name) else v for name, v in out.items()}


def final_outputs(params, hyper, data: task_lib.TaskData, key: chex.PRNGKey, task: task_lib.Task) -> dict:
  """The outputs of ``p_T``: :func:`step`'s keys, with what only a step computes (preference statistics,
  monitors) NaN — no step follows ``p_T``."""
  template = jax.eval_shape(functools.partial(step, task=task), params, hyper, data, key)[1]
  out = jax.tree.map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype), template)
  pool = task.cfg.curation.pool_size  # the same snapshot size as the steps' (the pool may be small)
  n = max(min(task.cfg.data.n_eval, pool), min(N_SNAPSHOT, pool))
  out.update(observe(params, task.model.sample(params, key, n), data, task))
  return out


def init(hyper, key: chex.PRNGKey, data: task_lib.TaskData, task: task_lib.Task):
  """``p_0``: the model fitted from scratch on the real data."""
  del hyper
  return task.model.init(iteration_key(key, -1), data.real_x, data.real_w)


def scan_steps(params, hyper, key, data, ts: chex.Array, task: task_lib.Task):
  """:func:`step` scanned over iterations ``ts``; returns ``(params, outputs [len(ts), ...])``."""
  body = lambda params, t: step(params, hyper, data, iteration_key(key, t), task=task)
  return jax.lax.scan(body, params, ts)


def stack(last: dict, history: dict | None) -> dict:
  """Append the final outputs to the scanned ones, align the monitors and flatten them.

  A step's monitors describe ``p_t -> p_{t+1}``; rolling them down one row puts them at row ``t + 1``, as in
  :func:`scl.exact.run` (row 0, and only it, is NaN: the final outputs' NaN row wraps around). The result is
  flat: metric name -> ``[T + 1, ...]``, plus ``samples``.
  """
  if history is None:
    outs = jax.tree.map(lambda a: a[None], last)
  else:
    outs = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]], 0), history, last)
  monitors = outs.pop("monitors", {})
  return {**outs, **{name: jnp.roll(v, 1, axis=0) for name, v in monitors.items()}}


def make_run_fn(cfg: config_lib.Config) -> tuple[Callable, task_lib.TaskData]:
  """The whole loop as a pure function and the arrays it takes: ``(run_fn, data)``.

  ``run_fn(hyper, key, data) -> (params_T, outputs)`` (not jitted; ``hyper`` from ``cfg.hyper.arrays()``):
  ``outputs`` maps each metric name to ``[T + 1, ...]`` (row ``t`` describes ``p_t``) and ``samples`` to
  ``[T + 1, N_SNAPSHOT, d]``. Validates ``cfg``'s static settings first (the traced values come with each call).
  """
  task, data = task_lib.build(cfg)
  T = task.cfg.iterations

  def run_fn(hyper, key, data):
    params = init(hyper, key, data, task)
    params, history = scan_steps(params, hyper, key, data, jnp.arange(T), task)
    final = final_outputs(params, hyper, data, iteration_key(key, T), task)
    return params, stack(final, history if T > 0 else None)

  return run_fn, data


@registry.on_replace
@functools.lru_cache(maxsize=16)
def _jitted_run(static_cfg: config_lib.Config) -> tuple[Callable, task_lib.TaskData]:
  run_fn, data = make_run_fn(static_cfg)
  return jax.jit(run_fn), data


@registry.on_replace
@functools.lru_cache(maxsize=16)
def jitted_pieces(static_cfg: config_lib.Config):
  """``(init, chunk, final, data)`` jitted separately, for runs checkpointed between chunks of steps."""
  task, data = task_lib.build(static_cfg)
  T = task.cfg.iterations
  return (jax.jit(functools.partial(init, task=task)),
          jax.jit(functools.partial(scan_steps, task=task)),
          jax.jit(lambda params, hyper, key, data: final_outputs(params, hyper, data, iteration_key(key, T),
                                                                 task)),
          data)


@dataclasses.dataclass
class Result:
  """What :func:`run` returns.

  Attributes:
    config: the run's :class:`~scl.config.Config`.
    seed: its seed.
    metrics: metric name -> numpy array ``[T + 1, ...]``; row ``t`` describes ``p_t`` (row 0 is ``p_0``).
    samples: ``[T + 1, N_SNAPSHOT, d]`` points drawn from each ``p_t`` (for scatter plots).
    params: the final model's params ``p_T``.
  """

  config: config_lib.Config
  seed: int
  metrics: dict[str, np.ndarray]
  samples: np.ndarray
  params: Any = None

  def table(self):
    """The metrics as a pandas DataFrame, one row per iteration (vector metrics as ``name_j`` columns)."""
    import pandas as pd
    columns = {"iteration": np.arange(self.samples.shape[0])}
    for name, value in self.metrics.items():
      value = np.asarray(value)
      if value.ndim == 1:
        columns[name] = value
      else:
        for j in range(value.shape[1]):
          columns[f"{name}_{j}"] = value[:, j]
    return pd.DataFrame(columns)


def to_result(cfg, seed, params, outs) -> Result:
  """Device outputs -> a :class:`Result`; a run whose expected reward is not finite raises."""
  outs = jax.device_get(outs)
  samples = np.asarray(outs.pop("samples"))
  metrics = {k: np.asarray(v) for k, v in outs.items()}
  bad = np.flatnonzero(~np.isfinite(metrics["expected_reward"]))
  if bad.size:
    raise FloatingPointError(f"expected_reward is not finite at iteration {int(bad[0])}: the model "
                             "diverged (check the learning rate and the data scale)")
  return Result(config=cfg, seed=seed, metrics=metrics, samples=samples, params=params)


def check_run_args(seed: Any, checkpoint_every: Any = 1) -> None:
  """Raise ``ValueError`` naming the value unless ``seed`` is an integer in ``[0, 2**32)`` and ``checkpoint_every``
  an integer ``>= 1`` (what :func:`run` checks; binaries call it before their first run's work)."""
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < config_lib.SEED_LIMIT:
    raise ValueError(f"invalid seed={seed!r}: must be an integer in [0, 2**32)")
  if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, (int, np.integer)) \
      or checkpoint_every < 1:
    raise ValueError(f"invalid checkpoint_every={checkpoint_every!r}: must be an integer >= 1")


def run(cfg: config_lib.Config, seed: int = 0, *, workdir: str | None = None, checkpoint_every: int = 1,
        progress: bool | None = None) -> Result:
  """Run the curated loop of ``cfg`` for ``cfg.iterations`` iterations from ``jax.random.PRNGKey(seed)``.

  Without ``workdir`` the loop is one jitted ``lax.scan``. With ``workdir`` it runs in chunks of
  ``checkpoint_every`` iterations, writing an atomic checkpoint after each chunk (``checkpoint.msgpack``),
  shows progress, and resumes from the checkpoint when called again with the same ``workdir`` and config;
  the result equals an uninterrupted run's.

  Changing the traced values of ``cfg`` (``K``, ``lam``, ``phi``, ``kappa``, ``alpha``, ``beta``, ``lr``,
  ``l2``) or the seed reuses the compiled program.

  Raises:
    ValueError: before any compute, for an invalid config (the message names the field and the value) or a
      seed that is not an integer in ``[0, 2**32)``.
  """
  cfg.validate()
  check_run_args(seed, checkpoint_every)
  key = jax.random.PRNGKey(seed)
  if workdir is None:
    fn, data = _jitted_run(cfg.static())
    params, outs = fn(cfg.hyper.arrays(), key, data)
    return to_result(cfg, seed, params, outs)
  from scl import checkpoint
  return checkpoint.run_with_checkpoints(cfg, seed, workdir, int(checkpoint_every),
                                         True if progress is None else progress)
