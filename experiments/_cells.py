"""What the attack binaries share (``experiments/adversarial.py``, ``experiments/defences.py``).

Each runs a grid of named cells, ``(setting, attack, recipe or defence) -> scl.Config``, one ``scl.sweep`` call
over seeds per cell, and writes the same long metrics table, the same nested metrics JSON, and reward curves
with seed bands. The functions here take a cell's key as a tuple of names, and the names of its columns.

A stopped run loses no finished cell: :func:`run_cells` writes each cell's result (its axes and metrics) to
``<workdir>/cells/<key>.npz`` atomically as soon as it finishes, and a rerun with the same ``--workdir`` loads the
cells whose configuration, seeds and scl's source code (:func:`scl.checkpoint.code_digest`) are unchanged
instead of running them again (digested as :mod:`scl.checkpoint` digests a run's; a cell whose configuration
cannot be digested always runs, unsaved).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import time

from absl import logging
import numpy as np
import pandas as pd

import scl
from scl import checkpoint
from scl import files
from scl import plotting  # noqa: F401  (selects the Agg backend before pyplot loads)

import matplotlib.pyplot as plt  # noqa: E402


def check_level(level: float) -> None:
  """A confidence level in (0, 1), checked before any compute (``--level``)."""
  if not 0.0 < float(level) < 1.0:
    raise ValueError(f"invalid flag: level={level!r}: the confidence level must lie in (0, 1)")


def check_nonempty(config, *fields: str) -> None:
  """Raise ``ValueError`` naming the first of ``config``'s list fields that is empty (a cell grid without it has
  no cells to tabulate or draw)."""
  for field in fields:
    if not len(config[field]):
      raise ValueError(f"invalid config: {field} is empty; the table and the figures need at least one")


def fingerprint(cfg: scl.Config, seeds: int) -> str | None:
  """A digest of what a cell's result depends on: its configuration and seeds (:func:`scl.checkpoint.fingerprint`,
  arrays by their bytes, functions by their code) and scl's source code; None if the configuration holds a value whose
  identity cannot be digested (such a cell always runs and is not saved)."""
  try:
    fp = checkpoint.fingerprint(cfg, seeds)
  except checkpoint.Untrusted as e:
    logging.warning("cell not resumable: %s", e)
    return None
  return hashlib.sha256(json.dumps([fp, checkpoint.code_digest()], sort_keys=True).encode()).hexdigest()


def cell_path(workdir: str, cell: tuple[str, ...]) -> str:
  """``<workdir>/cells/<names joined by "__">.npz`` (characters other than letters, digits, ``.-_`` as ``_``)."""
  name = "__".join(re.sub(r"[^A-Za-z0-9._-]+", "_", part) for part in cell)
  return os.path.join(workdir, "cells", name + ".npz")


def save_cell(path: str, res: scl.SweepResult, digest: str, seconds: float) -> None:
  """Write a cell's axes and metrics, its :func:`fingerprint` and its seconds to ``path`` atomically."""
  arrays = {f"axis/{name}": np.asarray(v) for name, v in res.axes.items()}
  arrays.update({f"metric/{name}": np.asarray(v) for name, v in res.metrics.items()})
  buffer = io.BytesIO()
  np.savez(buffer, fingerprint=np.asarray(digest), seconds=np.asarray(seconds), **arrays)
  files.write_bytes(path, buffer.getvalue())


def load_cell(path: str, cfg: scl.Config, digest: str) -> tuple[scl.SweepResult, float] | None:
  """The cell saved at ``path`` as ``(result, seconds)`` if it exists and its fingerprint is ``digest``."""
  if not os.path.exists(path):
    return None
  with np.load(path, allow_pickle=False) as saved:
    if str(saved["fingerprint"]) != digest:
      return None
    axes = {k[len("axis/"):]: saved[k] for k in saved.files if k.startswith("axis/")}
    metrics = {k[len("metric/"):]: saved[k] for k in saved.files if k.startswith("metric/")}
    seconds = float(saved["seconds"])
  return scl.SweepResult(axes=axes, metrics=metrics, config=cfg, info={"loaded_from": path}), seconds


def run_cells(todo: dict[tuple[str, ...], scl.Config], seeds: int, desc: str,
              workdir: str | None = None) -> tuple[dict, dict]:
  """Run every cell of ``todo`` over ``range(seeds)`` with a progress bar: ``({cell: SweepResult}, {cell: s})``.

  With ``workdir``, each finished cell is saved under ``<workdir>/cells/`` and a cell saved there by an earlier
  run with the same configuration and seeds is loaded instead of run (its seconds are the earlier run's).
  """
  from tqdm.auto import tqdm
  if workdir:  # two cells whose names map to one file would overwrite each other's saved result
    paths: dict[str, tuple[str, ...]] = {}
    for cell in todo:
      other = paths.setdefault(cell_path(workdir, cell), cell)
      if other != cell:
        raise ValueError(f"invalid config: cells {other} and {cell} would share the file {cell_path(workdir, cell)}; "
                         "rename one (names differing only in characters other than letters, digits, '.-_')")
  results, seconds = {}, {}
  bar = tqdm(todo.items(), desc=desc, unit="cell")
  for cell, cfg in bar:
    bar.set_postfix_str("/".join(cell))
    digest = fingerprint(cfg, seeds) if workdir else None
    path = cell_path(workdir, cell) if digest else None
    loaded = load_cell(path, cfg, digest) if path else None
    if loaded is not None:
      logging.info("loaded %s from %s", cell, path)
      results[cell], seconds[cell] = loaded
      continue
    logging.info("running %s over %d seeds", cell, seeds)
    start = time.perf_counter()
    results[cell] = scl.sweep(cfg, seeds=seeds)
    seconds[cell] = time.perf_counter() - start
    if path:
      save_cell(path, results[cell], digest, seconds[cell])
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
