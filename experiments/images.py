r"""Images in the curated loop: benign curation against label-flip attacks, with and without real data.

    python experiments/images.py --config=experiments/configs/images.py:digits --workdir=runs/images_digits
    python experiments/images.py --config=experiments/configs/images.py:quick --workdir=/tmp/images_quick
    python experiments/images.py --config=experiments/configs/images.py:cifar10 --workdir=runs/images_cifar10

Runs every variant of the config (benign curation with ``5 · P(class 0)``; benign, random and gradient
attacks at κ = 0.2 on the platform's learned ``10 − class`` reward; each fully synthetic and with real data
1:1), resuming each from its checkpoints, and writes into ``--workdir``:

  metrics.csv, metrics.json   one row per (variant, iteration): expected_reward, class_props_<c>,
                              frechet_distance, precision, recall, the platform's statistics, ...
  summary.csv, summary.json   one row per variant: the rewarded class's share (``target_share``; class
                              ``target_class``), the expected reward and both rewards (``γ P(class c)``
                              and ``10 − class``, measured on every variant's samples with its own
                              classifier) first -> last, the final Fréchet distance, precision and recall,
                              seconds
  reward.png                  expected true reward per iteration, every variant (one panel per reward)
  rewards_both.png            both rewards for every variant, on the saved samples
  classes.png                 class proportions as stacked areas, one panel per variant
  quality.png                 Fréchet distance, precision and recall per iteration, every variant
  samples_<variant>.png       a grid of sample images per iteration (labels: the classifier's class)
  samples_<variant>.npz       ``save_samples`` images per iteration ``[T+1, n, H, W, C]`` in [-1, 1]
  <variant>/checkpoint.msgpack  per-iteration checkpoints: rerunning with the same workdir resumes.

CIFAR-10/100 must be prepared once (see BUILD.md); without them the binary stops at once with the command to
run. Any field of the config can be set as a flag: ``--config.iterations=4``, ``--config.width=128``; a field
that every variant sets (``lam``) is set through ``--config.variants``: at the top level it is an error (every
variant would replace it).
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import sys
import time

if __name__ == "__main__":  # every CPU core an XLA device, so variants run side by side; before JAX
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # experiments/, also under python -m
  import _devices  # experiments/_devices.py
  _devices.cpu_cores_as_devices()

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # Run from a checkout.

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import scl  # noqa: E402
from scl import files  # noqa: E402
from scl import loop  # noqa: E402
from scl import plotting  # noqa: E402
from scl import task as task_lib  # noqa: E402

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "images.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Experiment configuration file.",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", "runs/images", "Where to write metrics, plots, checkpoints.")

_BINARY_FIELDS = ("seed", "checkpoint_every", "variants", "save_samples", "grid_rows", "parallel")

#: The rewards every variant is also scored by (on its saved samples), by name.
REWARDS = ("class_prob", "class_index")


def reward_label(cfg: scl.Config, name: str | None = None) -> str:
  """How the reward ``name`` (default: ``cfg``'s own) reads in titles and legends, with ``cfg``'s ``gamma``,
  ``target_class`` and number of classes (``5 P(class 0)``, ``10 - class``, ``10 - floor(class / 10)``)."""
  name = name or cfg.reward.name
  if name == "class_prob":
    return f"{cfg.reward.gamma:g} P(class {cfg.reward.target_class})"
  if name == "class_index":
    classes = task_lib.build(cfg)[0].classifier.num_classes
    return "10 - class" if classes == 10 else f"10 - floor(10 class / {classes})"
  return name


slug = files.slug  # a variant's file name


def build_configs(config) -> dict[str, scl.Config]:
  """Variant name -> validated scl Config (every variant fails before any compute on a bad value)."""
  make = scl.configs.from_flags(config, _BINARY_FIELDS)  # keywords left None keep the builder's defaults
  for field in ("grid_rows", "save_samples"):
    value = config.get(field)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"invalid config: {field}={value!r}: must be an integer >= 1")
  scl.loop.check_run_args(config.seed, config.checkpoint_every)  # before any data set or classifier is built
  files.unique_slugs(config.variants)  # their checkpoints and sample files would share a name
  cfgs = {name: make(**dict(overrides)) for name, overrides in config.variants.items()}
  scl.configs.check_runs(make)  # a top-level setting every variant replaces (lam)
  return cfgs


def reward_of(cfg: scl.Config, name: str):
  """The reward ``name`` (``class_prob`` / ``class_index``) of ``cfg``'s data set as a jitted function of
  images ``[n, H, W, C] -> [n]`` (the classifier's parameters bound)."""
  task, data = task_lib.build(cfg.replace(reward=name, attack="none", learned_reward=False))
  fn = jax.jit(task.reward)
  return lambda x: np.asarray(fn(data.reward, x))


def classes_of(cfg: scl.Config):
  """The classifier's predicted class of images ``[n, H, W, C] -> [n]`` for ``cfg``'s data set."""
  task, data = task_lib.build(cfg)
  fn = _predict(task.classifier.apply)
  return lambda x: np.asarray(fn(data.images["classifier"], x))


@functools.lru_cache(maxsize=None)
def _predict(apply):  # the classifier's weights an argument of the jitted program, not a constant baked into it
  return jax.jit(lambda params, x: apply(params, x)[0].argmax(-1))


def lanes(cfgs: dict[str, scl.Config], n: int) -> list[list[str]]:
  """Split the variants into at most ``n`` lanes run side by side, one per XLA device.

  Variants that share a compiled program (the same static config: they differ only in traced values such
  as ``λ``) stay in one lane, so each program is compiled once, for one device; groups are dealt to the
  least loaded lane, the gradient attack counting double.
  """
  groups: dict = {}
  for name, cfg in cfgs.items():
    groups.setdefault(cfg.static(), []).append(name)
  cost = lambda names: sum(2 if cfgs[v].platform.attack == "gradient" else 1 for v in names)
  out: list[list[str]] = [[] for _ in range(max(1, min(n, len(groups))))]
  for names in sorted(groups.values(), key=cost, reverse=True):
    min(out, key=cost).extend(names)
  return out


def train_and_evaluate(config, workdir: str) -> dict[str, scl.Result]:
  """Run every variant of ``config`` (resuming from checkpoints) and write tables and figures.

  With several local CPU devices (the binary makes one per core) and ``config.parallel``, the variants run in
  :func:`lanes`, one thread per device; each variant's result is the same as run alone.

  Raises (before any loop runs) ``ValueError`` for a bad setting and ``FileNotFoundError`` / ``ImportError``
  when the image data set is not prepared / tensorflow-datasets is missing.
  """
  cfgs = build_configs(config)
  for cfg in cfgs.values():                   # loads the data set and its classifier: fails fast if missing
    task_lib.build(cfg)
    loop.jitted_pieces(cfg.static())          # one set of jitted functions per program, shared by the lanes
  devices = jax.local_devices()
  n = len(devices) if config.get("parallel", True) and devices[0].platform == "cpu" else 1
  plan = lanes(cfgs, n)
  order = {name: i for i, name in enumerate(cfgs)}
  results, seconds = {}, {}

  def run_lane(device, names):
    for name in names:
      cfg = cfgs[name]
      logging.info("running %s on %s: reward=%s attack=%s %s", name, device, cfg.reward.name,
                   cfg.platform.attack, cfg.hyper)
      print(f"[{order[name] + 1}/{len(cfgs)}] {name}: reward={cfg.reward.name} attack={cfg.platform.attack} "
            f"κ={cfg.hyper.kappa:g} λ={cfg.hyper.lam:g} (device {device.id})", flush=True)
      start = time.perf_counter()
      with jax.default_device(device):
        results[name] = scl.run(cfg, seed=config.seed, workdir=os.path.join(workdir, slug(name)),
                                checkpoint_every=config.checkpoint_every)
      seconds[name] = time.perf_counter() - start
      print(f"    {name}: done in {seconds[name]:.0f} s, expected reward "
            f"{results[name].metrics['expected_reward'][0]:.3f} -> "
            f"{results[name].metrics['expected_reward'][-1]:.3f}", flush=True)

  start = time.perf_counter()
  if len(plan) == 1:
    run_lane(devices[0], plan[0])
  else:
    with concurrent.futures.ThreadPoolExecutor(len(plan)) as pool:
      for future in [pool.submit(run_lane, devices[i], names) for i, names in enumerate(plan)]:
        future.result()
  wall = time.perf_counter() - start
  results = {name: results[name] for name in cfgs}
  write_outputs(results, seconds, config, workdir, wall=wall)
  return results


def scored_rewards(results: dict[str, scl.Result]) -> dict[str, dict[str, np.ndarray]]:
  """variant -> reward name -> ``[T+1]`` mean of that reward over the variant's saved samples, each reward
  with the variant's own data set, classifier, ``gamma`` and ``target_class``."""
  fns: dict = {}
  out = {}
  for variant, res in results.items():
    cfg = res.config
    key = (cfg.data, cfg.reward.gamma, cfg.reward.target_class)  # variants that share these share the rewards
    if key not in fns:
      fns[key] = {name: reward_of(cfg, name) for name in REWARDS}
    n = min(cfg.data.n_eval, res.samples.shape[1])
    out[variant] = {name: np.array([fn(res.samples[t, :n]).mean() for t in range(res.samples.shape[0])])
                    for name, fn in fns[key].items()}
  return out


def summary_frame(results, seconds, scored) -> pd.DataFrame:
  rows = []
  for name, res in results.items():
    m = res.metrics
    row = dict(variant=name, reward=res.config.reward.name, attack=res.config.platform.attack,
               kappa=res.config.hyper.kappa, lam=res.config.hyper.lam,
               target_class=res.config.reward.target_class,
               target_share_first=float(m["class_props"][0, res.config.reward.target_class]),
               target_share_last=float(m["class_props"][-1, res.config.reward.target_class]),
               expected_reward_first=float(m["expected_reward"][0]),
               expected_reward_last=float(m["expected_reward"][-1]))
    for reward, values in scored[name].items():
      row[f"{reward}_first"], row[f"{reward}_last"] = float(values[0]), float(values[-1])
    for metric in ("frechet_distance", "precision", "recall"):
      row[f"{metric}_first"], row[f"{metric}_last"] = float(m[metric][0]), float(m[metric][-1])
    if "corr_r_learned" in m:
      row["corr_r_learned_mean"] = float(np.nanmean(m["corr_r_learned"]))
    row["seconds"] = seconds.get(name, float("nan"))
    rows.append(row)
  return pd.DataFrame(rows)


def write_outputs(results: dict[str, scl.Result], seconds: dict[str, float], config, workdir: str,
                  wall: float | None = None) -> None:
  os.makedirs(workdir, exist_ok=True)
  frames = []
  for name, res in results.items():
    frame = res.table()
    frame.insert(0, "variant", name)
    frames.append(frame)
  files.write_csv(os.path.join(workdir, "metrics.csv"), pd.concat(frames, ignore_index=True))
  files.write_json(os.path.join(workdir, "metrics.json"),
                   {name: {"config": res.config.describe(), "seed": res.seed, "metrics": res.metrics}
                    for name, res in results.items()})
  scored = scored_rewards(results)
  summary = summary_frame(results, seconds, scored)
  files.write_csv(os.path.join(workdir, "summary.csv"), summary)
  files.write_json(os.path.join(workdir, "summary.json"),
                   {"variants": summary.to_dict(orient="records"), "scored_rewards": scored,
                    "seconds_per_variant_total": float(sum(seconds.values())), "wall_seconds": wall,
                    "devices": [str(d) for d in jax.local_devices()], "config": scl.configs.set_keywords(config)})

  by_reward: dict[str, dict[str, scl.Result]] = {}
  for name, res in results.items():
    by_reward.setdefault(f"reward = {reward_label(res.config)}", {})[name] = res
  # Runs with real data mixed in are dashed.
  styles = {name: "-" if np.isinf(res.config.hyper.lam) else "--" for name, res in results.items()}
  files.save_figure(os.path.join(workdir, "reward.png"),
                    plotting.curve_panels(by_reward, "expected_reward", "E_{p_t}[r] (true reward)",
                                          "expected true reward of the model", sharey=False, linestyles=styles))
  def panel_title(reward):  # the label with its gamma and target class where every variant shares them
    labels = {reward_label(res.config, reward) for res in results.values()}
    return labels.pop() if len(labels) == 1 else reward
  files.save_figure(os.path.join(workdir, "rewards_both.png"),
                    plotting.array_panels({panel_title(r): {v: scored[v][r] for v in results} for r in REWARDS},
                                          "mean reward of the saved samples",
                                          "both rewards, measured on every variant's samples", linestyles=styles))
  targets = {res.config.reward.target_class for res in results.values()}
  files.save_figure(os.path.join(workdir, "classes.png"),
                    plotting.class_proportions(results, highlight=targets.pop() if len(targets) == 1 else None))
  quality = {"frechet_distance": "Fréchet distance (classifier features)", "precision": "precision (k = 3)",
             "recall": "recall (k = 3)"}
  files.save_figure(os.path.join(workdir, "quality.png"),
                    plotting.metric_panels(results, quality, linestyles=styles, logy=("frechet_distance",)))
  for name, res in results.items():
    predict = classes_of(res.config)
    T = res.samples.shape[0] - 1
    rows = int(config.grid_rows)
    steps = sorted({round(T * k / max(rows - 1, 1)) for k in range(rows)})
    keep = res.samples[:, :int(config.save_samples)]
    labels = np.stack([np.asarray(predict(keep[t])) for t in range(T + 1)])
    files.save_figure(os.path.join(workdir, f"samples_{slug(name)}.png"),
                      plotting.image_grid(keep, steps, n_per_row=16, labels=labels,
                                          title=f"{name}: samples (label: classifier's class)"))
    with files.atomic_open(os.path.join(workdir, f"samples_{slug(name)}.npz"), "wb") as f:
      np.savez_compressed(f, samples=keep.astype(np.float32), classes=labels)

  cols = ["variant", "target_share_first", "target_share_last", "expected_reward_first", "expected_reward_last",
          "class_prob_last", "class_index_last", "frechet_distance_last", "precision_last", "recall_last",
          "seconds"]
  print(summary[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
  wall_text = "" if wall is None else f"{wall:.0f} s wall for all variants, "
  print(f"{wall_text}{sum(seconds.values()):.0f} s summed over variants; wrote metrics, summary and plots to "
        f"{os.path.abspath(workdir)}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (FileNotFoundError, ImportError) as e:   # an image data set that is not prepared: say what to do
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
