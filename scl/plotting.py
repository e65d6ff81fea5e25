"""Figures of a run: reward curves, sample scatters coloured by reward, mode and class proportions, image grids.

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


def mode_proportions(results: Mapping[str, "scl.Result"],
                     rewarded: Sequence[int] | Mapping[str, Sequence[int]] | None = None):
  """Stacked area of the mode proportions over iterations, one panel per result.

  ``rewarded``: the modes where the reward is about its maximum, marked ``(r≈0)`` in the legend; or a mapping
  result name -> such modes, for results whose rewards differ (then named in each panel's title).
  """
  names = list(results)
  per_result = isinstance(rewarded, Mapping)
  fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False)
  for ax, name in zip(axes[0], names):
    props = np.asarray(results[name].metrics["mode_props"])
    t = np.arange(props.shape[0])
    marked = () if rewarded is None or per_result else rewarded
    labels = [f"mode {j}" + (" (r≈0)" if j in marked else "") for j in range(props.shape[1])]
    ax.stackplot(t, props.T, labels=labels, alpha=0.85)
    ax.set_ylim(0, 1)
    title = name
    if per_result and name in rewarded:
      title += "\nr≈0 on modes " + (", ".join(str(j) for j in rewarded[name]) or "none")
    ax.set_title(title)
    ax.set_xlabel("iteration t")
  axes[0][0].set_ylabel("fraction of samples")
  axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
  fig.tight_layout()
  return fig


def curve_panels(panels: Mapping[str, Mapping[str, "scl.Result"]], metric: str = "expected_reward",
                 ylabel: str | None = None, title: str | None = None, sharey: bool = True,
                 linestyles: Mapping[str, str] | None = None):
  """One panel per outer key, one line per inner key: ``metric`` against iteration (shared y axis unless
  ``sharey=False``; ``linestyles`` maps an inner key to a line style)."""
  names = list(panels)
  fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False, sharey=sharey)
  for ax, name in zip(axes[0], names):
    for label, res in panels[name].items():
      values = np.asarray(res.metrics[metric])
      ax.plot(np.arange(values.shape[0]), values, marker="o", ms=3, label=label,
              linestyle=(linestyles or {}).get(label, "-"))
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
      label = f"mode {j}" + ("" if hatch is None else " (penalised)")
      ax.bar(labels, props[:, j], bottom=bottom, hatch=hatch, label=label)
      bottom += props[:, j]
    ax.set_title(name)
    ax.tick_params(axis="x", rotation=45)
  axes[0][0].set_ylabel("final fraction of samples per mode")
  axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
  fig.tight_layout()
  return fig


def class_proportions(results: Mapping[str, "scl.Result"], class_names: Sequence[str] | None = None,
                      highlight: int | None = 0):
  """Stacked area of ``metrics["class_props"]`` (``[T+1, C]``, the classifier's share of samples per class)
  over iterations, one panel per result. ``highlight`` (default class 0, the rewarded one) is drawn with a
  dark edge; with more than 10 classes the legend lists only the first 10."""
  names = list(results)
  cols = min(len(names), 4)
  rows = -(-len(names) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols + 1.6, 3.2 * rows), squeeze=False, sharey=True)
  handles = None
  for ax, name in zip(axes.flat, names):
    props = np.asarray(results[name].metrics["class_props"])
    C = props.shape[1]
    labels = list(class_names) if class_names is not None else [f"class {c}" for c in range(C)]
    colors = plt.get_cmap("tab10" if C <= 10 else "tab20")(np.arange(C) % (10 if C <= 10 else 20))
    t = np.arange(props.shape[0])
    handles = ax.stackplot(t, props.T, labels=labels, colors=colors, alpha=0.9)
    if highlight is not None and 0 <= highlight < C:
      handles[highlight].set_edgecolor("black")
      handles[highlight].set_linewidth(1.2)
    ax.set_ylim(0, 1)
    ax.set_xlim(t[0], max(t[-1], 1))
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("iteration t")
  for ax in axes.flat[len(names):]:
    ax.axis("off")
  for r in range(rows):
    axes[r][0].set_ylabel("share of samples per class")
  right = 1 - 1.3 / (3.6 * cols + 1.6)
  fig.tight_layout(rect=(0, 0, right, 1))
  if handles is not None:
    fig.legend(handles[:10], [h.get_label() for h in handles[:10]], loc="center left",
               bbox_to_anchor=(right, 0.5), fontsize=8)
  return fig


def image_grid(samples: np.ndarray, steps: Sequence[int], n_per_row: int = 12, title: str = "",
               labels: np.ndarray | None = None):
  """A grid of sample images: one row per iteration in ``steps``, the first ``n_per_row`` samples of each.

  Args:
    samples: ``[T+1, n, H, W, C]`` images with pixel values in ``[-1, 1]`` (clipped), ``C`` 1 (grey) or 3.
    steps: the iterations to show (rows).
    n_per_row: images per row.
    title: figure title.
    labels: optional ``[T+1, n]`` integers (e.g. the classifier's predicted class) written above each image.
  """
  samples = np.asarray(samples)
  if samples.ndim != 5 or samples.shape[-1] not in (1, 3):
    raise ValueError(f"image_grid needs samples [T+1, n, H, W, C] with C = 1 or 3, got {samples.shape}")
  steps = list(steps)
  n_per_row = min(n_per_row, samples.shape[1])
  H, W = samples.shape[2:4]
  size = 0.75 * max(1.0, W / 16) ** 0.5
  fig, axes = plt.subplots(len(steps), n_per_row, figsize=(size * n_per_row + 0.8, size * len(steps) + 0.5),
                           squeeze=False)
  for i, t in enumerate(steps):
    for j in range(n_per_row):
      ax = axes[i][j]
      img = (np.clip(samples[t, j], -1.0, 1.0) + 1.0) / 2.0
      if img.shape[-1] == 1:
        ax.imshow(img[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
      else:
        ax.imshow(img, interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      if labels is not None:
        ax.set_title(str(int(labels[t, j])), fontsize=7, pad=1)
    axes[i][0].set_ylabel(f"t = {t}", rotation=0, ha="right", va="center", fontsize=9)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout(pad=0.3, w_pad=0.1, h_pad=0.2)
  return fig


def array_panels(panels: Mapping[str, Mapping[str, np.ndarray]], ylabel: str = "", title: str | None = None,
                 sharey: bool = False, linestyles: Mapping[str, str] | None = None, logy: Sequence[str] = ()):
  """One panel per outer key, one line per inner key: a ``[T+1]`` array against iteration.

  ``linestyles`` maps an inner key to a matplotlib line style (e.g. ``"--"``); panels named in ``logy`` get
  a logarithmic y axis.
  """
  names = list(panels)
  fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 3.6), squeeze=False, sharey=sharey)
  for ax, name in zip(axes[0], names):
    for label, values in panels[name].items():
      values = np.asarray(values)
      ax.plot(np.arange(values.shape[0]), values, marker="o", ms=3, label=label,
              linestyle=(linestyles or {}).get(label, "-"))
    ax.set_title(name)
    ax.set_xlabel("iteration t")
    if name in logy:
      ax.set_yscale("log")
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel(ylabel)
  axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return fig


def metric_panels(results: Mapping[str, "scl.Result"], metrics: Mapping[str, str] | Sequence[str],
                  linestyles: Mapping[str, str] | None = None, logy: Sequence[str] = ()):
  """One panel per metric (``{name: title}`` or names), one line per result, against iteration; metrics
  named in ``logy`` on a logarithmic axis."""
  if not isinstance(metrics, Mapping):
    metrics = {m: m.replace("_", " ") for m in metrics}
  return array_panels({label: {name: res.metrics[m] for name, res in results.items()}
                       for m, label in metrics.items()}, linestyles=linestyles,
                      logy=[label for m, label in metrics.items() if m in logy])
