"""Figures of a run: reward curves, sample scatters coloured by reward, mode proportions.

Each function takes results (or arrays) and returns a matplotlib Figure; :func:`scl.files.save_figure` writes
it atomically. Uses the non-interactive Agg backend unless a notebook has already chosen one.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib

if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
  matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def metric_curves(results: Mapping[str, "scl.Result"], metric: str = "expected_reward",
                  ylabel: str | None = None, title: str | None = None, bands: Mapping[str, tuple] | None = None):
  """One line per named result: ``metric`` against iteration (optionally with (low, high) bands)."""
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, res in results.items():
    values = np.asarray(res.metrics[metric])
    ax.plot(np.arange(values.shape[0]), values, marker="o", ms=3, label=name)
    if bands and name in bands:
      lo, hi = bands[name]
      ax.fill_between(np.arange(values.shape[0]), lo, hi, alpha=0.2)
  ax.set_xlabel("iteration t")
  ax.set_ylabel(ylabel or metric)
  ax.set_title(title or metric.replace("_", " "))
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  return fig


def sample_scatter(samples: np.ndarray, rewards: np.ndarray, iterations: Sequence[int], title: str = "",
                   lim: float | None = None):
  """Scatter of ``samples [T+1, n, 2]`` at the given iterations, coloured by reward ``[T+1, n]``."""
  iterations = list(iterations)
  fig, axes = plt.subplots(1, len(iterations), figsize=(3.2 * len(iterations), 3.4), squeeze=False)
  vmin, vmax = float(np.min(rewards)), float(np.max(rewards))
  if lim is None:
    lim = float(np.quantile(np.abs(samples[..., :2]), 0.995)) * 1.15 + 1e-3
  sc = None
  for ax, t in zip(axes[0], iterations):
    sc = ax.scatter(samples[t, :, 0], samples[t, :, 1], c=rewards[t], s=3, cmap="viridis", vmin=vmin,
                    vmax=vmax)
    ax.set_title(f"t = {t}")
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
  fig.colorbar(sc, ax=axes[0].tolist(), shrink=0.85, label="true reward r(x)")
  if title:
    fig.suptitle(title)
  return fig


def mode_proportions(results: Mapping[str, "scl.Result"], rewarded: Sequence[int] | None = None):
  """Stacked area of the mode proportions over iterations, one panel per result."""
  names = list(results)
  fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False)
  for ax, name in zip(axes[0], names):
    props = np.asarray(results[name].metrics["mode_props"])
    t = np.arange(props.shape[0])
    labels = [f"mode {j}" + (" (r≈0)" if rewarded is not None and j in rewarded else "")
              for j in range(props.shape[1])]
    ax.stackplot(t, props.T, labels=labels, alpha=0.85)
    ax.set_ylim(0, 1)
    ax.set_title(name)
    ax.set_xlabel("iteration t")
  axes[0][0].set_ylabel("fraction of samples")
  axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
  fig.tight_layout()
  return fig


def curve_panels(panels: Mapping[str, Mapping[str, "scl.Result"]], metric: str = "expected_reward",
                 ylabel: str | None = None, title: str | None = None):
  """One panel per outer key, one line per inner key: ``metric`` against iteration, shared y axis."""
  names = list(panels)
  fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False, sharey=True)
  for ax, name in zip(axes[0], names):
    for label, res in panels[name].items():
      values = np.asarray(res.metrics[metric])
      ax.plot(np.arange(values.shape[0]), values, marker="o", ms=3, label=label)
    ax.set_title(name)
    ax.set_xlabel("iteration t")
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel(ylabel or metric)
  axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return fig


def final_mode_bars(panels: Mapping[str, Mapping[str, "scl.Result"]], rewarded: Sequence[int] | None = None):
  """Stacked bars of the final mode proportions: one panel per outer key, one bar per inner key."""
  names = list(panels)
  fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.8), squeeze=False, sharey=True)
  for ax, name in zip(axes[0], names):
    labels = list(panels[name])
    props = np.stack([np.asarray(panels[name][k].metrics["mode_props"])[-1] for k in labels])  # [bars, m]
    bottom = np.zeros(len(labels))
    for j in range(props.shape[1]):
      hatch = None if rewarded is None or j in rewarded else "//"
      ax.bar(labels, props[:, j], bottom=bottom, hatch=hatch, label=f"mode {j}" + ("" if hatch is None else " (penalised)"))
      bottom += props[:, j]
    ax.set_title(name)
    ax.tick_params(axis="x", rotation=45)
  axes[0][0].set_ylabel("final fraction of samples per mode")
  axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
  fig.tight_layout()
  return fig
