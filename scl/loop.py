"""The curated self-consuming loop: one pure step, scanned over iterations.

::

    p_t --sample--> pool [P] --metrics--> metrics_t
                      \\--rewards--> curate (K, φ, r, r~) --> weights over the pool
    real data (1/(1+λ)) + curated (λ/(1+λ)) --fit (warm start)--> p_{t+1}

:func:`make_run` compiles the whole loop (``init`` of ``p_0`` on the real data, then a ``lax.scan`` of
``T`` steps, then the metrics of ``p_T``) into one jitted function of the traced hyper-parameters and a key,
so changing ``K``, ``λ``, ``φ``, ... or the seed never recompiles, and :func:`scl.sweep` can ``vmap`` it.
:func:`run` is the user-facing call; with a ``workdir`` it runs the same step in chunks between atomic
checkpoints and resumes a stopped run, giving the same result as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from scl import attacks as attacks_lib
from scl import curation
from scl import io as io_lib
from scl import metrics as metrics_lib
from scl import preferences
from scl import reward_model
from scl import tasks as tasks_lib
from scl import theory
from scl import types

N_SNAPSHOT = 1000  # points kept per iteration for scatter plots


def pool_size(cfg: types.Config) -> int:
  """Model samples drawn per iteration."""
  if cfg.curation == "choice" and cfg.fresh_candidates:
    return cfg.n_keep * cfg.K_max
  return cfg.pool_size


def iteration_key(key: chex.PRNGKey, t) -> chex.PRNGKey:
  """The key of iteration ``t`` (``t = -1`` is ``init``): independent of how the scan is chunked."""
  return jax.random.fold_in(key, t + 1)


@dataclasses.dataclass(frozen=True)
class Program:
  """The pure pieces of a run, before ``jit``.

  Attributes:
    task: the concrete data, rewards and model.
    init: ``(hyper, key) -> params`` of ``p_0``.
    step: ``(params, hyper, key) -> (params_next, outputs_t)``; ``outputs_t`` holds the metrics of
      ``p_t``, ``samples``, a snapshot ``[N_SNAPSHOT, d]`` of its points, and for models with a probability
      vector ``monitors``, the theorem monitors of the step ``p_t -> p_{t+1}`` (:func:`scl.theory.monitors`).
    evaluate: ``(params, hyper, key) -> outputs`` for the final model.
  """

  task: tasks_lib.Task
  init: Callable
  step: Callable
  evaluate: Callable


def make_program(cfg: types.Config) -> Program:
  """Build the pure init/step/evaluate functions of ``cfg`` (validates ``cfg`` first)."""
  task = tasks_lib.build(cfg)
  model = task.model
  P = pool_size(cfg)
  n_eval = min(cfg.n_eval, P)

  def outputs(params, samples):
    if model.probs is not None:
      out = metrics_lib.from_probs(task, model.probs(params), samples)
    else:
      out = metrics_lib.from_samples(task, samples[:n_eval])
    out["samples"] = task.to_points(samples[:N_SNAPSHOT])
    return out

  def curate(key, r_pool, r_adv_pool, hyper):
    if cfg.curation == "choice":
      return curation.choice_weights(key, r_pool, hyper.K, n_keep=cfg.n_keep, K_max=cfg.K_max,
                                     fresh=cfg.fresh_candidates, r_adv_pool=r_adv_pool, phi=hyper.phi)
    if cfg.curation == "topk":
      return curation.topk_weights(key, r_pool, hyper.beta, r_adv_pool=r_adv_pool, phi=hyper.phi)
    return curation.luce_pool_weights(key, r_pool, hyper.beta, r_adv_pool=r_adv_pool, phi=hyper.phi)

  def monitors(p_prev, p_next, hyper):
    # Ferbach Lemma 2.2 / Thm 2.3 / Thm 2.4 and Wei Lemma 3.3 for the step p_t -> p_{t+1} (finite support).
    return theory.monitors(p_prev, p_next, task.support_rewards, hyper.K.astype(jnp.float32),
                           hyper.real_share, task.p_data, r_adv=task.support_adv_rewards, phi=hyper.phi,
                           rtol=1e-5)

  learned = cfg.attack != "none" or cfg.learned_reward
  net = reward_model.mlp_reward(tuple(cfg.reward_hidden)) if learned else None
  n_attack_pool = min(P, 4 * cfg.n_pairs)

  def platform_reward(key, points, r_pool, hyper):
    """Wei & Zhang's system: preferences on pairs of p_t's samples, an attacker who flips κn labels,
    and the platform's Bradley–Terry reward R~ fitted on the (partly flipped) labels. Returns R~ on the pool
    and the step's preference metrics."""
    k_pairs, k_labels, k_init, k_attack, k_held = jax.random.split(key, 5)
    x, z = preferences.draw_pairs(k_pairs, points, cfg.n_pairs)
    o = preferences.label_pairs(k_labels, task.reward(x), task.reward(z), cfg.labels)
    theta0 = net.init(k_init, x[:1])
    # The attacker's estimate R_θ of the users' reward, from genuine preferences it collected itself.
    theta = reward_model.fit_reward(theta0, net.apply, x, z, o, hyper.l2)
    o_flipped, mask = attacks_lib.attack(cfg.attack, k_attack, x, z, o, kappa=hyper.kappa, alpha=hyper.alpha,
                                         params=theta, apply_fn=net.apply, x_pool=points[:n_attack_pool],
                                         l2=hyper.l2, steps=cfg.attack_steps)
    theta_platform = reward_model.fit_reward(theta, net.apply, x, z, o_flipped, hyper.l2)
    r_tilde = net.apply(theta_platform, points)
    xh, zh = preferences.draw_pairs(k_held, points, cfg.n_pairs)
    oh = preferences.label_pairs(k_held, task.reward(xh), task.reward(zh), "deterministic")
    # Cov_{p_t}[e^r, e^{R~}] with each reward shifted by its max (the scale of R~ is arbitrary: only
    # its sign and the correlation are comparable across attacks).
    a = jnp.exp(r_pool - jnp.max(r_pool))
    b = jnp.exp(r_tilde - jnp.max(r_tilde))
    cov = jnp.mean((a - a.mean()) * (b - b.mean()))
    stats = {
        "n_flips": jnp.sum(mask).astype(jnp.float32),
        "cov_r_rtilde": cov,
        "corr_r_rtilde": cov / jnp.maximum(a.std() * b.std(), 1e-30),
        "reward_accuracy": reward_model.pairwise_accuracy(theta_platform, net.apply, xh, zh, oh),
    }
    return r_tilde, stats

  def init(hyper, key):
    del hyper
    return model.init(key, task.real_x, task.real_w)

  def step(params, hyper, key):
    k_pool, k_curate, k_fit, k_prefs = jax.random.split(key, 4)
    pool = model.sample(params, k_pool, P)
    points = task.to_points(pool)
    r_pool = task.reward(points)
    r_adv_pool = task.adv_reward(points)
    out = outputs(params, pool)
    r_curator = r_pool
    if learned:
      r_curator, stats = platform_reward(k_prefs, points, r_pool, hyper)
      out.update(stats)
    w_pool = curate(k_curate, r_curator, r_adv_pool, hyper)
    x_train = jnp.concatenate([task.real_x, pool], 0)
    w_train = jnp.concatenate([hyper.real_share * task.real_w, (1.0 - hyper.real_share) * w_pool], 0)
    new_params = model.fit(params, k_fit, x_train, w_train, hyper)
    if model.probs is not None:
      out["monitors"] = monitors(model.probs(params), model.probs(new_params), hyper)
    return new_params, out

  def evaluate(params, hyper, key):
    out = outputs(params, model.sample(params, key, max(n_eval, N_SNAPSHOT)))
    if learned:  # No preferences are collected from p_T: same keys, NaN values.
      out.update({k: jnp.asarray(jnp.nan) for k in ("n_flips", "cov_r_rtilde", "corr_r_rtilde",
                                                     "reward_accuracy")})
    if model.probs is not None:  # No step follows p_T: same keys, NaN values.
      p = model.probs(params)
      out["monitors"] = jax.tree.map(lambda v: jnp.full_like(v, jnp.nan), monitors(p, p, hyper))
    return out

  return Program(task=task, init=init, step=step, evaluate=evaluate)


def _scan(program: Program, params, hyper, key, ts):
  def body(params, t):
    return program.step(params, hyper, iteration_key(key, t))
  return jax.lax.scan(body, params, ts)


def _stack(last: dict, history: dict | None) -> dict:
  """Append the final evaluation to the scanned outputs, align the monitors and flatten them.

  A step's monitors describe ``p_t -> p_{t+1}``; rolling them down one row puts them at row ``t + 1``, as in
  :func:`scl.exact.run` (row 0, and only it, is NaN: the final evaluation's NaN row wraps around). The
  result is flat: metric name -> ``[T + 1, ...]``, plus ``samples``.
  """
  if history is None:
    outs = jax.tree.map(lambda a: a[None], last)
  else:
    outs = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]], 0), history, last)
  monitors = outs.pop("monitors", {})
  return {**outs, **{name: jnp.roll(v, 1, axis=0) for name, v in monitors.items()}}


def make_run_fn(cfg: types.Config) -> Callable:
  """The whole loop as a pure function ``(hyper, key) -> (params_T, outputs)`` (not yet jitted).

  ``outputs`` maps each metric name to ``[T + 1, ...]`` (row ``t`` describes ``p_t``) and ``samples`` to
  ``[T + 1, N_SNAPSHOT, d]``.
  """
  program = make_program(cfg)
  T = cfg.iterations

  def run_fn(hyper: types.Hyper, key: chex.PRNGKey):
    params = program.init(hyper, iteration_key(key, -1))
    params, outs = _scan(program, params, hyper, key, jnp.arange(T))
    final = program.evaluate(params, hyper, iteration_key(key, T))
    outs = _stack(final, outs if T > 0 else None)
    return params, outs

  return run_fn


@functools.lru_cache(maxsize=64)
def _jitted_run(static_cfg: types.Config) -> Callable:
  return jax.jit(make_run_fn(static_cfg))


def make_run(cfg: types.Config) -> Callable:
  """The jitted loop ``(hyper, key) -> (params_T, outputs)``, cached on the static part of ``cfg``.

  Example: ``fn = make_run(cfg); fn.lower(cfg.hyper(), key).compile()`` compiles without running.
  """
  tasks_lib.validate(cfg)
  return _jitted_run(cfg.static())


@functools.lru_cache(maxsize=64)
def _jitted_pieces(static_cfg: types.Config):
  program = make_program(static_cfg)
  init = jax.jit(lambda hyper, key: program.init(hyper, iteration_key(key, -1)))
  chunk = jax.jit(functools.partial(_scan, program), static_argnames=())
  evaluate = jax.jit(lambda params, hyper, key: program.evaluate(params, hyper,
                                                                 iteration_key(key, static_cfg.iterations)))
  return init, chunk, evaluate


@dataclasses.dataclass
class Result:
  """What :func:`run` returns.

  Attributes:
    config: the run's :class:`~scl.types.Config`.
    seed: its seed.
    metrics: metric name -> numpy array ``[T + 1, ...]``; row ``t`` describes ``p_t`` (row 0 is ``p_0``).
    samples: ``[T + 1, N_SNAPSHOT, d]`` points drawn from each ``p_t`` (for scatter plots).
    params: the final model's params ``p_T``.
  """

  config: types.Config
  seed: int
  metrics: dict[str, np.ndarray]
  samples: np.ndarray
  params: Any = None

  def table(self):
    """The scalar metrics as a pandas DataFrame, one row per iteration (mode proportions as columns)."""
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


def _to_result(cfg, seed, params, outs) -> Result:
  outs = jax.device_get(outs)
  samples = np.asarray(outs.pop("samples"))
  metrics = {k: np.asarray(v) for k, v in outs.items()}
  bad = np.flatnonzero(~np.isfinite(metrics["expected_reward"]))
  if bad.size:
    raise FloatingPointError(f"expected_reward is not finite at iteration {int(bad[0])}: the model "
                             "diverged (check the learning rate and the data scale)")
  return Result(config=cfg, seed=seed, metrics=metrics, samples=samples, params=params)


def run(cfg: types.Config, seed: int = 0, *, workdir: str | None = None, checkpoint_every: int = 1,
        progress: bool | None = None) -> Result:
  """Run the curated loop of ``cfg`` for ``cfg.iterations`` iterations.

  Without ``workdir`` the loop is one jitted ``lax.scan``. With ``workdir`` it runs in chunks of
  ``checkpoint_every`` iterations, writing an atomic checkpoint after each chunk (``checkpoint.msgpack``),
  shows progress, and resumes from the checkpoint when called again with the same ``workdir`` and config;
  the result equals an uninterrupted run's.

  Changing the dynamic fields of ``cfg`` (``K``, ``lam``, ``phi``, ``kappa``, ``alpha``, ``beta``, ``lr``,
  ``l2``) or the seed reuses the compiled program.
  """
  tasks_lib.validate(cfg)
  hyper = cfg.hyper()
  key = jax.random.PRNGKey(seed)
  if workdir is None:
    params, outs = _jitted_run(cfg.static())(hyper, key)
    return _to_result(cfg, seed, params, outs)
  return _run_with_checkpoints(cfg, seed, hyper, key, workdir, max(1, int(checkpoint_every)),
                               True if progress is None else progress)


def config_fingerprint(cfg: types.Config, seed: int) -> dict:
  """A JSON-able description of a run, used to refuse resuming a different run from a checkpoint."""
  fields = {}
  for f in dataclasses.fields(cfg):
    value = getattr(cfg, f.name)
    if value is None or isinstance(value, (str, int, float, bool)):
      fields[f.name] = value
    elif isinstance(value, tuple):
      fields[f.name] = list(value)
    elif hasattr(value, "__array__"):
      arr = np.asarray(value)
      fields[f.name] = f"array{arr.shape}:{hash(arr.tobytes())}"
    else:
      fields[f.name] = getattr(value, "__qualname__", type(value).__name__)
  fields["seed"] = seed
  return json.loads(json.dumps(io_lib.to_jsonable(fields)))


def _run_with_checkpoints(cfg, seed, hyper, key, workdir, every, progress) -> Result:
  os.makedirs(workdir, exist_ok=True)
  init, chunk, evaluate = _jitted_pieces(cfg.static())
  ckpt_path = os.path.join(workdir, "checkpoint.msgpack")
  fingerprint = config_fingerprint(cfg, seed)
  T = cfg.iterations

  params = init(hyper, key)
  done, history = 0, None
  if os.path.exists(ckpt_path):
    with open(ckpt_path, "rb") as f:
      state = serialization.msgpack_restore(f.read())
    saved = json.loads(state["fingerprint"])
    if saved != fingerprint:
      diff = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
      raise ValueError(f"workdir {workdir!r} holds a checkpoint of a different run (fields {diff} differ); "
                       "use a new workdir or delete checkpoint.msgpack")
    params = serialization.from_state_dict(params, state["params"])
    done = int(state["done"])
    history = state["history"] or None

  bar = None
  if progress:
    from tqdm.auto import tqdm
    bar = tqdm(total=T, initial=done, desc=f"scl {cfg.dataset}/{cfg.model}", unit="it")
  while done < T:
    n = min(every, T - done)
    params, outs = chunk(params, hyper, key, jnp.arange(done, done + n))
    outs = jax.device_get(outs)
    history = outs if history is None else jax.tree.map(lambda a, b: np.concatenate([a, b], 0),
                                                        history, outs)
    done += n
    state = {"fingerprint": json.dumps(fingerprint), "done": done,
             "params": serialization.to_state_dict(jax.device_get(params)), "history": history}
    io_lib.write_bytes(ckpt_path, serialization.msgpack_serialize(state))
    if bar is not None:
      bar.update(n)
      bar.set_postfix(expected_reward=float(outs["expected_reward"][-1]))
  if bar is not None:
    bar.close()
  final = evaluate(params, hyper, key)
  outs = _stack(final, history)
  return _to_result(cfg, seed, params, outs)
