"""Labelled results of a sweep: a grid of runs with named axes (``K``, ``lam``, ..., ``seed``, ``iteration``).

::

    grid.metrics["expected_reward"]      # [len(K), len(lam), n_seeds, T + 1]
    grid.sel(K=4, lam=1.0)               # the same result without the K and λ axes
    grid.mean_ci("expected_reward")      # mean and Student-t interval over seeds
    grid.to_frame()                      # long table: one row per (K, λ, seed, iteration)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple, Sequence

import numpy as np


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


#: Relative distance at which two grid values are one point: the sweep runs hyper-parameters in float32.
FLOAT32_RTOL = 4 * float(np.finfo(np.float32).eps)


def _matches(values: np.ndarray, value) -> np.ndarray:
  values = np.asarray(values)
  if values.dtype.kind in "fc":
    value = float(value)
    if math.isinf(value):
      return values == value
    # at float32 resolution: the sweep runs its hyper-parameters in float32, so np.float32(0.1) taken from a
    # result must find the grid point 0.1 (the sweep refuses grid values closer than this)
    return np.isclose(values, value, rtol=FLOAT32_RTOL, atol=0.0)
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
    config: the base :class:`~scl.config.Config` (None for the exact engine).
    info: how it ran: ``devices``, ``points`` (grid points), ``chunk`` (points per compiled call),
      ``chunks``, ``batch_size`` (points per ``vmap`` per device) and ``bytes_per_device`` (from the compiled
      program's memory analysis); the last three are None where nothing was computed. With a ``workdir`` also
      ``run`` (points computed by this call), ``resumed`` (points loaded from the store) and ``store`` (its
      directory).
  """

  axes: dict[str, np.ndarray]
  metrics: dict[str, np.ndarray]
  samples: np.ndarray | None = None
  fixed: dict[str, Any] = dataclasses.field(default_factory=dict)
  config: Any = None
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
    """The size of each axis, in :attr:`dims` order."""
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
      position = self._index(name, value)     # raises for an unknown axis or value
      index[names.index(name)] = position
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
