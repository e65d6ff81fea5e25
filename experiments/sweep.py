r"""Run a grid of curated loops (vmapped, sharded over every device) and write a table and figures.

    python experiments/sweep.py --workdir=runs/sweep --config=experiments/configs/sweep.py \
        --config.grid.K="(1, 2, 4, 8)" --config.grid.lam="(0.5, 1.0, inf)" --config.seeds=4

Several hosts: start the same command on every host with ``--coordinator_address=host0:1234
--num_processes=N --process_id=i``; ``jax.distributed.initialize`` joins them, the grid is laid over the
devices of all of them, and process 0 alone writes the results.

Writes into ``--workdir``:
  sweep.csv        long table: one row per (grid point, seed, iteration), every metric a column
  summary.csv      mean and confidence interval over seeds of expected_reward per (grid point, iteration)
                   (Monte Carlo engine: the exact engine has no seeds)
  sweep.json       axes, fixed values, how it ran (devices, chunks), final expected reward mean / CI (over seeds,
                   Monte Carlo engine)
  samples.npz      with ``keep_samples`` (Monte Carlo engine): ``samples`` (the result's axes, then each snapshot's
                   points and coordinates) and one ``axis_<name>`` array per axis
  heatmap_K_lam.png, heatmap_kappa_phi.png   final expected reward over K × λ and κ × φ (mean over seeds
                   and over any other swept axis), when both axes of a pair are swept
  curves.png       expected reward against iteration, one line per grid point, seed confidence bands
  sweep_points/    every finished grid point (Monte Carlo engine), a file per chunk: a stopped sweep
                   rerun with the same --workdir runs only the points it had not finished, and a grid grown
                   by new values runs only the new points (scl.sweep's workdir); points saved by other
                   scl source code are run again.
"""

from __future__ import annotations

import math
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # Run from a checkout.

if __name__ == "__main__":  # the grid over the CPU cores as devices (1.4-2.3x on 2 cores); before JAX
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # experiments/, also under python -m
  import _devices  # experiments/_devices.py
  _devices.cpu_cores_as_devices()

import jax  # noqa: E402
import numpy as np  # noqa: E402

import scl  # noqa: E402
from scl import files  # noqa: E402
from scl import plotting  # noqa: E402, F401  (selects the Agg backend)
from scl import sweeps  # noqa: E402
from scl import task as task_lib  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "sweep.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Sweep configuration file.",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", "runs/sweep", "Where to write the table and figures.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (several hosts).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (hosts).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's id, 0 .. num_processes - 1.")
_LEVEL = flags.DEFINE_float("level", 0.95, "Confidence level of the bands over seeds.")

_BINARY_FIELDS = ("grid", "seeds", "engine", "keep_samples", "max_chunk", "memory_budget")
_LABELS = {"K": "K", "lam": "λ", "phi": "φ", "kappa": "κ", "alpha": "α", "beta": "β", "lr": "lr", "l2": "l2",
           "eps": "ε"}


def _grid(config) -> dict:
  grid = {}
  for name, values in config.grid.to_dict().items():
    if values is None:  # a traced field the preset does not sweep and no flag set
      continue
    values = scl.configs.flag_values(f"grid.{name}", values)
    grid[name] = [int(v) if name == "K" and math.isfinite(v) and v == int(v) else v for v in values]
  return grid


def run_sweep(config, workdir: str | None = None, progress: bool = False) -> sweeps.SweepResult:
  """The library call the binary makes: the base config and grid of ``config`` -> a SweepResult.

  With ``workdir``, the Monte Carlo engine keeps its finished points there and runs only the others
  (``scl.sweep(..., workdir=...)``); the exact engine takes milliseconds and keeps nothing."""
  cfg = scl.configs.from_flags(config, _BINARY_FIELDS)()  # keywords left None keep the builder's defaults
  grid = _grid(config)
  chunking = dict(max_chunk=config.max_chunk or None, memory_budget=config.memory_budget or None)
  if config.engine == "exact":
    unknown = sorted(set(grid) - set(sweeps.EXACT_FIELDS))
    if unknown:
      raise ValueError(f"the exact engine sweeps only {sweeps.EXACT_FIELDS}, not {unknown}")
    # scl.exact is K-choice curation by the users' own reward (r~ for the φ share), retrained exactly: a setting
    # that would change the loop it models must not be dropped silently
    ignored = [f"curation={cfg.curation.name!r}"] if cfg.curation.name != "choice" else []
    p = cfg.platform
    ignored += [f"{k}={v!r}" for k, v, default in (("attack", p.attack, "none"), ("defence", p.defence, "none"),
                                                    ("labels", p.labels, "deterministic"),
                                                    ("learned_for", p.learned_for, "all")) if v != default]
    ignored += ["learned_reward=True"] if p.learned_reward else []
    if ignored or config.keep_samples:
      raise ValueError(f"invalid config: {', '.join(ignored or ['keep_samples=True'])}: the exact engine models "
                       "K-choice curation by the users' reward with an exact refit, and keeps no samples; use "
                       "--config.engine=mc for this setting")
    p_data, r, r_tilde = task_lib.support_arrays(cfg)   # a continuous data set is discretised
    fixed = {f: getattr(cfg.hyper, f) for f in sweeps.EXACT_FIELDS}
    return sweeps.exact_sweep(p_data, r, iterations=cfg.iterations, r_tilde=r_tilde, **{**fixed, **grid},
                              **chunking)
  if config.engine != "mc":
    raise ValueError(f"unknown engine {config.engine!r}; choose 'mc' or 'exact'")
  return sweeps.sweep(cfg, seeds=config.seeds, keep_samples=config.keep_samples, workdir=workdir,
                      progress=progress, **grid, **chunking)


def _fmt(v) -> str:
  return "inf" if isinstance(v, float) and math.isinf(v) else f"{v:g}"


def final_mean(result: sweeps.SweepResult, metric: str = "expected_reward") -> np.ndarray:
  """Final ``metric`` averaged over seeds: ``[*grid]``."""
  final = result.final()
  values = final.metrics[metric]
  return values.mean(final.dims.index("seed")) if "seed" in final.dims else values


def heatmap(result: sweeps.SweepResult, rows: str, cols: str, metric: str = "expected_reward"):
  """Final ``metric`` over ``rows`` × ``cols`` (mean over seeds and the other swept axes)."""
  grid_dims = list(result.grid_dims)
  values = final_mean(result, metric)
  others = tuple(i for i, d in enumerate(grid_dims) if d not in (rows, cols))
  values = values.mean(others) if others else values
  kept = [d for d in grid_dims if d in (rows, cols)]
  if kept != [rows, cols]:
    values = values.T
  fig, ax = plt.subplots(figsize=(1.1 * len(result.axes[cols]) + 2.5, 0.7 * len(result.axes[rows]) + 1.8))
  im = ax.imshow(values, cmap="viridis", aspect="auto", origin="lower")
  for i in range(values.shape[0]):
    for j in range(values.shape[1]):
      ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=8, color="w")
  ax.set_xticks(range(values.shape[1]), [_fmt(v.item()) for v in result.axes[cols]])
  ax.set_yticks(range(values.shape[0]), [_fmt(v.item()) for v in result.axes[rows]])
  ax.set_xlabel(_LABELS.get(cols, cols))
  ax.set_ylabel(_LABELS.get(rows, rows))
  note = " (mean over " + ", ".join(grid_dims[i] for i in others) + ")" if others else ""
  ax.set_title(f"final {metric.replace('_', ' ')}{note}", fontsize=9)
  fig.colorbar(im, ax=ax)
  fig.tight_layout()
  return fig


def curves(result: sweeps.SweepResult, metric: str = "expected_reward", level: float = 0.95,
           max_lines: int = 16):
  """``metric`` against iteration, one line per grid point (at most ``max_lines``), with seed bands."""
  grid_dims = result.grid_dims
  if "seed" in result.dims:
    ci = result.mean_ci(metric, level)
    mean, low, high = ci.mean, ci.low, ci.high
  else:
    mean, low, high = result.metrics[metric], None, None
  shape = tuple(len(result.axes[d]) for d in grid_dims)
  flat = mean.reshape(-1, mean.shape[-1])
  idx = np.linspace(0, flat.shape[0] - 1, min(max_lines, flat.shape[0])).round().astype(int)
  fig, ax = plt.subplots(figsize=(7, 4.5))
  t = result.axes["iteration"]
  for i in np.unique(idx):
    coords = np.unravel_index(i, shape) if shape else ()
    label = ", ".join(f"{_LABELS.get(d, d)}={_fmt(result.axes[d][c].item())}" for d, c in zip(grid_dims, coords))
    ax.plot(t, flat[i], marker="o", ms=3, label=label or metric)
    if low is not None and np.all(np.isfinite(low.reshape(flat.shape)[i])):
      ax.fill_between(t, low.reshape(flat.shape)[i], high.reshape(flat.shape)[i], alpha=0.15)
  ax.set_xlabel("iteration t")
  ax.set_ylabel(metric)
  band = f", {int(round(level * 100))}% bands over seeds" if low is not None else ""
  ax.set_title(f"{metric.replace('_', ' ')}{band}", fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
  fig.tight_layout()
  return fig


def write_outputs(result: sweeps.SweepResult, workdir: str, level: float = 0.95) -> None:
  files.write_csv(os.path.join(workdir, "sweep.csv"), result.to_frame())
  summary = {"axes": {k: v.tolist() for k, v in result.axes.items()}, "fixed": result.fixed,
             "info": result.info, "final_expected_reward_mean": final_mean(result).tolist()}
  if "seed" in result.dims:
    files.write_csv(os.path.join(workdir, "summary.csv"), result.summary("expected_reward", level))
    ci = result.final().mean_ci("expected_reward", level)
    summary.update(final_expected_reward_low=ci.low.tolist(), final_expected_reward_high=ci.high.tolist(),
                   level=level)
  files.write_json(os.path.join(workdir, "sweep.json"), summary)
  if result.samples is not None:  # keep_samples: every point's snapshot of p_t, as the result holds them
    with files.atomic_open(os.path.join(workdir, "samples.npz"), "wb") as f:
      np.savez_compressed(f, samples=np.asarray(result.samples, np.float32),
                          **{f"axis_{k}": np.asarray(v) for k, v in result.axes.items()})
  for rows, cols in (("K", "lam"), ("kappa", "phi")):
    if rows in result.grid_dims and cols in result.grid_dims:
      files.save_figure(os.path.join(workdir, f"heatmap_{rows}_{cols}.png"), heatmap(result, rows, cols))
  files.save_figure(os.path.join(workdir, "curves.png"), curves(result, level=level))
  plt.close("all")
  print(f"wrote sweep.csv, sweep.json and figures to {os.path.abspath(workdir)}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _COORDINATOR.value or (_NUM_PROCESSES.value or 1) > 1:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)
  logging.info("process %d of %d, %d devices in all", jax.process_index(), jax.process_count(),
               jax.device_count())
  if not 0.0 < _LEVEL.value < 1.0:
    raise app.UsageError(f"--level={_LEVEL.value!r}: the confidence level must lie in (0, 1)")
  result = run_sweep(_CONFIG.value, workdir=_WORKDIR.value, progress=True)
  logging.info("ran %s", result.info)
  if jax.process_index() == 0:
    write_outputs(result, _WORKDIR.value, _LEVEL.value)


if __name__ == "__main__":
  app.run(main)
