"""Speed of the image loop: seconds per loop iteration on digits and at CIFAR-10's shape (U-Net); prints JSON.

(a) ``digits``: the loop of ``experiments/configs/images.py:digits`` (the residual-MLP flow on the 8×8 digits,
4,000 samples drawn and 2,000 kept per iteration), benign curation by ``5 P(class 0)`` and the gradient attack
on the learned ``10 − class`` reward.

(b) ``cifar10_shape``: the same loop at 32×32×3 with the U-Net flow (``velocity="unet"``). When CIFAR-10 is
not prepared (see BUILD.md) a synthetic stand-in of the same shape is registered as the data set
``"cifar_shape_standin"``: uniform random images and an *untrained* CNN classifier — the cost is the same,
the numbers it produces mean nothing (the JSON says which data were used). Small sizes by default, for a CPU
(a few steps; the per-iteration seconds scale with ``train_steps``, ``pool_size · sample_steps``); ``--gpu``
takes the papers' scale (50,000 drawn, 25,000 kept, 2,000 refit steps, 100 NFE; U-Net width 64, 2 blocks).

For each: seconds per loop iteration (one jitted step, after its compilation, median of ``--repeats``; wall
and CPU), compile seconds, the velocity network's parameter count, samples per second of the model's
sampler at the pool size, and achieved FLOP/s of the refit and of the sampler. FLOPs come from XLA's
``compiled.cost_analysis()``, which counts the body of a ``lax.scan`` once, not times its trip count, so they
are taken from the same programs compiled with one training step (one midpoint step = 2 NFE) times the
number of steps. ``iteration_model_gflop_per_second`` divides the model's FLOPs (refit + pool sampling) by the
whole iteration's time (classifier, metrics, curation and the platform's reward fit included): a lower bound.

    python benchmarks/images.py [--quick] [--gpu] [--repeats 3] [--skip_digits] [--skip_cifar]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import _machine  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import scl  # noqa: E402
from scl import classifier as classifier_lib  # noqa: E402
from scl import image_data  # noqa: E402
from scl import loop  # noqa: E402
from scl import task as task_lib  # noqa: E402
from scl.models import unet as unet_lib  # noqa: E402
from scl.models.flow import make_flow  # noqa: E402

STANDIN = "cifar_shape_standin"
_BINARY_FIELDS = ("seed", "checkpoint_every", "variants", "save_samples", "grid_rows", "parallel")


def _preset(name: str) -> dict:
  """The scl.configs keywords of ``experiments/configs/images.py:<name>`` (binary fields dropped)."""
  spec = importlib.util.spec_from_file_location("images_config", os.path.join(ROOT, "experiments", "configs",
                                                                               "images.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return {k: v for k, v in module.get_config(name).to_dict().items() if k not in _BINARY_FIELDS}


def _flops(compiled) -> float:
  ca = compiled.cost_analysis()
  if isinstance(ca, (list, tuple)):  # older jax returned one dict per device
    ca = ca[0]
  return float(ca.get("flops", float("nan")))


def _compile(jitted, *args):
  t0 = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - t0


def register_standin(n: int, seed: int = 0) -> None:
  """Register ``"cifar_shape_standin"``: ``n`` uniform random 32×32×3 images and an untrained CNN classifier."""

  def standin(cfg):
    del cfg
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, (n, 32, 32, 3)).astype(np.float32)
    clf = classifier_lib.make_classifier("cnn", (32, 32, 3), 10)
    params = classifier_lib.init_params(clf, jax.random.PRNGKey(seed))
    return scl.task.Dataset(real=(x, np.full((n,), 1.0 / n, np.float32)), classifier=(clf, params))

  scl.register("dataset", STANDIN, standin, replace=True, images=True, num_classes=10)


def measure(cfg: scl.Config, repeats: int) -> dict:
  """Seconds per loop iteration of ``cfg`` and its model's sizes, throughput and FLOP/s."""
  task, data = task_lib.build(cfg)
  init, chunk, _, data = loop.jitted_pieces(cfg.static())
  hyper, key = cfg.hyper.arrays(), jax.random.PRNGKey(0)
  m = cfg.model
  init_c, init_compile = _compile(init, hyper, key, data)
  t0 = time.perf_counter()
  params = jax.block_until_ready(init_c(hyper, key, data))
  init_seconds = time.perf_counter() - t0
  ts = jnp.arange(1)
  step_c, step_compile = _compile(chunk, params, hyper, key, data, ts)
  step_t = _machine.time_calls(lambda: step_c(params, hyper, key, data, ts), repeats, sync=jax.block_until_ready)

  # The model alone: a refit on a training set of the loop's size, and sampling the pool.
  event = tuple(data.real_x.shape[1:])
  kw = dict(width=m.width, depth=m.depth, batch_size=m.batch_size, velocity=m.velocity)
  x = jnp.concatenate([data.real_x, task.model.sample(params, key, cfg.curation.pool_size)], 0)
  w = jnp.full((x.shape[0],), 1.0 / x.shape[0])
  fit_c, _ = _compile(jax.jit(task.model.fit), params, key, x, w, hyper)
  fit_t = _machine.time_calls(lambda: fit_c(params, key, x, w, hyper), repeats, sync=jax.block_until_ready)
  n = cfg.curation.pool_size
  sample_c, _ = _compile(jax.jit(task.model.sample, static_argnums=2), params, key, n)
  sample_t = _machine.time_calls(lambda: sample_c(params, key), repeats, sync=jax.block_until_ready)
  one_step = make_flow(event, train_steps=1, init_steps=1, **kw)
  one_midpoint = make_flow(event, init_steps=1, sample_steps=2, sample_chunk=n, **kw)
  fit_flops = _flops(jax.jit(one_step.fit).lower(params, key, x, w, hyper).compile()) * m.train_steps
  midpoint_flops = _flops(jax.jit(one_midpoint.sample, static_argnums=2).lower(params, key, n).compile())
  sample_flops = midpoint_flops * (m.sample_steps // 2)
  fit_s, sample_s, step_s = fit_t["seconds_median"], sample_t["seconds_median"], step_t["seconds_median"]
  return dict(
      reward=cfg.reward.name, attack=cfg.platform.attack, velocity=m.velocity, event_shape=list(event),
      sizes=dict(width=m.width, depth=m.depth, train_steps=m.train_steps, init_steps=m.init_steps,
                 batch_size=m.batch_size, sample_steps=m.sample_steps, pool_size=n, n_keep=cfg.curation.n_keep,
                 n_eval=cfg.data.n_eval, n_pairs=cfg.platform.n_pairs, n_real=int(data.real_x.shape[0])),
      parameters=unet_lib.parameter_count(params["net"]),
      init=dict(compile_seconds=init_compile, seconds=init_seconds),
      iteration=dict(compile_seconds=step_compile, **step_t),
      seconds_per_iteration=step_s, cpu_seconds_per_iteration=step_t["cpu_seconds_median"],
      fit=dict(**fit_t, gflop=fit_flops / 1e9, gflops_per_second=fit_flops / fit_s / 1e9,
               ms_per_step=1e3 * fit_s / m.train_steps),
      sample=dict(**sample_t, gflop=sample_flops / 1e9, gflops_per_second=sample_flops / sample_s / 1e9,
                  samples_per_second=n / sample_s),
      iteration_model_gflop_per_second=(fit_flops + sample_flops) / step_s / 1e9,
  )


def digits(args) -> dict:
  over = _preset("quick" if args.quick else "digits")
  over.pop("dataset")
  out = {}
  for name, variant in (("benign_prob", dict(reward="class_prob")),
                        ("gradient", dict(reward="class_index", attack="gradient", kappa=0.2))):
    out[name] = measure(scl.configs.digits(**{**over, **variant}), args.repeats)
  return out


def cifar_shape(args) -> dict:
  try:
    image_data.load("cifar10", data_dir=args.data_dir)
    dataset, note = "cifar10", "CIFAR-10 (prepared)"
  except (FileNotFoundError, ImportError, ValueError) as e:
    n = 50_000 if args.gpu else (1000 if args.quick else 5000)
    register_standin(n)
    dataset = STANDIN
    note = (f"synthetic stand-in of CIFAR-10's shape ({n} uniform random 32x32x3 images, untrained CNN "
            f"classifier): CIFAR-10 is not prepared here ({type(e).__name__}: {str(e).splitlines()[0][:400]})")
  if args.gpu:
    sizes = dict(width=64, depth=2, pool_size=50_000, n_keep=25_000, n_eval=5000, batch_size=128,
                 train_steps=2000, init_steps=200, sample_steps=100, n_pairs=50_000)
  elif args.quick:
    sizes = dict(width=16, depth=1, pool_size=64, n_keep=32, n_eval=64, batch_size=16, train_steps=4,
                 init_steps=4, sample_steps=2, n_pairs=64, K_max=4)
  else:
    sizes = dict(width=32, depth=1, pool_size=256, n_keep=128, n_eval=256, batch_size=32, train_steps=10,
                 init_steps=10, sample_steps=4, n_pairs=256, K_max=4)
  cfg = scl.configs.cifar10(dataset=dataset, data_dir=args.data_dir, velocity="unet", lr=2e-4, iterations=1,
                            **sizes)
  return dict(data=note, dataset=dataset, **measure(cfg, args.repeats))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="smoke run: the :quick preset, tiny CIFAR-shape sizes")
  parser.add_argument("--gpu", action="store_true", help="CIFAR-shape at the papers' scale (for a GPU)")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--data_dir", default=None, help="tensorflow-datasets data_dir for CIFAR-10")
  parser.add_argument("--skip_digits", action="store_true")
  parser.add_argument("--skip_cifar", action="store_true")
  args = parser.parse_args()
  if args.quick:
    args.repeats = 1
  result = dict(machine=_machine.machine(), load_average_at_start=_machine.load_average(),
                backend=jax.default_backend(), devices=[str(d) for d in jax.devices()], jax_version=jax.__version__,
                quick=args.quick, gpu_sizes=args.gpu)
  if not args.skip_digits:
    result["digits"] = digits(args)
  if not args.skip_cifar:
    result["cifar10_shape"] = cifar_shape(args)
  result["load_average_at_end"] = _machine.load_average()
  result["peak_rss_mb"] = _machine.peak_rss_mb()
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
