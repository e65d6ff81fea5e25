"""What the attack binaries share (``experiments/adversarial.py``, ``experiments/defences.py``).

Each runs a grid of named cells, ``(setting, attack, recipe or defence) -> scl.Config``, one ``scl.sweep`` call
over seeds per cell, and writes the same long metrics table, the same nested metrics JSON, and reward curves
with seed bands. The functions here take a cell's key as a tuple of names, and the names of its columns.
"""

from __future__ import annotations

import time

from absl import logging
import numpy as np
import pandas as pd

import scl
from scl import plotting  # noqa: F401  (selects the Agg backend before pyplot loads)

import matplotlib.pyplot as plt  # noqa: E402


def run_cells(todo: dict[tuple[str, ...], scl.Config], seeds: int, desc: str) -> tuple[dict, dict]:
  """Run every cell of ``todo`` over ``range(seeds)`` with a progress bar: ``({cell: SweepResult}, {cell: s})``."""
  from tqdm.auto import tqdm
  results, seconds = {}, {}
  bar = tqdm(todo.items(), desc=desc, unit="cell")
  for cell, cfg in bar:
    bar.set_postfix_str("/".join(cell))
    logging.info("running %s over %d seeds", cell, seeds)
    start = time.perf_counter()
    results[cell] = scl.sweep(cfg, seeds=seeds)
    seconds[cell] = time.perf_counter() - start
  return results, seconds


def metrics_frame(results: dict, columns: tuple[str, ...]) -> pd.DataFrame:
  """The long table: every cell's :meth:`scl.SweepResult.to_frame`, led by its key's ``columns``."""
  frames = []
  for cell, res in results.items():
    frame = res.to_frame()
    for column, name in reversed(tuple(zip(columns, cell, strict=True))):
      frame.insert(0, column, name)
    frames.append(frame)
  return pd.concat(frames, ignore_index=True)


def nested_metrics(results: dict) -> dict:
  """``{key[0]: {key[1]: ... {key[-1]: metrics}}}`` of every cell's metrics ``[seed, iteration]``."""
  nested: dict = {}
  for cell, res in results.items():
    node = nested
    for name in cell[:-1]:
      node = node.setdefault(name, {})
    node[cell[-1]] = res.metrics
  return nested


def step_mean(res: scl.SweepResult, metric: str) -> float:
  """Mean of a per-step ``metric`` over seeds and steps, NaN-aware (its last row, at ``p_T``, is NaN: no step
  follows it); NaN when the cell does not report it or reports only NaN."""
  if metric not in res.metrics:
    return float("nan")
  values = np.asarray(res.metrics[metric], np.float64)[..., :-1]
  return float(np.nanmean(values)) if np.any(np.isfinite(values)) else float("nan")


def band_panels(panels: dict[str, dict[str, scl.SweepResult]], metric: str, ylabel: str, title: str,
                level: float, max_columns: int = 6):
  """One panel per key of ``panels`` (at most ``max_columns`` in a row), one line per attack: the mean of
  ``metric`` over seeds per iteration with its Student-t band at ``level``."""
  names = list(panels)
  columns = min(len(names), max_columns)
  rows = -(-len(names) // columns)
  fig, axes = plt.subplots(rows, columns, figsize=(3.8 * columns, 3.3 * rows), squeeze=False, sharey=True)
  for ax, name in zip(axes.flat, names):
    for attack, res in panels[name].items():
      ci = res.mean_ci(metric, level)
      t = res.axes["iteration"]
      ax.plot(t, ci.mean, marker="o", ms=3, label=attack)
      if ci.n > 1:
        ax.fill_between(t, ci.low, ci.high, alpha=0.15)
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("iteration t")
    ax.grid(alpha=0.3)
  for ax in axes.flat[len(names):]:
    ax.axis("off")
  for row in axes:
    row[0].set_ylabel(ylabel)
  axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
  fig.suptitle(f"{title} (mean over seeds, {int(round(level * 100))}% bands)")
  fig.tight_layout()
  return fig
