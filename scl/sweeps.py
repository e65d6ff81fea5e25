"""Sweeps: the Cartesian grid of traced hyper-parameters and seeds, one compiled program for the whole grid.

::

    grid = scl.sweep(cfg, K=[1, 2, 4, 8], lam=[0.5, 1.0, float("inf")], seeds=range(4))
    grid.metrics["expected_reward"]      # [4 (K), 3 (λ), 4 (seed), T + 1 (iteration)]
    ex = scl.exact_sweep(p0, r, iterations=20, K=[2, 4, 8], lam=[1.0, float("inf")])

* **Grid.** A keyword given a sequence is an axis (in keyword order), a scalar a fixed value; the names are
  the traced hyper-parameters of :data:`scl.hyper.TRACED`, checked by the same domains as
  :meth:`scl.Config.validate`. Grid point ``(K=k, λ=l, seed=s)`` equals ``scl.run(cfg.replace(K=k, lam=l),
  seed=s)``; the run's arrays (:class:`~scl.task.TaskData`) are one replicated argument of every point.
* **Devices and batches.** The flat grid is laid over a one-axis mesh of all devices (``NamedSharding``,
  padded with copies of the first point); inside ``jax.shard_map`` each device maps over its points,
  ``batch_size`` at a time under ``vmap``: the whole shard on GPU/TPU, one point at a time on CPU
  (:func:`default_batch_size`), whose cores become devices with
  ``XLA_FLAGS=--xla_force_host_platform_device_count=<cores>``.
* **Chunks.** The grid runs in equal chunks, compiled once (a bounded cache keeps compiled chunks). A chunk is
  the whole grid unless ``max_chunk`` says less or ``memory_analysis()`` exceeds ``memory_budget`` (bytes
  per device; default 75% of a GPU's memory, or half the free host memory over the CPU devices); then it is
  sized from the measured bytes (memory is affine in the chunk), at most three compilations in all.
* **Resuming.** With a ``workdir``, each finished chunk's points are saved atomically and a rerun runs only
  the points not saved there (a stopped sweep, or a grid grown by new values); see :func:`sweep`.
* **Hosts.** After ``jax.distributed.initialize`` every process plans the same chunks; outputs are gathered
  to every process.
"""

from __future__ import annotations

import functools
import json
import numbers
import os
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from scl import config as config_lib
from scl import hyper as hyper_lib
from scl import exact as exact_lib
from scl import loop
from scl import registry
from scl import results as results_lib
from scl.results import SweepResult

#: Keywords of :func:`exact_sweep` that may be swept (the traced arguments of :func:`scl.exact.run`).
EXACT_FIELDS = ("K", "lam", "phi")
#: Default points per ``vmap`` per CPU device (see :func:`default_batch_size`).
CPU_BATCH_SIZE = 1
_AXIS = "grid"


# ----------------------------------------------------------------------------------------------------------
# The grid (all checks before any compute).


def _axis_values(name: str, values) -> np.ndarray | None:
  """A sequence -> its values as a 1-D float64 array; a scalar -> None (a fixed value, not an axis)."""
  if isinstance(values, (str, bytes)):
    raise ValueError(f"invalid sweep: {name}={values!r}: give a number or a sequence of numbers")
  if isinstance(values, numbers.Number) or np.ndim(values) == 0:
    return None
  try:
    entries = list(values)
    raw = np.asarray(entries)
  except (TypeError, ValueError) as e:
    raise ValueError(f"invalid sweep: {name}={values!r}: give a number or a sequence of numbers") from e
  # booleans and text are refused, not converted (as a scalar's are); numpy would make [True, 2] the ints [1, 2]
  if any(isinstance(v, (bool, np.bool_)) for v in entries):
    raise ValueError(f"invalid sweep: {name}={values!r}: give a number or a sequence of numbers, not booleans")
  if raw.size and raw.dtype.kind not in "iuf":
    raise ValueError(f"invalid sweep: {name}={values!r}: give a number or a sequence of numbers, not "
                     f"{'text' if raw.dtype.kind in 'US' else 'objects'}")
  arr = raw.astype(np.float64)
  if arr.ndim != 1 or arr.size == 0:
    raise ValueError(f"invalid sweep: {name}={values!r}: give a flat, non-empty sequence (it is empty or nested)")
  if np.any(np.isnan(arr)):
    raise ValueError(f"invalid sweep: {name}={arr.tolist()} contains NaN")
  # duplicates at float32 resolution, where the sweep runs them (and where SweepResult.sel matches them): 1e-50 is
  # 0 there and 1e39 is inf
  with np.errstate(over="ignore", under="ignore", invalid="ignore"):  # inf - inf where both overflow
    s = np.sort(arr.astype(np.float32).astype(np.float64))
    finite = np.isfinite(s[1:]) & np.isfinite(s[:-1])
    close = np.where(finite, np.abs(s[1:] - s[:-1]) <= results_lib.FLOAT32_RTOL * np.abs(s[1:]),
                     s[1:] == s[:-1])
  if np.any(close):
    raise ValueError(f"invalid sweep: {name} has duplicate values (equal in float32, where the sweep runs them): "
                     f"{sorted(set(s[1:][close].tolist()))}")
  return arr


def _seed_values(seeds) -> np.ndarray:
  if isinstance(seeds, (bool, np.bool_, str, bytes)) or not (isinstance(seeds, numbers.Integral)
                                                              or np.iterable(seeds)):
    raise ValueError(f"invalid sweep: seeds={seeds!r}: give an integer n (the seeds range(n)) or a sequence of "
                     "integer seeds")
  if isinstance(seeds, numbers.Integral):
    if seeds < 1:
      raise ValueError(f"invalid sweep: seeds={seeds!r}: an integer means range(seeds) and must be >= 1")
    seeds = range(int(seeds))
  arr = np.asarray(list(seeds))
  if arr.size == 0:
    raise ValueError("invalid sweep: seeds is empty; give at least one seed")
  if arr.ndim != 1 or arr.dtype.kind not in "iu" or np.any(arr < 0) or np.any(arr >= config_lib.SEED_LIMIT):
    raise ValueError(f"invalid sweep: seeds={seeds!r}: seeds must be integers in [0, 2**32)")
  uniq, counts = np.unique(arr, return_counts=True)
  if np.any(counts > 1):
    raise ValueError(f"invalid sweep: duplicate seeds {uniq[counts > 1].tolist()}")
  return arr.astype(np.int64)


def _split_grid(grid: Mapping[str, Any], allowed: Sequence[str]):
  """Keywords -> (axes: name -> values, fixed: name -> scalar), in keyword order."""
  unknown = [k for k in grid if k not in allowed]
  if unknown:
    raise TypeError(f"cannot sweep {unknown}: the traced hyper-parameters are {list(allowed)} (and seeds)")
  axes = {name: _axis_values(name, values) for name, values in grid.items()}
  return ({n: v for n, v in axes.items() if v is not None},
          {n: grid[n] for n, v in axes.items() if v is None})


def _flat_grid(axes: Mapping[str, np.ndarray], seeds: np.ndarray | None) -> dict[str, np.ndarray]:
  """name -> [N] values of every grid point, C order over the axes then the seed."""
  named = {**axes, **({"seed": seeds} if seeds is not None else {})}
  if not named:
    return {}
  mesh = np.meshgrid(*named.values(), indexing="ij")
  return {n: m.reshape(-1) for n, m in zip(named, mesh)}


# ----------------------------------------------------------------------------------------------------------
# Devices, batches, chunks.


def default_batch_size(devices: Sequence[jax.Device] | None = None) -> int | None:
  """Points per device per ``vmap`` by default: :data:`CPU_BATCH_SIZE` on CPU, the whole shard (None) else."""
  devices = list(jax.devices() if devices is None else devices)
  return CPU_BATCH_SIZE if devices[0].platform == "cpu" else None


def _local_batch(batch_size, n_points: int, n_dev: int, max_chunk: int | None) -> int:
  per_dev = -(-n_points // n_dev)
  if max_chunk is not None:
    per_dev = min(per_dev, max(1, int(max_chunk) // n_dev))
  if batch_size is None:
    return per_dev
  if int(batch_size) < 1:
    raise ValueError(f"batch_size={batch_size!r} must be >= 1 (or None: the whole shard)")
  return min(int(batch_size), per_dev)


def _check_execution(devices, batch_size, max_chunk) -> None:
  """The execution arguments of a sweep, checked before anything is built."""
  if devices is not None and not list(devices):
    raise ValueError("invalid sweep: devices is empty")
  if batch_size is not None and batch_size != "auto" and (not isinstance(batch_size, int) or batch_size < 1):
    raise ValueError(f"invalid sweep: batch_size={batch_size!r} must be an integer >= 1, None or 'auto'")
  if max_chunk is not None and (not isinstance(max_chunk, int) or max_chunk < 1):
    raise ValueError(f"invalid sweep: max_chunk={max_chunk!r} must be an integer >= 1 or None")


def _device_budget(devices: Sequence[jax.Device]) -> float:
  """Default memory budget in bytes per device (the same on every process)."""
  try:
    stats = devices[0].memory_stats()
  except Exception:  # noqa: BLE001 - some backends do not implement memory_stats
    stats = None
  if stats and stats.get("bytes_limit"):
    budget = 0.75 * stats["bytes_limit"] - stats.get("bytes_in_use", 0)
  else:
    n_local = max(1, sum(1 for d in devices if d.process_index == jax.process_index()))
    budget = 0.5 * _host_free_bytes() / n_local
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    budget = float(np.min(multihost_utils.process_allgather(np.float32(min(budget, 3e38)))))
  return budget


def _host_free_bytes() -> float:
  try:
    return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
  except (ValueError, OSError, AttributeError):
    return float("inf")


def _bytes(compiled) -> int:
  """Argument + output + temporary bytes per device of a compiled program (0 if the backend cannot say)."""
  try:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)
  except Exception:  # noqa: BLE001
    return 0


@functools.lru_cache(maxsize=16)
def _compile(point: Callable, devices: tuple, chunk: int, batch: int, spec: tuple) -> Any:
  """The compiled program of one chunk: ``point(inputs, shared)`` mapped over ``chunk`` points.

  ``spec`` is ``(inputs, shared)`` as hashable ``((name, shape, dtype), ...)`` tuples of one point and of
  the replicated arguments. Inside ``shard_map`` each device maps over its ``chunk / devices`` points,
  ``batch`` at a time under ``vmap``.
  """
  mesh = Mesh(np.asarray(devices), (_AXIS,))
  grid, rep = NamedSharding(mesh, P(_AXIS)), NamedSharding(mesh, P())

  def local(inputs, shared):
    f = lambda x: point(x, shared)
    n_local = jax.tree.leaves(inputs)[0].shape[0]
    if batch >= n_local:
      return jax.vmap(f)(inputs)
    return jax.lax.map(f, inputs, batch_size=None if batch == 1 else batch)

  # check_vma=False: the points are independent and nothing is communicated.
  mapped = jax.shard_map(local, mesh=mesh, in_specs=(P(_AXIS), P()), out_specs=P(_AXIS), check_vma=False)
  inputs_spec, shared_spec = spec
  args = ({n: jax.ShapeDtypeStruct((chunk, *s), d, sharding=grid) for n, s, d in inputs_spec},
          jax.tree.unflatten(shared_spec[0], [jax.ShapeDtypeStruct(s, d, sharding=rep)
                                              for s, d in shared_spec[1]]))
  return jax.jit(mapped, out_shardings=grid).lower(*args).compile()


def _spec(inputs: Mapping[str, np.ndarray], shared) -> tuple:
  leaves, treedef = jax.tree.flatten(shared)
  return (tuple((n, v.shape[1:], np.dtype(v.dtype)) for n, v in inputs.items()),
          (treedef, tuple((tuple(np.shape(l)), np.dtype(jnp.asarray(l).dtype)) for l in leaves)))


def _execute(point: Callable, inputs: dict[str, np.ndarray], shared, devices, max_chunk, memory_budget,
             batch_size, on_chunk: Callable | None = None,
             keep_outputs: bool = True) -> tuple[dict[str, np.ndarray] | None, dict[str, Any]]:
  """Run ``point`` on every row of ``inputs`` (name -> ``[N, ...]``); returns (outputs ``[N, ...]``, info).

  ``on_chunk(rows, outputs)`` is called after each chunk with the indices of its rows and their outputs. With
  ``keep_outputs=False`` (``on_chunk`` keeps them) the chunks' outputs are not gathered and None is returned."""
  devices = list(jax.devices() if devices is None else devices)
  n_dev, n = len(devices), len(next(iter(inputs.values())))
  if isinstance(batch_size, str) and batch_size == "auto":
    batch_size = default_batch_size(devices)
  batch = _local_batch(batch_size, n, n_dev, max_chunk)
  budget = _device_budget(devices) if memory_budget is None else float(memory_budget)
  spec = _spec(inputs, shared)
  rounded = lambda c, unit: max(unit, (int(c) // unit) * unit)
  chunk = -(-n // (n_dev * batch)) * n_dev * batch
  if max_chunk is not None:
    chunk = min(chunk, rounded(max_chunk, n_dev * batch))
  compiled = _compile(point, tuple(devices), chunk, batch, spec)
  used, tried = _bytes(compiled), [(chunk, _bytes(compiled))]
  while used > budget and chunk > n_dev and len(tried) < 3:
    batch = 1  # over budget: one point at a time per device, and as many per chunk as fit
    if len(tried) == 1:  # affine in the chunk: assume no fixed cost first, then fit both terms
      per_point, fixed = used / (chunk // n_dev), 0.0
    else:
      (c1, u1), (c2, u2) = tried[-2:]
      per_point = max((u1 - u2) / max(c1 // n_dev - c2 // n_dev, 1), 1.0)
      fixed = u2 - per_point * (c2 // n_dev)
    chunk = min(chunk - n_dev, rounded(max(budget - fixed, 0.0) // per_point * n_dev, n_dev))
    logging.info("sweep: %.3g GB per device is over the budget of %.3g GB; trying %d points per chunk",
                 used / 1e9, budget / 1e9, chunk)
    compiled = _compile(point, tuple(devices), chunk, batch, spec)
    used = _bytes(compiled)
    tried.append((chunk, used))
  if used > budget:
    raise ValueError(f"sweep does not fit even in chunks: {chunk // n_dev} grid point(s) per device need "
                     f"{used / 1e9:.3g} GB per device, over the memory budget of {budget / 1e9:.3g} GB (pass a "
                     "larger memory_budget, use more devices, or shrink the static config: pool_size, n_keep, "
                     "K_max, n_eval)")

  mesh = Mesh(np.asarray(devices), (_AXIS,))
  to_global = lambda a, sharding: jax.make_array_from_callback(a.shape, sharding, lambda i: a[i])
  shared = jax.tree.map(lambda a: to_global(np.asarray(a), NamedSharding(mesh, P())), shared)
  n_chunks = -(-n // chunk)
  padded = {k: np.concatenate([v, np.repeat(v[:1], n_chunks * chunk - n, 0)], 0) for k, v in inputs.items()}
  pieces = []
  for c in range(n_chunks):
    args = {k: to_global(np.ascontiguousarray(v[c * chunk:(c + 1) * chunk]), NamedSharding(mesh, P(_AXIS)))
            for k, v in padded.items()}
    out = compiled(args, shared)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      out = multihost_utils.process_allgather(out, tiled=True)
    else:
      out = jax.device_get(out)
    if on_chunk is not None:
      rows = np.arange(c * chunk, min((c + 1) * chunk, n))
      on_chunk(rows, {k: v[:len(rows)] for k, v in out.items()})
    if keep_outputs:
      pieces.append(out)
  outputs = {k: np.concatenate([p[k] for p in pieces], 0)[:n] for k in pieces[0]} if keep_outputs else None
  info = dict(devices=n_dev, points=n, chunk=chunk, chunks=n_chunks, batch_size=batch, bytes_per_device=used)
  return outputs, info


def _warn_nonfinite(metrics: Mapping[str, np.ndarray], axes: Mapping[str, np.ndarray]) -> None:
  er = metrics.get("expected_reward")
  bad = None if er is None else ~np.all(np.isfinite(er), axis=-1)
  if bad is not None and np.any(bad):
    where = {n: axes[n][i].item() for n, i in zip(axes, np.argwhere(bad)[0])}
    logging.warning("sweep: %d grid point(s) diverged (non-finite expected_reward), e.g. %s",
                    int(bad.sum()), where)


def _result(flat_out: dict, axes: dict, lead: tuple, **kwargs) -> SweepResult:
  samples = flat_out.pop("samples", None)
  metrics = {k: v.reshape(lead + v.shape[1:]) for k, v in flat_out.items()}
  _warn_nonfinite(metrics, axes)
  return SweepResult(axes=axes, metrics=metrics,
                     samples=None if samples is None else samples.reshape(lead + samples.shape[1:]), **kwargs)


# ----------------------------------------------------------------------------------------------------------
# The loop and the exact engine.


def _loop_point(run_fn: Callable, keep_samples: bool, inputs, data):
  hyper = hyper_lib.Hyper(**{name: inputs[name] for name in hyper_lib.traced_names()})
  _, outs = run_fn(hyper, inputs["key"], data)
  return {name: v for name, v in outs.items() if name != "samples" or keep_samples}


@registry.on_replace
@functools.lru_cache(maxsize=16)
def _loop_program(static_cfg: config_lib.Config, keep_samples: bool):
  run_fn, data = loop.make_run_fn(static_cfg)
  return functools.partial(_loop_point, run_fn, keep_samples), data


def sweep(cfg: config_lib.Config, *, seeds: int | Iterable[int] = (0,), keep_samples: bool = False,
          devices: Sequence[jax.Device] | None = None, max_chunk: int | None = None,
          memory_budget: float | None = None, batch_size: int | None | str = "auto", workdir: str | None = None,
          progress: bool = False, **grid) -> SweepResult:
  """Run the curated loop of ``cfg`` on the Cartesian grid of ``grid`` × ``seeds``, mapped and sharded.

  Args:
    cfg: the base config; its static settings are shared by every point and its traced values are those of
      the hyper-parameters not swept.
    seeds: the seeds (``jax.random.PRNGKey(seed)``, as :func:`scl.run`); an int ``n`` means ``range(n)``.
    keep_samples: keep every point's ``[T + 1, 1000, d]`` snapshot (dropped by default: memory).
    devices: the mesh's devices (default ``jax.devices()``: every device of every process).
    max_chunk: at most this many grid points per compiled call (rounded to a multiple of the devices).
    memory_budget: bytes per device a compiled chunk may use (default: see the module docstring).
    batch_size: grid points per device under one ``vmap`` (``"auto"``: :func:`default_batch_size`; None:
      the whole shard). Results do not depend on it.
    workdir: keep every finished point under ``<workdir>/sweep_points/`` (:class:`scl.checkpoint.PointStore`,
      each chunk in a file of its own, written atomically once) and run only the points not found there: a
      stopped sweep resumes, and a grown grid runs only its new points (points saved under another static config
      or other scl source code, :func:`scl.checkpoint.code_digest`, are run again). Without ``max_chunk``, and
      with one or a few points per device at a time (the CPU default), the grid then runs in about 8 chunks,
      which costs nothing there.
    progress: show a progress bar over the grid points (updated after each chunk).
    **grid: traced hyper-parameters (:data:`scl.hyper.TRACED`: ``K``, ``lam`` (λ), ``phi`` (φ), ``kappa``
      (κ), ``alpha`` (α), ``beta``, ``lr``, ``l2``, ``eps`` (ε)): a sequence is an axis, a scalar a fixed value.

  Returns:
    A :class:`SweepResult` with axes ``(*swept, "seed", "iteration")``; ``metrics[name]`` has shape
    ``[*len(values), n_seeds, T + 1, ...]``.

  Raises:
    ValueError / TypeError before any compute: unknown names, empty or duplicate values, values outside
    their domain, ``K > K_max``, a grid that does not fit, or a ``workdir`` for a config that cannot be
    fingerprinted.
  """
  axes, fixed = _split_grid(grid, hyper_lib.traced_names())
  seed_values = _seed_values(seeds)
  _check_execution(devices, batch_size, max_chunk)
  cfg = cfg.replace(**fixed).validate()
  hyper_lib.validate_traced(cfg, **axes)
  flat = _flat_grid(axes, seed_values)
  n = len(flat["seed"])
  inputs = {t.name: np.broadcast_to(np.asarray(flat.get(t.name, getattr(cfg.hyper, t.name)), np.float64),
                                    (n,)).astype(np.dtype(t.dtype)) for t in hyper_lib.TRACED}
  inputs["key"] = np.stack([np.asarray(jax.random.PRNGKey(int(s))) for s in flat["seed"]]).astype(np.uint32)
  store = _point_store(workdir, cfg, inputs, keep_samples) if workdir is not None else None
  todo = np.arange(n) if store is None else store.todo()
  n_dev = len(jax.devices() if devices is None else devices)
  if store is not None and max_chunk is None and len(todo):
    batch = default_batch_size(devices) if isinstance(batch_size, str) else batch_size
    if batch is not None:  # points run a few at a time per device anyway: smaller chunks lose nothing
      unit = n_dev * int(batch)
      max_chunk = unit * -(-len(todo) // (8 * unit))
  bar = None
  if progress and jax.process_index() == 0:
    from tqdm.auto import tqdm
    bar = tqdm(total=n, initial=n - len(todo), desc=f"scl.sweep {cfg.data.name}/{cfg.model.name}",
               unit="point")

  def on_chunk(rows, outs):
    if store is not None:
      store.add(todo[rows], outs)
    if bar is not None:
      bar.update(len(rows))

  point, data = _loop_program(cfg.static(), keep_samples)
  info = dict(devices=n_dev, points=0, chunk=None, chunks=0, batch_size=None, bytes_per_device=None)
  try:
    if len(todo):
      outputs, info = _execute(point, {k: v[todo] for k, v in inputs.items()}, data, devices, max_chunk,
                               memory_budget, batch_size, on_chunk, keep_outputs=store is None)
  finally:
    if bar is not None:
      bar.close()
  if store is not None:
    outputs = store.outputs()
    info.update(run=info["points"], points=n, resumed=n - len(todo), store=store.path)
  result_axes = {**{k: v.astype(np.int64) if k == "K" else v for k, v in axes.items()},
                 "seed": seed_values, "iteration": np.arange(cfg.iterations + 1)}
  lead = tuple(len(v) for v in axes.values()) + (len(seed_values),)
  return _result(outputs, result_axes, lead, config=cfg, info=info,
                 fixed={k: v for k, v in cfg.hyper.items() if k not in axes})


def _point_store(workdir: str, cfg: config_lib.Config, inputs: dict[str, np.ndarray], keep_samples: bool):
  """The :class:`scl.checkpoint.PointStore` of a sweep (checked before any compute)."""
  from scl import checkpoint  # at call time: it imports scl.loop
  try:
    static = checkpoint.fingerprint(cfg.static(), None)
  except checkpoint.Untrusted as e:
    raise ValueError(f"cannot keep this sweep's points in workdir {workdir!r}: its config cannot be fingerprinted "
                     f"({e}); give the function a string attribute scl_fingerprint that names it, or sweep "
                     "without a workdir") from None
  layout = [(k, v.shape[1:], str(v.dtype)) for k, v in sorted(inputs.items())]
  shared = json.dumps([static, repr(layout), keep_samples, checkpoint.code_digest()], sort_keys=True)
  store = checkpoint.PointStore(workdir, shared, inputs, writer=jax.process_index() == 0)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.assert_equal(store.found >= 0, f"the processes found different saved points in {workdir!r}: "
                                 "its file system must be shared by every process")
  return store


def _exact_point(iterations: int, num_nodes: int, keep_trajectory: bool, inputs, vectors):
  p0, r, p_data, r_tilde = vectors
  traj, metrics = exact_lib.run(p0, r, inputs["K"], inputs["lam"], p_data, iterations=iterations,
                                r_tilde=r_tilde, phi=inputs["phi"], num_nodes=num_nodes)
  return {**metrics, "samples": traj} if keep_trajectory else metrics


def exact_sweep(p0, r, *, iterations: int, K: Any = 2.0, lam: Any = float("inf"), phi: Any = 0.0,
                p_data=None, r_tilde=None, num_nodes: int = exact_lib.NUM_NODES, keep_trajectory: bool = False,
                devices: Sequence[jax.Device] | None = None, max_chunk: int | None = None,
                memory_budget: float | None = None, batch_size: int | None = None) -> SweepResult:
  """:func:`scl.exact.run` on the Cartesian grid of ``K``, ``lam`` (λ) and ``phi`` (φ), mapped and sharded.

  A sequence is an axis (in the order ``K``, ``lam``, ``phi``), a scalar a fixed value; the engine is
  deterministic, so there is no seed axis. Grid point ``(K=k, λ=l, φ=f)`` equals
  ``scl.exact.run(p0, r, k, l, p_data, iterations=T, r_tilde=r_tilde, phi=f)``.

  Args:
    p0, r: ``[n]`` initial model ``p_0`` and reward ``r``.
    iterations: ``T``.
    K: candidates per choice, ``>= 1`` (``inf`` allowed); lam: ``λ >= 0`` (``inf``: fully synthetic);
      phi: ``φ`` in [0, 1], the fraction of users who curate with ``r_tilde`` (needs ``r_tilde``).
    p_data, r_tilde: ``[n]`` real data (default ``p0``) and malicious users' reward ``r~`` (default none).
    num_nodes: quadrature nodes (static).
    keep_trajectory: keep ``p_0 .. p_T`` as ``samples`` ``[*grid, T + 1, n]``.
    devices, max_chunk, memory_budget: as :func:`sweep`; batch_size: as :func:`sweep`, default the whole
      shard on every backend (each point is a few small vector ops, so batching pays).

  Raises:
    ValueError before any compute for invalid arguments (:func:`scl.exact.validate`).
  """
  axes, fixed = _split_grid({"K": K, "lam": lam, "phi": phi}, EXACT_FIELDS)
  _check_execution(devices, batch_size, max_chunk)
  if "phi" in axes and r_tilde is None:
    raise ValueError("invalid sweep: phi is swept but r_tilde is None (φ only acts through r~)")
  values = {**axes, **fixed}
  exact_lib.validate(p0=p0, r=r, p_data=p_data, r_tilde=r_tilde, iterations=iterations, num_nodes=num_nodes,
                     **values)
  dtype = jnp.result_type(jnp.asarray(p0), jnp.asarray(r), jnp.float32)
  p0 = np.asarray(p0, dtype)
  vectors = tuple(p0 if v is None else np.asarray(v, dtype) for v in (p0, r, p_data, r_tilde))
  flat = _flat_grid(axes, None)
  n = int(np.prod([len(v) for v in axes.values()])) if axes else 1
  inputs = {f: np.broadcast_to(np.asarray(flat.get(f, fixed.get(f)), np.float64), (n,)).astype(dtype)
            for f in EXACT_FIELDS}
  point = _exact_program(int(iterations), int(num_nodes), keep_trajectory, r_tilde is None)
  outputs, info = _execute(point, inputs, vectors, devices, max_chunk, memory_budget, batch_size)
  lead = tuple(len(v) for v in axes.values())
  return _result(outputs, {**axes, "iteration": np.arange(int(iterations) + 1)}, lead, config=None,
                 info=info, fixed={k: float(v) for k, v in fixed.items()})


def _exact_point_benign(point: Callable, inputs, vectors):
  return point(inputs, vectors[:3] + (None,))


@functools.lru_cache(maxsize=16)
def _exact_program(iterations: int, num_nodes: int, keep_trajectory: bool, benign: bool) -> Callable:
  """One point function per static setting, so the compiled chunks are found again in the cache."""
  point = functools.partial(_exact_point, iterations, num_nodes, keep_trajectory)
  # Without r~ (a static choice) the engine skips the adversarial curation.
  return functools.partial(_exact_point_benign, point) if benign else point
