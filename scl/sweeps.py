"""Sweeps: the Cartesian grid of traced hyper-parameters and seeds, one compiled program for the whole grid.

::

    grid = scl.sweep(cfg, K=[1, 2, 4, 8], lam=[0.5, 1.0, float("inf")], seeds=range(4))
    grid.metrics["expected_reward"]      # [4 (K), 3 (λ), 4 (seed), T + 1 (iteration)]
    grid.sel(K=4, lam=1.0)               # the same result without the K and λ axes
    grid.mean_ci("expected_reward")      # mean and 95% interval over seeds: [4, 3, T + 1]
    grid.to_frame()                      # long table: one row per (K, λ, seed, iteration)

    ex = scl.sweeps.exact_sweep(p0, r, iterations=20, K=[2, 4, 8], lam=[1.0, float("inf")])

How a sweep runs (:func:`sweep` for the Monte Carlo loop of :mod:`scl.loop`, every model family;
:func:`exact_sweep` for :func:`scl.exact.run`):

* **Grid.** Every keyword given a sequence becomes an axis (in the order the keywords are written); a scalar
  keyword just fixes that value. The grid is flattened (C order over the axes, then the seed) into ``N``
  points whose :class:`~scl.types.Hyper` leaves (and PRNG keys ``jax.random.PRNGKey(seed)``, exactly as
  :func:`scl.run`) carry a leading axis, and the pure ``run_fn`` of
  :func:`scl.loop.make_run_fn` is mapped over it (see Batches). Grid point ``(K=k, λ=l, seed=s)`` therefore equals
  ``scl.run(cfg.replace(K=k, lam=l), seed=s)`` for the same ``cfg`` (same static ``K_max``, which fixes the
  candidate shapes and so the random draws).
* **Devices.** The flat grid axis is laid over a one-axis :class:`jax.sharding.Mesh` (``"grid"``) of all
  devices with ``NamedSharding(mesh, P("grid"))``, padded to a multiple of ``devices * batch_size`` with
  copies of the first point (discarded afterwards). Each device runs its slice inside ``jax.shard_map``;
  nothing is communicated.
* **Batches.** On each device ``jax.lax.map`` iterates over the local points, ``batch_size`` at a time
  under ``jax.vmap``, all in the same compiled program (``run_fn`` traced once). The default is
  backend-dependent (:func:`default_batch_size`): the whole shard (one ``vmap``) on GPU/TPU, one point at a
  time on CPU, where ``vmap`` adds no parallelism (XLA:CPU runs the single-point program on about one core)
  and the batched loop was measured 1.5-1.7x slower per point than the unbatched one (Gaussian mixture). On a CPU host the cores
  are used by making them devices: ``XLA_FLAGS=--xla_force_host_platform_device_count=<cores>`` before JAX
  starts (``benchmarks/sweep.py`` measures both).
* **Chunks.** The grid is run in chunks of ``C`` points (a multiple of ``devices * batch_size``), every
  chunk the same shape, so the program is traced and compiled once for the grid (and reused, from a cache, when only
  the grid's values change). ``C`` is the whole padded grid unless ``max_chunk`` says otherwise or the
  compiled program's ``memory_analysis()`` (argument + output + temporary bytes per device) exceeds
  ``memory_budget`` (bytes per device; default 75% of a GPU's memory limit, or half the free host memory
  shared by the CPU devices); then ``C`` is scaled down from the measured bytes per point (and, at one batch
  per device, ``batch_size`` halved) and compiled again.
  A grid whose single point per device, or whose gathered result on the host, does not fit fails before any
  compute.
* **Hosts.** After ``jax.distributed.initialize`` (see ``experiments/sweep.py``), ``jax.devices()`` spans
  every process: each process builds the same grid, inputs are made global with
  ``jax.make_array_from_callback``, and each chunk's outputs are gathered to every process with
  ``multihost_utils.process_allgather``; the caller writes results from process 0 only.

Snapshots (``samples`` ``[T + 1, 1000, d]`` per point) are dropped unless ``keep_samples=True``; the exact
engine's trajectories ``[T + 1, n]`` unless ``keep_trajectory=True``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import os
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from scl import exact as exact_lib
from scl import loop
from scl import tasks as tasks_lib
from scl import types

#: Keywords of :func:`exact_sweep` that may be swept (the traced arguments of :func:`scl.exact.run`).
EXACT_FIELDS = ("K", "lam", "phi")
_GRID_AXIS = "grid"
#: Default points per ``vmap`` per CPU device (see :func:`default_batch_size`; measured in
#: ``benchmarks/sweep.py``: on CPU one point at a time is fastest).
CPU_BATCH_SIZE = 1


# ----------------------------------------------------------------------------------------------------------
# The labelled result.


class MeanCI(NamedTuple):
  """Mean over seeds with a Student-t confidence interval; arrays ``[*grid, T + 1, ...]``.

  ``low``/``high`` are NaN where there is a single seed. ``n`` is the number of seeds, ``level`` the
  confidence level.
  """

  mean: np.ndarray
  low: np.ndarray
  high: np.ndarray
  n: int
  level: float


def _matches(values: np.ndarray, value) -> np.ndarray:
  values = np.asarray(values)
  if values.dtype.kind in "fc":
    value = float(value)
    if math.isinf(value):
      return values == value
    return np.isclose(values, value, rtol=1e-9, atol=0.0)
  return values == value


@dataclasses.dataclass
class SweepResult:
  """A grid of runs with named axes.

  Attributes:
    axes: axis name -> coordinate values, in array order: one axis per swept hyper-parameter (``K``,
      ``lam`` (λ), ``phi`` (φ), ``kappa`` (κ), ``alpha`` (α), ...), then ``seed`` (absent for the exact
      engine), then ``iteration`` (``0 .. T``).
    metrics: metric name -> numpy array ``[*axis sizes, ...]``; trailing axes are the metric's own (e.g.
      ``mode_props`` ``[..., T + 1, n_modes]``). Row ``iteration = t`` describes ``p_t``.
    samples: with ``keep_samples``: ``[*axis sizes, N_SNAPSHOT, d]`` points of each ``p_t``; with the exact
      engine and ``keep_trajectory``: ``[*axis sizes, n]`` the probability vectors ``p_t``; else None.
    fixed: the values every grid point shares (the base config's dynamic fields, or the exact engine's
      scalar arguments).
    config: the base :class:`~scl.types.Config` (None for the exact engine).
    info: how it ran: ``devices``, ``points`` (grid points), ``chunk`` (points per compiled call),
      ``chunks``, ``batch_size`` (points per ``vmap`` per device) and ``bytes_per_device`` (from the compiled program's memory analysis).
  """

  axes: dict[str, np.ndarray]
  metrics: dict[str, np.ndarray]
  samples: np.ndarray | None = None
  fixed: dict[str, Any] = dataclasses.field(default_factory=dict)
  config: types.Config | None = None
  info: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def dims(self) -> tuple[str, ...]:
    """Axis names in array order, e.g. ``("K", "lam", "seed", "iteration")``."""
    return tuple(self.axes)

  @property
  def grid_dims(self) -> tuple[str, ...]:
    """The swept hyper-parameters (every axis but ``seed`` and ``iteration``)."""
    return tuple(d for d in self.axes if d not in ("seed", "iteration"))

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(len(v) for v in self.axes.values())

  def _index(self, name: str, value) -> int:
    if name not in self.axes:
      raise KeyError(f"no axis {name!r}; axes are {self.dims}")
    hit = np.flatnonzero(_matches(self.axes[name], value))
    if hit.size == 0:
      raise KeyError(f"{name}={value!r} is not on the grid; values are {self.axes[name].tolist()}")
    return int(hit[0])

  def sel(self, **coords) -> "SweepResult":
    """The sub-result at the given coordinate values (``sel(K=4, lam=1.0)``), those axes removed."""
    index = [slice(None)] * len(self.axes)
    names = list(self.axes)
    for name, value in coords.items():
      index[names.index(name) if name in names else 0] = self._index(name, value)
    index = tuple(index)
    axes = {n: v for n, v in self.axes.items() if n not in coords}
    metrics = {k: v[index] for k, v in self.metrics.items()}
    samples = None if self.samples is None else self.samples[index]
    fixed = {**self.fixed, **{n: self.axes[n][self._index(n, v)].item() for n, v in coords.items()}}
    return SweepResult(axes=axes, metrics=metrics, samples=samples, fixed=fixed, config=self.config,
                       info=self.info)

  def final(self) -> "SweepResult":
    """The last iteration ``p_T`` (the ``iteration`` axis removed)."""
    return self.sel(iteration=self.axes["iteration"][-1])

  def mean_ci(self, metric: str, level: float = 0.95) -> MeanCI:
    """Mean of ``metric`` over seeds and its Student-t confidence interval at ``level``.

    With ``n`` seeds, ``mean ± t_{(1+level)/2, n-1} * std / sqrt(n)`` (``std`` with ``ddof=1``).
    """
    if "seed" not in self.axes:
      raise ValueError("this result has no seed axis (the exact engine is deterministic, or a seed was "
                       "selected); there is no interval over seeds")
    if not 0.0 < level < 1.0:
      raise ValueError(f"level={level!r} must lie in (0, 1)")
    from scipy import stats
    axis = self.dims.index("seed")
    values = np.asarray(self.metrics[metric], np.float64)
    n = values.shape[axis]
    mean = values.mean(axis)
    if n < 2:
      nan = np.full_like(mean, np.nan)
      return MeanCI(mean, nan, nan.copy(), n, level)
    half = stats.t.ppf(0.5 + level / 2, n - 1) * values.std(axis, ddof=1) / math.sqrt(n)
    return MeanCI(mean, mean - half, mean + half, n, level)

  def to_frame(self, metrics: Sequence[str] | None = None):
    """Long-format pandas DataFrame: one row per axis coordinate (grid point, seed, iteration).

    Columns: the axis names, then each metric; a metric with trailing axes (``mode_props``) becomes the
    columns ``mode_props_0``, ``mode_props_1``, ...
    """
    import pandas as pd
    names = list(self.metrics) if metrics is None else list(metrics)
    grids = np.meshgrid(*self.axes.values(), indexing="ij")
    columns = {n: g.reshape(-1) for n, g in zip(self.axes, grids)}
    size = int(np.prod(self.shape))
    for name in names:
      value = np.asarray(self.metrics[name]).reshape(size, -1)
      if np.ndim(self.metrics[name]) == len(self.axes):
        columns[name] = value[:, 0]
      else:
        for j in range(value.shape[1]):
          columns[f"{name}_{j}"] = value[:, j]
    return pd.DataFrame(columns)

  def summary(self, metric: str = "expected_reward", level: float = 0.95):
    """Long-format DataFrame of :meth:`mean_ci`: one row per (grid point, iteration) with columns
    ``mean``, ``low``, ``high`` and ``n_seeds`` (scalar metrics only)."""
    import pandas as pd
    ci = self.mean_ci(metric, level)
    if ci.mean.ndim != len(self.axes) - 1:
      raise ValueError(f"summary needs a scalar metric; {metric!r} has trailing axes")
    axes = {n: v for n, v in self.axes.items() if n != "seed"}
    grids = np.meshgrid(*axes.values(), indexing="ij")
    columns = {n: g.reshape(-1) for n, g in zip(axes, grids)}
    columns.update(metric=metric, mean=ci.mean.reshape(-1), low=ci.low.reshape(-1),
                   high=ci.high.reshape(-1), n_seeds=ci.n)
    return pd.DataFrame(columns)


# ----------------------------------------------------------------------------------------------------------
# Grid construction and validation (all before any compute).


def _axis_values(name: str, values) -> np.ndarray | None:
  """A sequence -> its values as a 1-D numpy array; a scalar -> None (a fixed value, not an axis)."""
  if isinstance(values, (str, bytes)):
    raise ValueError(f"invalid sweep: {name}={values!r}: give a number or a sequence of numbers")
  if isinstance(values, numbers.Number) or (hasattr(values, "ndim") and np.ndim(values) == 0):
    return None
  try:
    arr = np.asarray(list(values), dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise ValueError(f"invalid sweep: {name}={values!r}: give a number or a sequence of numbers") from e
  if arr.ndim != 1:
    raise ValueError(f"invalid sweep: {name}: values must be a flat sequence, got shape {arr.shape}")
  if arr.size == 0:
    raise ValueError(f"invalid sweep: {name}=[] is empty; give at least one value")
  if np.any(np.isnan(arr)):
    raise ValueError(f"invalid sweep: {name}={arr.tolist()} contains NaN")
  uniq, counts = np.unique(arr, return_counts=True)
  if np.any(counts > 1):
    raise ValueError(f"invalid sweep: {name} has duplicate values {uniq[counts > 1].tolist()}; each grid "
                     "value must appear once")
  return arr


def _seed_values(seeds) -> np.ndarray:
  if isinstance(seeds, numbers.Integral):
    if seeds < 1:
      raise ValueError(f"invalid sweep: seeds={seeds!r}: an integer means range(seeds) and must be >= 1")
    seeds = range(int(seeds))
  try:
    arr = np.asarray(list(seeds))
  except TypeError as e:
    raise ValueError(f"invalid sweep: seeds={seeds!r}: give an int n (range(n)) or a sequence of ints") from e
  if arr.size == 0:
    raise ValueError("invalid sweep: seeds is empty; give at least one seed")
  if arr.ndim != 1 or arr.dtype.kind not in "iu":
    raise ValueError(f"invalid sweep: seeds={seeds!r}: seeds must be integers")
  if np.any(arr < 0):
    raise ValueError(f"invalid sweep: seeds={arr.tolist()}: seeds must be >= 0")
  uniq, counts = np.unique(arr, return_counts=True)
  if np.any(counts > 1):
    raise ValueError(f"invalid sweep: duplicate seeds {uniq[counts > 1].tolist()}")
  return arr.astype(np.int64)


def _split_grid(grid: Mapping[str, Any], allowed: Sequence[str]):
  """Keywords -> (axes: name -> values, fixed: name -> scalar), in keyword order."""
  unknown = [k for k in grid if k not in allowed]
  if unknown:
    raise TypeError(f"cannot sweep {unknown}: the traced hyper-parameters are {list(allowed)} (and seeds)")
  axes, fixed = {}, {}
  for name, values in grid.items():
    arr = _axis_values(name, values)
    if arr is None:
      fixed[name] = values
    else:
      axes[name] = arr
  return axes, fixed


def _flat_grid(axes: Mapping[str, np.ndarray], seeds: np.ndarray | None) -> dict[str, np.ndarray]:
  """name -> [N] values of every grid point, C order over the axes then the seed."""
  names = list(axes) + (["seed"] if seeds is not None else [])
  values = list(axes.values()) + ([seeds] if seeds is not None else [])
  if not names:
    return {}
  mesh = np.meshgrid(*values, indexing="ij")
  return {n: m.reshape(-1) for n, m in zip(names, mesh)}


# ----------------------------------------------------------------------------------------------------------
# Devices, chunks and compilation.


@dataclasses.dataclass(frozen=True)
class _Plan:
  chunk: int        # points per chunk, a multiple of the device count
  n_chunks: int
  compiled: Any     # the compiled batched program for one chunk
  bytes_per_device: int
  batch: int        # points per vmap per device (the rest of the shard is a lax.map loop)


def _device_budget(devices: Sequence[jax.Device]) -> float:
  """Default memory budget in bytes per device."""
  stats = None
  try:
    stats = devices[0].memory_stats()
  except Exception:  # Some backends do not implement memory_stats.
    stats = None
  if stats and stats.get("bytes_limit"):
    budget = 0.75 * stats["bytes_limit"] - stats.get("bytes_in_use", 0)
  else:
    n_local = max(1, sum(1 for d in devices if d.process_index == jax.process_index()))
    budget = 0.5 * _host_free_bytes() / n_local
  if jax.process_count() > 1:  # Every process must plan the same chunks: agree on the smallest budget.
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
  except Exception:
    return 0
  if m is None:
    return 0
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)


def _mesh(devices) -> Mesh:
  return Mesh(np.asarray(devices), (_GRID_AXIS,))


def _round_chunk(c: int, unit: int) -> int:
  return max(unit, (c // unit) * unit)


def default_batch_size(devices: Sequence[jax.Device] | None = None) -> int | None:
  """The default points per device evaluated together by ``vmap``: ``CPU_BATCH_SIZE`` on CPU, else None.

  None means the whole per-device shard of a chunk (one ``vmap``): accelerators need the batch to fill
  their cores. XLA:CPU already spreads each op over the cores, so on CPU ``vmap`` adds no parallelism and
  batched intermediates fall out of cache; there the shard is iterated with ``jax.lax.map``.
  """
  devices = _resolve_devices(devices)
  return CPU_BATCH_SIZE if devices[0].platform == "cpu" else None


def _local_batch(batch_size: int | None, n_points: int, n_dev: int, max_chunk: int | None) -> int:
  """Points per device per ``vmap`` (``b``): ``batch_size`` capped by the shard and by ``max_chunk``."""
  per_dev = -(-n_points // n_dev)
  if max_chunk is not None:
    per_dev = min(per_dev, max(1, int(max_chunk) // n_dev))
  if batch_size is None:
    return per_dev
  if int(batch_size) < 1:
    raise ValueError(f"batch_size={batch_size!r} must be >= 1 (or None: the whole shard)")
  return min(int(batch_size), per_dev)


def _sharded_map(point: Callable, mesh: Mesh, batch: int, n_shared: int = 0) -> Callable:
  """``point(inputs, *shared) -> outputs`` (one grid point) -> the jitted program of one chunk.

  ``inputs`` leaves are ``[C, ...]`` sharded as ``P("grid")`` (``C`` a multiple of ``devices * batch``),
  ``shared`` are replicated; outputs are ``[C, ...]`` sharded the same way. Inside ``jax.shard_map`` each
  device holds ``C / devices`` points and runs ``jax.lax.map`` over them, ``batch`` at a time with
  ``jax.vmap`` (``batch == 1``: the unbatched program in a loop; ``batch`` = the shard: one ``vmap``).
  """

  def local(inputs, *shared):
    f = lambda x: point(x, *shared)
    n_local = jax.tree.leaves(inputs)[0].shape[0]
    if batch >= n_local:
      return jax.vmap(f)(inputs)
    if batch == 1:
      return jax.lax.map(f, inputs)
    assert n_local % batch == 0, (n_local, batch)  # No remainder: point is traced once.
    return jax.lax.map(f, inputs, batch_size=batch)

  grid, rep = P(_GRID_AXIS), P()
  # check_vma=False: run_fn's own scans mix replicated constants with per-point carries; the points are
  # independent and nothing is communicated, so there is nothing for the check to protect.
  mapped = jax.shard_map(local, mesh=mesh, in_specs=(grid,) + (rep,) * n_shared, out_specs=grid,
                         check_vma=False)
  return jax.jit(mapped, in_shardings=(NamedSharding(mesh, grid),) + (NamedSharding(mesh, rep),) * n_shared,
                 out_shardings=NamedSharding(mesh, grid))


def _plan(compile_chunk: Callable[[int, int], Any], n_points: int, n_dev: int, max_chunk: int | None,
          memory_budget: float, out_bytes_per_point: Callable[[Any, int], float], batch: int) -> _Plan:
  """Choose the chunk size, compile once for it, and check it fits (raises before any compute).

  ``compile_chunk(chunk, batch)`` compiles the program of ``chunk`` points, ``batch`` per ``vmap`` per
  device. Chunks are multiples of ``n_dev * batch``; over the memory budget the chunk shrinks first, then
  the batch.
  """
  unit = n_dev * batch
  padded = -(-n_points // unit) * unit
  chunk = padded if max_chunk is None else min(padded, _round_chunk(int(max_chunk), unit))
  compiled = compile_chunk(chunk, batch)
  used = _bytes(compiled)
  while used > memory_budget and chunk > n_dev:
    per_point = used / (chunk // n_dev)  # Memory is affine in the chunk: one point needs at least this.
    if per_point > memory_budget and batch == 1:
      break
    if chunk > unit:
      target = int(memory_budget // per_point) * n_dev if per_point > 0 else chunk // 2
      new_chunk = _round_chunk(target if target < chunk else chunk // 2, unit)
    else:  # One batch per device is over budget: halve the batch.
      batch = max(1, batch // 2)
      unit = n_dev * batch
      new_chunk = unit
    logging.info("sweep: %d points per chunk need %.3g GB per device > budget %.3g GB; using %d (batch %d)",
                 chunk, used / 1e9, memory_budget / 1e9, new_chunk, batch)
    chunk = new_chunk
    compiled = compile_chunk(chunk, batch)
    used = _bytes(compiled)
  if used > memory_budget:
    per_point = used / (chunk // n_dev)
    raise ValueError(f"sweep does not fit even in chunks: one grid point per device needs at least "
                     f"{per_point / 1e9:.3g} GB per device, over the memory budget of {memory_budget / 1e9:.3g} GB (pass a larger "
                     "memory_budget, use more devices, or shrink the static config: pool_size, n_keep, "
                     "K_max, n_eval)")
  host = out_bytes_per_point(compiled, chunk) * n_points
  if host > _host_free_bytes():
    raise ValueError(f"sweep does not fit: the gathered results need {host / 1e9:.3g} GB of host memory, more "
                     f"than the {_host_free_bytes() / 1e9:.3g} GB free (fewer grid points, or drop "
                     "keep_samples / keep_trajectory)")
  return _Plan(chunk=chunk, n_chunks=-(-n_points // chunk), compiled=compiled, bytes_per_device=used,
               batch=batch)


def _out_bytes_per_point(compiled, chunk: int) -> float:
  try:
    shapes = compiled.out_info
    leaves = jax.tree.leaves(shapes)
    return sum(np.prod(l.shape) * np.dtype(l.dtype).itemsize for l in leaves) / chunk
  except Exception:
    return 0.0


def _info(plan: _Plan, devices, n_points: int) -> dict[str, Any]:
  return dict(devices=len(devices), points=n_points, chunk=plan.chunk, chunks=plan.n_chunks,
              batch_size=plan.batch, bytes_per_device=plan.bytes_per_device)


def _global(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A host numpy array (identical on every process) -> a global array with ``sharding``."""
  return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def _fetch(tree) -> Any:
  """Outputs of one chunk -> numpy on every process (gathered across hosts when there are several)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)


def _run_chunks(plan: _Plan, inputs: Mapping[str, np.ndarray], shared: tuple, n_points: int,
                in_sharding: NamedSharding, rep_sharding: NamedSharding) -> dict[str, np.ndarray]:
  """Run every chunk of the flat grid; ``inputs`` name -> [N, ...]; returns name -> [N, ...] numpy."""
  total = plan.chunk * plan.n_chunks
  # Pad with copies of the first point (valid values; the padded rows are dropped).
  padded = {k: np.concatenate([v, np.repeat(v[:1], total - n_points, 0)], 0) for k, v in inputs.items()}
  shared = tuple(_global(np.asarray(s), rep_sharding) for s in shared)
  out = None
  for c in range(plan.n_chunks):
    sl = slice(c * plan.chunk, (c + 1) * plan.chunk)
    args = {k: _global(np.ascontiguousarray(v[sl]), in_sharding) for k, v in padded.items()}
    res = _fetch(plan.compiled(args, *shared))
    if out is None:
      out = {k: np.empty((total,) + np.shape(v)[1:], np.asarray(v).dtype) for k, v in res.items()}
    for k, v in res.items():
      out[k][sl] = v
  return {k: v[:n_points] for k, v in out.items()}


def _resolve_devices(devices) -> list[jax.Device]:
  devices = list(jax.devices() if devices is None else devices)
  if not devices:
    raise ValueError("sweep needs at least one device")
  return devices


def _shaped(flat: Mapping[str, np.ndarray], lead: tuple[int, ...]) -> dict[str, np.ndarray]:
  return {k: v.reshape(lead + v.shape[1:]) for k, v in flat.items()}


def _warn_nonfinite(metrics: Mapping[str, np.ndarray], axes: Mapping[str, np.ndarray]) -> None:
  er = metrics.get("expected_reward")
  if er is None:
    return
  bad = ~np.all(np.isfinite(er), axis=-1)
  if np.any(bad):
    first = np.argwhere(bad)[0]
    where = {n: axes[n][i].item() for n, i in zip(axes, first)}
    logging.warning("sweep: %d grid point(s) diverged (non-finite expected_reward), e.g. %s",
                    int(bad.sum()), where)


# ----------------------------------------------------------------------------------------------------------
# Monte Carlo loop.


_COMPILED: dict = {}


def _hyper_leaves(cfg: types.Config, flat: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
  """[N] arrays of every :class:`~scl.types.Hyper` leaf, converted exactly as :meth:`Config.hyper`."""
  get = lambda f: np.broadcast_to(np.asarray(flat[f] if f in flat else getattr(cfg, f), np.float64), (n,))
  lam = get("lam")
  with np.errstate(divide="ignore"):
    share = np.where(np.isinf(lam), 0.0, 1.0 / (1.0 + np.where(np.isinf(lam), 0.0, lam)))
  leaves = {"K": get("K").astype(np.int32), "real_share": share.astype(np.float32)}
  for f in ("phi", "kappa", "alpha", "beta", "lr", "l2"):
    leaves[f] = get(f).astype(np.float32)
  return leaves


def _mc_compile(static_cfg: types.Config, devices: tuple, chunk: int, keep_samples: bool, batch: int):
  key = ("mc", static_cfg, devices, chunk, keep_samples, batch)
  if key not in _COMPILED:
    run_fn = loop.make_run_fn(static_cfg)

    def point(inputs):
      hyper = types.Hyper(**{f: inputs[f] for f in types.Hyper.__dataclass_fields__})
      _, outs = run_fn(hyper, inputs["key"])
      return {name: value for name, value in outs.items() if name != "samples" or keep_samples}

    mesh = _mesh(devices)
    sharding = NamedSharding(mesh, P(_GRID_AXIS))
    batched = _sharded_map(point, mesh, batch)
    spec = {f: jax.ShapeDtypeStruct((chunk,), jnp.int32 if f == "K" else jnp.float32, sharding=sharding)
            for f in types.Hyper.__dataclass_fields__}
    spec["key"] = jax.ShapeDtypeStruct((chunk, 2), jnp.uint32, sharding=sharding)
    _COMPILED[key] = batched.lower(spec).compile()
  return _COMPILED[key]


def sweep(cfg: types.Config, *, seeds: int | Iterable[int] = (0,), keep_samples: bool = False,
          devices: Sequence[jax.Device] | None = None, max_chunk: int | None = None,
          memory_budget: float | None = None, batch_size: int | None | str = "auto",
          **grid) -> SweepResult:
  """Run the curated loop of ``cfg`` on the Cartesian grid of ``grid`` × ``seeds``, vmapped and sharded.

  Args:
    cfg: the base config; its static fields (model family, sizes, ``K_max``, ``iterations``) are shared by
      every grid point and its dynamic fields are the values of the hyper-parameters not swept.
    seeds: the seeds (``jax.random.PRNGKey(seed)``, as :func:`scl.run`); an int ``n`` means ``range(n)``.
    keep_samples: keep the ``[T + 1, 1000, d]`` snapshot of every point (dropped by default: memory).
    devices: the devices of the mesh (default ``jax.devices()``: every local device, or every device of
      every process after ``jax.distributed.initialize``).
    max_chunk: at most this many grid points per compiled call (rounded to a multiple of the devices).
    memory_budget: bytes per device the compiled chunk may use (default: see the module docstring).
    batch_size: grid points per device evaluated together by ``jax.vmap``; the rest of each device's shard
      of a chunk is iterated by ``jax.lax.map`` inside the same compiled program. ``"auto"`` (default):
      :func:`default_batch_size` — ``CPU_BATCH_SIZE`` (1) on CPU, where ``vmap`` adds no parallelism and
      the batched program is slower than one point at a time, and the whole shard (None) on GPU/TPU.
      None: the whole shard (a single ``vmap``). Capped by the shard; chunks are padded to a multiple of
      ``devices * batch_size``. Results do not depend on it.
    **grid: any of ``K``, ``lam`` (λ), ``phi`` (φ), ``kappa`` (κ), ``alpha`` (α), ``beta``, ``lr``, ``l2``:
      a sequence of values is an axis of the grid (axes in keyword order), a scalar fixes the value.
      ``K`` values must be ``<= cfg.K_max``.

  Returns:
    A :class:`SweepResult` with axes ``(*swept, "seed", "iteration")``; ``metrics[name]`` has shape
    ``[*len(values), n_seeds, T + 1, ...]``.

  Raises:
    ValueError / TypeError before any compute: unknown names, empty or duplicate values, values outside
    their domain (via :func:`scl.tasks.validate_hyper`), ``K > K_max``, or a grid that does not fit.
  """
  axes, fixed = _split_grid(grid, types.DYNAMIC_FIELDS)
  seed_values = _seed_values(seeds)
  if "K" in axes and np.max(axes["K"]) > cfg.K_max:
    raise ValueError(f"invalid sweep: K={axes['K'].tolist()} exceeds K_max={cfg.K_max}; K_max is static "
                     f"(it fixes the candidate shapes and so the random draws): set "
                     f"cfg.replace(K_max={int(np.max(axes['K']))}) for the whole sweep")
  cfg = cfg.replace(**fixed)
  tasks_lib.validate(cfg)
  tasks_lib.validate_hyper(cfg, **{n: v for n, v in axes.items()})

  flat = _flat_grid(axes, seed_values)
  n = len(flat["seed"])
  inputs = _hyper_leaves(cfg, flat, n)
  inputs["key"] = np.stack([np.asarray(jax.random.PRNGKey(int(s))) for s in flat["seed"]]).astype(np.uint32)

  devices = _resolve_devices(devices)
  static = cfg.static()
  budget = _device_budget(devices) if memory_budget is None else float(memory_budget)
  if isinstance(batch_size, str) and batch_size == "auto":
    batch_size = default_batch_size(devices)
  batch = _local_batch(batch_size, n, len(devices), max_chunk)
  plan = _plan(lambda c, b: _mc_compile(static, tuple(devices), c, keep_samples, b), n, len(devices),
               max_chunk, budget, _out_bytes_per_point, batch)
  mesh = _mesh(devices)
  flat_out = _run_chunks(plan, inputs, (), n, NamedSharding(mesh, P(_GRID_AXIS)), NamedSharding(mesh, P()))

  lead = tuple(len(v) for v in axes.values()) + (len(seed_values),)
  samples = flat_out.pop("samples", None)
  metrics = _shaped(flat_out, lead)
  T = cfg.iterations
  result_axes = {**axes, "seed": seed_values, "iteration": np.arange(T + 1)}
  for name, v in list(axes.items()):
    if name == "K":
      result_axes[name] = v.astype(np.int64)
  _warn_nonfinite(metrics, result_axes)
  return SweepResult(axes=result_axes, metrics=metrics,
                     samples=None if samples is None else samples.reshape(lead + samples.shape[1:]),
                     fixed={f: getattr(cfg, f) for f in types.DYNAMIC_FIELDS if f not in axes},
                     config=cfg, info=_info(plan, devices, n))


# ----------------------------------------------------------------------------------------------------------
# Exact engine.


def _exact_compile(devices: tuple, chunk: int, shapes: tuple, iterations: int, num_nodes: int,
                   keep_trajectory: bool, batch: int):
  n, dtype, has_data, has_adv = shapes
  key = ("exact", devices, chunk, shapes, iterations, num_nodes, keep_trajectory, batch)
  if key not in _COMPILED:

    def point(inputs, p0, r, p_data, r_adv):
      traj, metrics = exact_lib._run(p0, r, inputs["K"], inputs["lam"], p_data if has_data else None,
                                     r_adv if has_adv else None, inputs["phi"], iterations, num_nodes)
      if keep_trajectory:
        metrics = {**metrics, "samples": traj}
      return metrics

    mesh = _mesh(devices)
    sharding, rep = NamedSharding(mesh, P(_GRID_AXIS)), NamedSharding(mesh, P())
    batched = _sharded_map(point, mesh, batch, n_shared=4)
    spec = {f: jax.ShapeDtypeStruct((chunk,), dtype, sharding=sharding) for f in EXACT_FIELDS}
    vec = jax.ShapeDtypeStruct((n,), dtype, sharding=rep)
    _COMPILED[key] = batched.lower(spec, vec, vec, vec, vec).compile()
  return _COMPILED[key]


def exact_sweep(p0, r, *, iterations: int, K: Any = 2.0, lam: Any = float("inf"), phi: Any = 0.0,
                p_data=None, r_adv=None, num_nodes: int = exact_lib.NUM_NODES, keep_trajectory: bool = False,
                devices: Sequence[jax.Device] | None = None, max_chunk: int | None = None,
                memory_budget: float | None = None, batch_size: int | None = None) -> SweepResult:
  """:func:`scl.exact.run` on the Cartesian grid of ``K``, ``lam`` (λ) and ``phi`` (φ), vmapped and sharded.

  A sequence is an axis (axes in the order ``K``, ``lam``, ``phi``), a scalar a fixed value. The engine is
  deterministic, so there is no seed axis; grid point ``(K=k, λ=l)`` equals
  ``scl.exact.run(p0, r, k, l, p_data, iterations=T, r_adv=r_adv, phi=φ)``.

  Args:
    p0, r: ``[n]`` initial model ``p_0`` and reward ``r``.
    iterations: ``T``.
    K: candidates per choice, ``>= 1`` (``inf`` allowed).
    lam: ``λ >= 0`` (``inf``: fully synthetic).
    phi: ``φ`` in [0, 1], the fraction of users who curate with ``r_adv`` (needs ``r_adv`` to be swept).
    p_data, r_adv: ``[n]`` real data (default ``p0``) and adversarial reward ``r~`` (default none).
    num_nodes: quadrature nodes (static).
    keep_trajectory: keep ``p_0 .. p_T`` as ``samples`` ``[*grid, T + 1, n]``.
    devices, max_chunk, memory_budget: as :func:`sweep`.
    batch_size: as :func:`sweep`, but the default is None (the whole shard in one ``vmap``) on every
      backend: each point is a few small vector ops, so batching them pays.

  Returns:
    A :class:`SweepResult` with axes ``(*swept, "iteration")`` and the metrics of :func:`scl.exact.run`.
  """
  axes, fixed = _split_grid({"K": K, "lam": lam, "phi": phi}, EXACT_FIELDS)
  for name, values in {**axes, **{k: np.asarray([v], np.float64) for k, v in fixed.items()}}.items():
    values = np.asarray(values, np.float64)
    if name == "K" and np.any(values < 1):
      raise ValueError(f"invalid sweep: K={values.tolist()}: the number of candidates must be >= 1")
    if name == "lam" and np.any(values < 0):
      raise ValueError(f"invalid sweep: lam={values.tolist()}: λ must be >= 0 (inf: fully synthetic)")
    if name == "phi" and (np.any(values < 0) or np.any(values > 1)):
      raise ValueError(f"invalid sweep: phi={values.tolist()}: φ must lie in [0, 1]")
  if "phi" in axes and r_adv is None:
    raise ValueError("invalid sweep: phi is swept but r_adv is None (φ only acts through r~)")
  if not isinstance(iterations, (int, np.integer)) or iterations < 0:
    raise ValueError(f"invalid sweep: iterations={iterations!r} must be an integer >= 0")

  dtype = exact_lib._dtype(p0, r)
  p0 = np.asarray(p0, dtype)
  r = np.asarray(r, dtype)
  if p0.ndim != 1 or r.shape != p0.shape:
    raise ValueError(f"invalid sweep: p0 {p0.shape} and r {r.shape} must be vectors of the same length")
  vecs = []
  for name, v in (("p_data", p_data), ("r_adv", r_adv)):
    v = p0 if v is None else np.asarray(v, dtype)
    if v.shape != p0.shape:
      raise ValueError(f"invalid sweep: {name} has shape {v.shape}, expected {p0.shape}")
    vecs.append(v)

  flat = _flat_grid(axes, None)
  n = int(np.prod([len(v) for v in axes.values()])) if axes else 1
  inputs = {f: np.broadcast_to(np.asarray(flat.get(f, fixed.get(f)), np.float64), (n,)).astype(dtype)
            for f in EXACT_FIELDS}

  devices = _resolve_devices(devices)
  budget = _device_budget(devices) if memory_budget is None else float(memory_budget)
  shapes = (p0.shape[0], jnp.dtype(dtype), p_data is not None, r_adv is not None)
  batch = _local_batch(batch_size, n, len(devices), max_chunk)
  plan = _plan(lambda c, b: _exact_compile(tuple(devices), c, shapes, int(iterations), int(num_nodes),
                                           keep_trajectory, b),
               n, len(devices), max_chunk, budget, _out_bytes_per_point, batch)
  mesh = _mesh(devices)
  flat_out = _run_chunks(plan, inputs, (p0, r, vecs[0], vecs[1]), n, NamedSharding(mesh, P(_GRID_AXIS)),
                         NamedSharding(mesh, P()))
  lead = tuple(len(v) for v in axes.values())
  samples = flat_out.pop("samples", None)
  metrics = _shaped(flat_out, lead)
  result_axes = {**axes, "iteration": np.arange(int(iterations) + 1)}
  _warn_nonfinite(metrics, result_axes)
  return SweepResult(axes=result_axes, metrics=metrics,
                     samples=None if samples is None else samples.reshape(lead + samples.shape[1:]),
                     fixed={k: float(v) for k, v in fixed.items()}, config=None,
                     info=_info(plan, devices, n))
